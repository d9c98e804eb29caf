//! `pull --install-relay`: a client without borg-pull-relay gets this server's copy in its cache
//! (`$XDG_CACHE_HOME/borg-pull/relay-VERSION-SHA256`, 0700, checksum verified, renamed into
//! place), once; later pulls find it and send nothing. Real sshd and borg.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, relay_bin, server_bin, TestCommand};

#[test]
fn the_relay_is_installed_once_verified_and_used() {
    let sshd = Sshd::start();
    let d = sshd.dir.path().to_owned();
    let (repo, base) = (d.join("repo"), d.join("server-base"));
    let out = TestCommand::new("borg")
        .args(["init", "-e", "none"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .output();
    assert_ok(&out, "borg init");
    let data = d.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("file"), b"pulled with an installed relay\n").unwrap();
    let client_base = d.join("client-base");
    fs::create_dir(&client_base).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&client_base);
    // The copy to install must be readable by us only; the client never sees this path.
    let relay_to_install = d.join("relay-to-install");
    fs::copy(relay_bin(), &relay_to_install).unwrap();
    let pull = |archive: &str| {
        TestCommand::new(server_bin())
            .arg("pull")
            .arg("-p")
            .arg(sshd.port.to_string())
            .arg("-i")
            .arg(sshd.client_key())
            .arg("--known-hosts")
            .arg(&sshd.known_hosts)
            // Not on the client: only the installed relay can make this work.
            .args(["--relay", "/nonexistent/borg-pull-relay"])
            .arg(format!("--install-relay={}", relay_to_install.display()))
            .arg("--repo")
            .arg(&repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", client_base.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .arg(sshd.destination())
            .arg("--")
            .arg("create")
            .arg(format!("::{archive}"))
            .arg(&data)
            .env("BORG_BASE_DIR", &base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .attach_log("sshd log", sshd.log_path())
            .output()
    };
    let first = pull("first");
    first.assert_code(0);
    assert!(
        first.stderr_text().contains("installing the relay on the client"),
        "{}",
        first.describe()
    );
    let cache = d.join("cache/borg-pull");
    let entries = installed_relays(&cache);
    assert_eq!(entries.len(), 1, "only the relay, no temp file: {entries:?}");
    let installed = &entries[0];
    let name = installed.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("relay-{}-", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );
    assert_eq!(
        fs::read(installed).unwrap(),
        fs::read(relay_bin()).unwrap(),
        "not byte for byte"
    );
    assert_eq!(
        fs::metadata(installed).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(fs::metadata(&cache).unwrap().permissions().mode() & 0o7777, 0o700);

    // Already there and current: nothing is sent.
    let second = pull("second");
    second.assert_code(0);
    assert!(
        !second.stderr_text().contains("installing the relay"),
        "{}",
        second.describe()
    );

    // Another build (another checksum) is installed beside it, not mixed up with it.
    let mut other = fs::read(relay_bin()).unwrap();
    other.extend_from_slice(b"\0another build");
    fs::write(&relay_to_install, other).unwrap();
    let third = pull("third");
    third.assert_code(0);
    assert!(
        third.stderr_text().contains("installing the relay on the client"),
        "{}",
        third.describe()
    );
    assert_eq!(installed_relays(&cache).len(), 2);

    // A client that cannot store the copy (a cache it cannot write) stops reading half-way: the
    // pull fails with the client's reason at once, not when the install's 600 s deadline ends.
    fs::remove_dir_all(d.join("cache")).unwrap();
    fs::create_dir(d.join("cache")).unwrap();
    fs::set_permissions(d.join("cache"), fs::Permissions::from_mode(0o755)).unwrap();
    let started = std::time::Instant::now();
    let refused = pull("refused");
    refused.assert_code(214);
    let text = refused.stderr_text();
    assert!(
        text.contains("installing the relay")
            && text.contains("Permission denied")
            && !text.contains("Some("),
        "names the step and the client's reason: {}",
        refused.describe()
    );
    // A bound, not a speed: the step's own deadline is 600 s (RELAY_INSTALL_TIMEOUT).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(300),
        "the failed install held the pull for {:?}",
        started.elapsed()
    );

    let list = TestCommand::new("borg")
        .args(["list", "--short"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .output();
    assert_ok(&list, "borg list");
    assert_eq!(list.stdout_text(), "first\nsecond\nthird\n");
}

/// A bare `--install-relay` copies the relay next to `borg-pull-server` wherever it stands: right
/// before the host, and before another option (neither is taken as its FILE).
#[test]
fn a_bare_install_relay_sends_the_relay_next_to_the_program() {
    // What "next to this program" means for the binary under test: cargo built both there.
    let beside = server_bin().with_file_name("borg-pull-relay");
    assert_eq!(beside, relay_bin());
    let sshd = Sshd::start();
    let d = sshd.dir.path().to_owned();
    let (repo, base) = (d.join("repo"), d.join("server-base"));
    let out = TestCommand::new("borg")
        .args(["init", "-e", "none"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .output();
    assert_ok(&out, "borg init");
    let data = d.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("file"), b"pulled with the relay next to the server\n").unwrap();
    let client_base = d.join("client-base");
    fs::create_dir(&client_base).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&client_base);
    let cache = d.join("cache/borg-pull");
    // `options` are given right after `pull`, `last` right before the host.
    let pull = |archive: &str, options: &[&str], last: &[&str]| {
        TestCommand::new(server_bin())
            .arg("pull")
            .args(options)
            .arg("-p")
            .arg(sshd.port.to_string())
            .arg("-i")
            .arg(sshd.client_key())
            .arg("--known-hosts")
            .arg(&sshd.known_hosts)
            // Not on the client: only the installed relay can make this work.
            .args(["--relay", "/nonexistent/borg-pull-relay"])
            .arg("--repo")
            .arg(&repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", client_base.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .args(last)
            .arg(sshd.destination())
            .arg("--")
            .arg("create")
            .arg(format!("::{archive}"))
            .arg(&data)
            .env("BORG_BASE_DIR", &base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .attach_log("sshd log", sshd.log_path())
            .output()
    };
    let cases: [(&str, &[&str], &[&str]); 2] = [
        ("before-the-host", &[], &["--install-relay"]),
        ("before-an-option", &["--install-relay"], &[]),
    ];
    for (archive, options, last) in cases {
        // A fresh cache each time: each form must send the relay itself.
        if cache.exists() {
            fs::remove_dir_all(&cache).unwrap();
        }
        let out = pull(archive, options, last);
        out.assert_code(0);
        assert!(
            out.stderr_text().contains("installing the relay on the client"),
            "{archive}: {}",
            out.describe()
        );
        let entries = installed_relays(&cache);
        assert_eq!(entries.len(), 1, "{archive}: {entries:?}");
        assert!(
            fs::read(&entries[0]).unwrap() == fs::read(&beside).unwrap(),
            "{archive}: the installed relay is not the one next to the server"
        );
    }
    let list = TestCommand::new("borg")
        .args(["list", "--short"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .output();
    assert_ok(&list, "borg list");
    assert_eq!(list.stdout_text(), "before-the-host\nbefore-an-option\n");
}

/// Forms that name no file unambiguously are usage errors (exit 200) before anything connects:
/// `--install-relay=` (an empty FILE: a script's unset variable), and `--install-relay FILE HOST`
/// (FILE, without `=`, is the host; HOST is then one argument too many).
mod an_install_relay_without_a_clear_file_is_a_usage_error {
    use super::*;

    #[test]
    fn empty() {
        case(
            &["--install-relay=", "backup@127.0.0.1"],
            &["--install-relay alone", "--install-relay=FILE"],
        );
    }

    #[test]
    fn empty_beside_relay() {
        case(
            &["--install-relay=", "--relay", "r", "backup@127.0.0.1"],
            &["--install-relay alone", "--install-relay=FILE"],
        );
    }

    /// A separate word after `--install-relay` is not its file: the destination is then extra.
    #[test]
    fn a_separate_word() {
        case(
            &["--install-relay", "./my-relay", "backup@127.0.0.1"],
            &["unexpected argument 'backup@127.0.0.1'"],
        );
    }

    /// `pull ARGS` exits 200 saying `said`. Port 9 on loopback: nothing listens; a parse that
    /// let these through would fail with 213.
    fn case(args: &[&str], said: &[&str]) {
        let out = TestCommand::new(server_bin())
            .args(["pull", "-p", "9", "--repo", "/srv/borg/none"])
            .args(args)
            .args(["--", "create", "::a", "/etc"])
            .output();
        out.assert_code(200);
        for needle in said {
            assert!(
                out.stderr_text().contains(needle),
                "{args:?}: no {needle:?}:\n{}",
                out.describe()
            );
        }
    }
}

/// The files in the client's cache other than the remembered `borg --version` answers
/// (`borg-version-CKSUM`, which the start script keeps beside the relay): the relays and any
/// temporary file an install left behind.
fn installed_relays(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            // A finished answer's name is all digits after the prefix; a temporary one has a `.`.
            !name
                .strip_prefix("borg-version-")
                .is_some_and(|sum| !sum.is_empty() && sum.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}
