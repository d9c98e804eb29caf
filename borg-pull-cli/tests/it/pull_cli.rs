//! End-to-end tests of `borg-pull-server pull` against a real OpenSSH sshd (started per test on
//! 127.0.0.1) and real borg on both ends, with our `borg-pull-relay` as the client's BORG_RSH.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, PullFixture, Spawned, TestCommand};

const PASSPHRASE: &str = "correct horse 'battery' $(staple)";

/// The shared pull fixture, its repository created (encrypted or not).
struct Fixture {
    pull: PullFixture,
    encrypted: bool,
}

impl std::ops::Deref for Fixture {
    type Target = PullFixture;

    fn deref(&self) -> &PullFixture {
        &self.pull
    }
}

impl Fixture {
    fn new(sshd: Sshd, encrypted: bool) -> Fixture {
        let f = Fixture {
            pull: PullFixture::new(sshd),
            encrypted,
        };
        let out = f.local_borg(&["init", "-e", if encrypted { "repokey" } else { "none" }]);
        assert_ok(&out, "borg init");
        f
    }

    /// `borg-pull-server pull` with this fixture's options, then `--` and `borg_args`.
    fn pull<S: AsRef<OsStr>>(&self, borg_args: &[S]) -> TestCommand {
        self.pull_with::<&str, S>(&[], borg_args)
    }

    /// [`PullFixture::pull_with`] with the repository's passphrase when it is encrypted.
    fn pull_with<O: AsRef<OsStr>, S: AsRef<OsStr>>(&self, options: &[O], borg_args: &[S]) -> TestCommand {
        let mut cmd = self.pull.pull_with(options, borg_args);
        if self.encrypted {
            cmd.env("BORG_PASSPHRASE", PASSPHRASE);
        }
        cmd
    }

    /// borg run locally on the server against the repository.
    fn local_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        self.local_borg_in(args, self.dir())
    }

    fn local_borg_in<S: AsRef<OsStr>>(&self, args: &[S], cwd: &Path) -> Outcome {
        self.local_borg_command(args).current_dir(cwd).output()
    }

    /// The server's borg with the repository and passphrase set, not yet run.
    fn local_borg_command<S: AsRef<OsStr>>(&self, args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new("borg");
        cmd.args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSCOMMAND");
        cmd
    }

    /// Panics with both logs unless nothing of this test is left running and no socket
    /// directory is left on the client.
    fn assert_clean(&self) {
        borg_pull_testkit::assert_no_process_mentions(self.dir());
        // The client's watcher removes the directory within a second of borg's exit (it polls):
        // waited for, bounded, not asserted at once (that raced under load).
        self.assert_private_dirs_removed();
    }
}

impl Drop for Fixture {
    /// On a failing test, show the end of sshd's log next to the assertion.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.sshd.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- sshd log (last 40 lines)");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` with its deadline (a hung pull fails the test instead of hanging it).
fn run(cmd: &mut TestCommand) -> Outcome {
    cmd.output()
}

fn describe(out: &Outcome) -> String {
    out.describe()
}

/// A small data set whose names break every naive quoting.
fn hostile_dataset(root: &Path) {
    let names: &[&[u8]] = &[
        b"plain.txt",
        b"with space",
        b"it's",
        b"double\"quote",
        b"$(touch pwned)",
        b"`id`",
        b"semi;colon&amp|pipe",
        b"new\nline",
        b"back\\slash",
        b"star*glob?[x]",
        b"-dash-first",
        b"\xff\xfe not utf-8",
        b"\xc3\xbcml\xc3\xa4ut",
    ];
    fs::create_dir_all(root.join("sub dir/$HOME")).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for (i, name) in names.iter().enumerate() {
        let mut content = Vec::new();
        for _ in 0..(i * 997 + 13) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            content.push(seed as u8);
        }
        fs::write(root.join(OsStr::from_bytes(name)), &content).unwrap();
        fs::write(root.join("sub dir/$HOME").join(OsStr::from_bytes(name)), name).unwrap();
    }
    // One larger incompressible file: several SSH windows' worth of packets, many chunks.
    let mut big = vec![0u8; 3 << 20];
    for b in big.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    fs::write(root.join("big file"), big).unwrap();
}

/// Relative path -> contents (directories map to a marker), for byte-for-byte comparison.
fn tree(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let key = rel.as_os_str().as_bytes().to_vec();
            if entry.file_type().unwrap().is_dir() {
                map.insert(key, b"<dir>".to_vec());
                stack.push(rel);
            } else {
                map.insert(key, fs::read(entry.path()).unwrap());
            }
        }
    }
    map
}

fn archive_names(f: &Fixture) -> Vec<Vec<u8>> {
    let out = f.local_borg(&["list", "--format", "{archive}{NUL}"]);
    assert!(out.status.success(), "borg list: {}", text(&out.stderr));
    out.stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn hostile_names_round_trip_byte_for_byte_with_passphrase() {
    let f = Fixture::new(Sshd::start(), true);
    let data = f.dir().join("data 'dir' $(x)");
    hostile_dataset(&data);
    let archive = "it's `a` $(archive); name & more";
    let out = run(&mut f.pull(&[
        OsString::from("create"),
        "--stats".into(),
        format!("::{archive}").into(),
        data.clone().into(),
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("Number of files:"),
        "--stats output missing: {}",
        describe(&out)
    );
    assert!(
        all.contains(archive),
        "archive name not in the stats: {}",
        describe(&out)
    );
    assert_eq!(archive_names(&f), vec![archive.as_bytes().to_vec()]);
    f.assert_clean();

    // Extract on the server, compare byte for byte.
    let restore = f.dir().join("restore");
    fs::create_dir(&restore).unwrap();
    let out = f.local_borg_in(&["extract".to_owned(), format!("::{archive}")], &restore);
    assert!(out.status.success(), "borg extract: {}", text(&out.stderr));
    let rel = data.strip_prefix("/").unwrap();
    assert_eq!(tree(&restore.join(rel)), tree(&data));

    // The passphrase from --passphrase-file, and read-only commands through pull too.
    let pass_file = f.dir().join("pass");
    fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    fs::set_permissions(&pass_file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd2 = f.pull_with(
        &[OsStr::new("--passphrase-file"), pass_file.as_os_str()],
        &["list", "--short"],
    );
    cmd2.env_remove("BORG_PASSPHRASE");
    // A passphrase file others can read is refused before anything runs, naming the fix.
    let out = run(&mut cmd2);
    assert_eq!(out.status.code(), Some(212), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("too open") && text(&out.stderr).contains("chmod 600"),
        "{}",
        describe(&out)
    );
    fs::set_permissions(&pass_file, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&mut cmd2);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), format!("{archive}\n"));

    // Binary output streams through unchanged: extract one file to stdout through pull.
    let big_in_archive = rel.join("big file");
    let out = run(&mut f.pull(&[
        OsString::from("extract"),
        "--stdout".into(),
        format!("::{archive}").into(),
        big_in_archive.into_os_string(),
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == fs::read(data.join("big file")).unwrap(),
        "extracted bytes differ"
    );

    // A restore through pull: borg extract runs on the client, in --remote-dir.
    let client_restore = f.dir().join("client restore $(x) 'q'");
    fs::create_dir(&client_restore).unwrap();
    // The login user is not root; the test's own directory lets it write there.
    fs::set_permissions(&client_restore, fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&mut f.pull_with(
        &[OsStr::new("--remote-dir"), client_restore.as_os_str()],
        &["extract".to_owned(), format!("::{archive}")],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(tree(&client_restore.join(rel)), tree(&data));

    // The passphrase from the server's BORG_PASSCOMMAND (run on the server).
    let mut cmd = f.pull(&["list", "--short"]);
    cmd.env_remove("BORG_PASSPHRASE").env(
        "BORG_PASSCOMMAND",
        format!("cat '{}'", f.dir().join("pass").display()),
    );
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), format!("{archive}\n"));
    f.assert_clean();
}

#[test]
fn borg_exit_codes_pass_through() {
    let f = Fixture::new(Sshd::start(), false);
    let data = f.dir().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();

    let missing = f.dir().join("does not exist");
    let out = run(&mut f.pull(&[
        OsString::from("create"),
        "::warn".into(),
        data.clone().into(),
        missing.into(),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains("does not exist"), "{}", describe(&out));

    let out = run(&mut f.pull(&["create", "--no-such-option", "::err", "/nonexistent"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    let out = run(&mut f.pull(&["list", "::no-such-archive"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    let out = run(&mut f.pull(&["create", "::ok", data.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // A command killed by a signal on the client: 128 + N, as a shell reports it.
    let out = run(&mut f.pull_with(&["--remote-borg", "/bin/sh"], &["-c", "kill -TERM $$"]));
    assert_eq!(out.status.code(), Some(128 + 15), "{}", describe(&out));

    // A relay missing on the client is named before anything is set up there.
    let out = run(&mut f.pull_with(&["--relay", "/nonexistent/borg-pull-relay"], &["list"]));
    assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("\"/nonexistent/borg-pull-relay\" cannot be run on the client")
            && text(&out.stderr).contains("no such file"),
        "{}",
        describe(&out)
    );
    assert!(text(&out.stderr).contains("--relay"), "{}", describe(&out));
    assert_eq!(archive_names(&f), vec![b"warn".to_vec(), b"ok".to_vec()]);
    f.assert_clean();
}

#[test]
fn unknown_and_changed_host_keys_are_refused_before_login() {
    let f = Fixture::new(Sshd::start(), false);
    let port = f.sshd.port;

    // Unknown host: empty known_hosts.
    let empty = f.dir().join("known_hosts.empty");
    fs::write(&empty, "# nothing here\n").unwrap();
    let out = run(&mut with_known_hosts(&f, &empty, &["--version"]));
    assert_eq!(out.status.code(), Some(210), "{}", describe(&out));
    let err = text(&out.stderr);
    for needle in [
        format!("[127.0.0.1]:{port}"),
        "ssh-ed25519".into(),
        "SHA256:".into(),
        "--accept-new-host-key".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing: {err}");
    }
    assert!(err.contains("known_hosts.empty"), "{err}");

    // Changed key: another ed25519 key recorded for [127.0.0.1]:PORT.
    let other = f.dir().join("other_key");
    keygen(&other, "");
    let other_pub = fs::read_to_string(f.dir().join("other_key.pub")).unwrap();
    let changed = f.dir().join("known_hosts.changed");
    fs::write(&changed, format!("# a comment\n[127.0.0.1]:{port}\t{other_pub}")).unwrap();
    let out = run(&mut with_known_hosts(&f, &changed, &["--version"]));
    assert_eq!(out.status.code(), Some(210), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "{err}");
    assert!(
        err.contains("ssh-keygen -f") && err.contains(&format!("-R '[127.0.0.1]:{port}'")),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");

    // Nothing ran: no login happened at all.
    assert!(!f.sshd.log().contains("Accepted publickey"), "{}", f.sshd.log());

    // accept-new: records the key, then it is known.
    let fresh = f.dir().join("new dir/known_hosts");
    let out = run(&mut accepting_new_keys(&f, &fresh));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(text(&out.stdout).starts_with("borg "), "{}", describe(&out));
    let recorded = fs::read_to_string(&fresh).unwrap();
    let host_key_b64 = f.sshd.host_key_pub.split_whitespace().nth(1).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 {host_key_b64}")),
        "{recorded}"
    );
    let out = run(&mut with_known_hosts(&f, &fresh, &["--version"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        fs::read_to_string(&fresh).unwrap(),
        recorded,
        "known key must not be added twice"
    );

    // A changed key is refused even with --accept-new-host-key.
    let out = run(&mut accepting_new_keys(&f, &changed));
    assert_eq!(out.status.code(), Some(210), "{}", describe(&out));
    f.assert_clean();
}

/// `ssh-keygen -t ed25519` into `path` with `passphrase` ("" for none).
fn keygen(path: &Path, passphrase: &str) {
    let out = TestCommand::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
        .arg(path)
        .output();
    assert_ok(&out, "ssh-keygen");
}

/// `f.pull(args)` with a different known_hosts file.
fn with_known_hosts(f: &Fixture, known_hosts: &Path, borg_args: &[&str]) -> TestCommand {
    f.pull_with(&[OsStr::new("--known-hosts"), known_hosts.as_os_str()], borg_args)
}

/// `borg --version` through pull with `--accept-new-host-key` and `known_hosts`.
fn accepting_new_keys(f: &Fixture, known_hosts: &Path) -> TestCommand {
    let options = [
        OsStr::new("--accept-new-host-key"),
        OsStr::new("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    f.pull_with(&options, &["--version"])
}

#[test]
fn forwarding_disabled_names_allow_stream_local_forwarding() {
    let sshd = Sshd::start_with(SshdOptions {
        allow_streamlocal: "no",
        ..Default::default()
    });
    let f = Fixture::new(sshd, false);
    let out = run(&mut f.pull(&["create", "::x", "/etc/hostname"]));
    assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("AllowStreamLocalForwarding"), "{err}");
    assert!(err.contains("borg.sock"), "{err}");
    assert!(archive_names(&f).is_empty());
    f.assert_clean();
}

#[test]
fn forwarded_connections_are_bounded() {
    let f = Fixture::new(Sshd::start(), false);
    // Six relays at once, each holding its connection open for a while.
    let script = r#"for i in 1 2 3 4 5 6; do (sleep 3 | eval "exec $BORG_RSH" >/dev/null 2>&1) & done; wait"#;
    let out = run(&mut f.pull_with(&["--remote-borg", "/bin/sh"], &["-c", script]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let refused = text(&out.stderr)
        .matches("refusing a forwarded-streamlocal channel the client's sshd opened: 4 borg serve sessions are already running")
        .count();
    assert_eq!(refused, 2, "{}", describe(&out));
    f.assert_clean();
}

#[test]
fn restricted_keys_work_with_port_forwarding_and_fail_clearly_without() {
    // The recommended client-side restriction: everything off except forwarding.
    let f = Fixture::new(
        Sshd::start_with(SshdOptions {
            authorized_keys_options: "restrict,port-forwarding ",
            ..Default::default()
        }),
        false,
    );
    let out = run(&mut f.pull(&["create", "::r", "/etc/hostname"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    f.assert_clean();

    let f = Fixture::new(
        Sshd::start_with(SshdOptions {
            authorized_keys_options: "restrict ",
            ..Default::default()
        }),
        false,
    );
    let out = run(&mut f.pull(&["create", "::r", "/etc/hostname"]));
    assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
    assert!(text(&out.stderr).contains("`restrict`"), "{}", describe(&out));
    f.assert_clean();
}

#[test]
fn socket_path_too_long_is_diagnosed() {
    let sshd = Sshd::start_with(SshdOptions {
        long_tmpdir: true,
        ..Default::default()
    });
    let f = Fixture::new(sshd, false);
    let out = run(&mut f.pull(&["list"]));
    assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("longer than 107 bytes"),
        "{}",
        describe(&out)
    );
    f.assert_clean();
}

#[test]
fn rsa_ecdsa_and_encrypted_identities_log_in() {
    let sshd = Sshd::start_with(SshdOptions {
        host_key_type: "ecdsa",
        // russh prefers ed25519: known_hosts (ecdsa only) must steer the host key choice.
        extra_host_key_types: vec!["ed25519"],
        client_key_types: vec!["rsa", "ecdsa"],
        ..Default::default()
    });
    assert!(sshd.host_key_pub.starts_with("ecdsa-sha2-nistp256 "));
    let f = Fixture::new(sshd, false);
    for key in &f.sshd.client_keys {
        let out = run(&mut f.pull_with(&[OsStr::new("-i"), key.as_os_str()], &["--version"]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            key.display(),
            describe(&out)
        );
        assert!(text(&out.stdout).starts_with("borg "), "{}", describe(&out));
    }

    // An encrypted ed25519 key: refused without its passphrase, accepted with the file.
    let enc = f.dir().join("enc_key");
    keygen(&enc, "s3cret pass");
    let mut ak = fs::read_to_string(f.dir().join("authorized_keys")).unwrap();
    ak.push_str(&fs::read_to_string(f.dir().join("enc_key.pub")).unwrap());
    fs::write(f.dir().join("authorized_keys"), ak).unwrap();
    let pass = f.dir().join("enc_pass");
    fs::write(&pass, "s3cret pass\n").unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(f
        .pull_with(&[OsStr::new("-i"), enc.as_os_str()], &["--version"])
        .env_remove("BORG_PULL_IDENTITY_PASSPHRASE"));
    assert_eq!(out.status.code(), Some(211), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("--identity-passphrase-file"),
        "{}",
        describe(&out)
    );
    let with_pass = [
        OsStr::new("-i"),
        enc.as_os_str(),
        OsStr::new("--identity-passphrase-file"),
        pass.as_os_str(),
    ];
    let out = run(f
        .pull_with(&with_pass, &["--version"])
        .env_remove("BORG_PULL_IDENTITY_PASSPHRASE"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // A key the client does not authorise.
    let stranger = f.dir().join("stranger");
    keygen(&stranger, "");
    let out = run(&mut f.pull_with(&[OsStr::new("-i"), stranger.as_os_str()], &["--version"]));
    assert_eq!(out.status.code(), Some(211), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        describe(&out)
    );
    f.assert_clean();
}

#[test]
fn sigkill_mid_backup_then_next_pull_is_clean() {
    let f = Fixture::new(Sshd::start(), true);
    let data = big_dataset(&f);
    let mut child = f
        .pull(&[OsString::from("create"), "::killed".into(), data.clone().into()])
        .spawn(f.dir().join("killed-pull.log"));
    wait_for_borg_serve(&f, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    child.signal("KILL");
    child.wait_exit();

    // borg serve gets EOF from its dead parent and exits; sshd ends the client's session, borg
    // loses its relay and exits, and the run's watcher on the client removes its directory.
    f.assert_clean_processes_only();
    f.assert_private_dirs_removed();

    let out = run(&mut f.pull(&["create", "::after", data.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = f.local_borg(&["check"]);
    assert!(out.status.success(), "borg check: {}", describe(&out));
    assert_eq!(archive_names(&f), vec![b"after".to_vec()]);
    f.assert_clean_processes_only();
    f.assert_private_dirs_removed();
}

/// Enough incompressible data that a backup is still running when we interrupt it.
fn big_dataset(f: &Fixture) -> PathBuf {
    let data = f.dir().join("data");
    fs::create_dir(&data).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..6 {
        let mut v = vec![0u8; 8 << 20];
        for b in v.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        fs::write(data.join(format!("f{i}")), v).unwrap();
    }
    data
}

/// Waits until `borg serve` for this fixture's repository runs (the backup is under way) and
/// checks that the passphrase is in no process's argv meanwhile.
fn wait_for_borg_serve(f: &Fixture, pull: &mut Spawned) {
    let repo = f.repo.as_os_str().as_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let serving = borg_pull_testkit::processes_mentioning(&repo);
        if serving.iter().any(|(_, c)| c.contains("borg serve ")) {
            let leaked = borg_pull_testkit::processes_mentioning(PASSPHRASE.as_bytes());
            assert!(leaked.is_empty(), "passphrase in an argv: {leaked:?}");
            return;
        }
        assert!(
            pull.is_running(),
            "pull ended before the backup started:\n{}",
            pull.report()
        );
        assert!(Instant::now() < deadline, "borg serve never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_stops_borg_on_the_client_and_cleans_up() {
    let f = Fixture::new(Sshd::start(), true);
    let data = big_dataset(&f);
    let mut child = f
        .pull(&[OsString::from("create"), "::interrupted".into(), data.into()])
        .spawn(f.dir().join("interrupted-pull.log"));
    wait_for_borg_serve(&f, &mut child);
    child.signal("INT");
    let status = child.wait_exit();
    assert_eq!(status.code(), Some(202), "{}", child.report());
    assert!(child.log().contains("interrupted"), "{}", child.report());
    f.assert_clean();
    let out = f.local_borg(&["check"]);
    assert!(out.status.success(), "borg check: {}", describe(&out));
}

/// Sends `sig` to `pid`, if it still exists.
fn send_signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Sends SIGCONT to the stopped processes when dropped, whatever the test's outcome.
struct Resume(Vec<u32>);

impl Drop for Resume {
    fn drop(&mut self) {
        for pid in &self.0 {
            send_signal(*pid, rustix::process::Signal::CONT);
        }
    }
}

#[test]
fn dead_client_ends_the_run_within_the_keepalive_bound() {
    let f = Fixture::new(Sshd::start(), false);
    let data = big_dataset(&f);
    let mut cmd = f.pull_with(
        &["--keepalive", "1"],
        &[OsString::from("create"), "::dead".into(), data.into()],
    );
    let mut child = cmd.spawn(f.dir().join("dead-client-pull.log"));
    wait_for_borg_serve(&f, &mut child);

    // Freeze the client: its sshd session (and borg there) stops answering, TCP stays open.
    let session = borg_pull_testkit::descendants(f.sshd.pid());
    assert!(!session.is_empty());
    let resume = Resume(session.clone());
    for pid in &session {
        send_signal(*pid, rustix::process::Signal::STOP);
    }
    let started = Instant::now();
    let status = child.wait_exit();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(215), "{}", child.report());
    assert!(child.log().contains("lost"), "{}", child.report());
    // 1 s interval, 3 unanswered keepalives: a few seconds, far below TCP's own timeouts.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // borg serve on this side was stopped by us, not left to the client.
    let repo = f.repo.as_os_str().as_bytes().to_vec();
    let serving: Vec<_> = borg_pull_testkit::processes_mentioning(&repo)
        .into_iter()
        .filter(|(_, c)| c.contains("borg serve "))
        .collect();
    assert!(serving.is_empty(), "{serving:?}");
    drop(resume);
    f.assert_clean_processes_only();
}

impl Fixture {
    /// Like [`Fixture::assert_clean`], but a dead socket directory may remain (SIGKILL).
    /// The watcher each run starts on the client removes its directory within about a second of
    /// borg's exit, whatever ended borg.
    fn assert_private_dirs_removed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.sshd.tmpdir_entries().is_empty() {
            assert!(
                Instant::now() < deadline,
                "left on the client: {:?}",
                self.sshd.tmpdir_entries()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_clean_processes_only(&self) {
        borg_pull_testkit::assert_no_process_mentions(self.dir());
    }
}

#[test]
fn bad_usage_exits_200_without_connecting() {
    let out =
        run(TestCommand::new(server_bin()).args(["pull", "--repo", "relative/repo", "h", "--", "list"]));
    assert_eq!(out.status.code(), Some(200), "{}", describe(&out));
    let out = run(TestCommand::new(server_bin()).args(["pull", "--repo", "/r", "h"]));
    assert_eq!(out.status.code(), Some(200), "{}", describe(&out));
    let out = run(TestCommand::new(server_bin()).args([
        "pull",
        "--repo",
        "/r",
        "--env",
        "BORG_RSH=x",
        "u@127.0.0.1",
        "--",
        "list",
    ]));
    assert_eq!(out.status.code(), Some(200), "{}", describe(&out));
}

#[test]
fn borg_1_4_modern_exit_codes_pass_through_and_ours_stay_apart() {
    let Some(borg14) = borg_pull_testkit::borg14() else {
        return;
    };
    let f = Fixture::new(Sshd::start(), false);
    let data = f.dir().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    // The server's borg 1.2 holds the repository's lock, as a concurrent backup or `check` would.
    let lock = f
        .local_borg_command(&[
            OsStr::new("with-lock"),
            f.repo.as_os_str(),
            OsStr::new("sleep"),
            OsStr::new("120"),
        ])
        .spawn(f.dir().join("lock.log"));
    borg_pull_testkit::wait_until("borg with-lock to lock the repository", || {
        f.repo.join("lock.exclusive").exists()
    });
    let modern = [
        OsStr::new("--remote-borg"),
        borg14.as_os_str(),
        OsStr::new("--env"),
        OsStr::new("BORG_EXIT_CODES=modern"),
    ];
    let create = |lock_wait: &str| -> Vec<OsString> {
        vec![
            "create".into(),
            "--lock-wait".into(),
            lock_wait.into(),
            "::a".into(),
            data.clone().into(),
        ]
    };

    // borg 1.4's modern code for "lock timeout" is 73, which was our "cannot create" once:
    // it passes through unchanged, and the message says whose it is.
    let out = run(&mut f.pull_with(&modern, &create("1")));
    assert_eq!(out.status.code(), Some(73), "{}", describe(&out));
    let err = out.stderr_text();
    assert!(
        err.contains("Failed to create/acquire the lock"),
        "{}",
        describe(&out)
    );
    assert!(
        err.contains("borg on the client exited with 73 (borg's own code"),
        "{}",
        describe(&out)
    );

    // The same borg waiting for the lock when the client stops answering: our own code, outside
    // borg's range.
    let mut options = modern.to_vec();
    options.extend([OsStr::new("--keepalive"), OsStr::new("1")]);
    let mut pull = f
        .pull_with(&options, &create("600"))
        .spawn(f.dir().join("lost.log"));
    wait_for_borg_serve(&f, &mut pull);
    let session = borg_pull_testkit::descendants(f.sshd.pid());
    let resume = Resume(session.clone());
    for pid in &session {
        send_signal(*pid, rustix::process::Signal::STOP);
    }
    let status = pull.wait_exit();
    assert_eq!(status.code(), Some(215), "{}", pull.report());
    assert!(pull.log().contains("lost"), "{}", pull.report());
    drop(resume);

    // Without the lock, borg 1.4 on the client works with borg 1.2's `borg serve` here.
    drop(lock); // SIGKILL: the lock stays behind until broken.
    assert_ok(&f.local_borg(&["break-lock"]), "borg break-lock");
    let out = run(&mut f.pull_with(&modern, &create("10")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(archive_names(&f), vec![b"a".to_vec()]);
    f.assert_clean_processes_only();
}

#[test]
fn second_sigint_ends_the_pull_at_once() {
    let f = Fixture::new(Sshd::start(), false);
    let started = f.client_base.join("started");
    // A client command that ignores SIGINT, so the first signal's grace period would run out in
    // full (5 s) before clean-up even starts.
    let script = format!("trap '' INT TERM; : > '{}'; sleep 15", started.display());
    let mut pull = f
        .pull_with(&["--remote-borg", "/bin/sh"], &["-c", script.as_str()])
        .spawn(f.dir().join("twice.log"));
    borg_pull_testkit::wait_until("the client command to start", || started.exists());
    pull.signal("INT");
    pull.wait_for_log("SIGINT received");
    let second = Instant::now();
    pull.signal("INT");
    let status = pull.wait_exit();
    let took = second.elapsed();
    assert_eq!(status.code(), Some(202), "{}", pull.report());
    assert!(took < Duration::from_secs(3), "took {took:?}: {}", pull.report());
    assert!(pull.log().contains("interrupted twice"), "{}", pull.report());
}

#[test]
fn max_runtime_stops_borg_cleans_up_and_exits_217() {
    let f = Fixture::new(Sshd::start(), false);
    let started = Instant::now();
    let out = run(&mut f.pull_with(
        &["--remote-borg", "/bin/sh", "--max-runtime", "2s"],
        &["-c", "sleep 60"],
    ));
    assert_eq!(out.status.code(), Some(217), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("maximum run time of 2 s") && text(&out.stderr).contains("--max-runtime"),
        "{}",
        describe(&out)
    );
    // 2 s, then SIGINT and its grace period at most: far from the 60 s the client wanted.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    f.assert_clean_processes_only();
    f.assert_private_dirs_removed();
    let out = run(TestCommand::new(server_bin()).args([
        "pull",
        "--max-runtime",
        "0",
        "--repo",
        "/r",
        "h",
        "--",
        "list",
    ]));
    assert_eq!(out.status.code(), Some(200), "{}", describe(&out));
}

#[test]
fn a_relay_behind_an_unsearchable_directory_is_told_from_a_missing_one() {
    let f = Fixture::new(Sshd::start(), false);
    // Mode 000: not searchable by the login user, whether it is us or the unprivileged test user.
    let closed = f.dir().join("closed");
    fs::create_dir(&closed).unwrap();
    fs::copy(&f.relay, closed.join("borg-pull-relay")).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    let relay = closed.join("borg-pull-relay");
    let out = run(&mut f.pull_with(&[OsStr::new("--relay"), relay.as_os_str()], &["list"]));
    assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
    let expected = format!("directory {} is not searchable by user", closed.display());
    assert!(text(&out.stderr).contains(&expected), "{}", describe(&out));
    assert!(text(&out.stderr).contains("--relay"), "{}", describe(&out));
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    f.assert_clean();
}

#[test]
fn storage_quota_stops_a_pull_that_would_exceed_it() {
    let f = Fixture::new(Sshd::start(), false);
    let small = f.dir().join("small");
    fs::create_dir(&small).unwrap();
    fs::write(small.join("a.txt"), b"fits easily\n").unwrap();
    let quota = ["--storage-quota", "10M"];
    let out = run(&mut f.pull_with(&quota, &["create", "::small", small.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // 48 MiB of incompressible data against a 10 MB quota: borg serve refuses it, borg says so.
    let data = big_dataset(&f);
    let out = run(&mut f.pull_with(&quota, &["create", "::big", data.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("storage quota"), "{}", describe(&out));
    assert_eq!(archive_names(&f), vec![b"small".to_vec()]);
    f.assert_clean_processes_only();

    let out = run(TestCommand::new(server_bin()).args([
        "pull",
        "--storage-quota",
        "9M",
        "--repo",
        "/r",
        "h",
        "--",
        "list",
    ]));
    assert_eq!(out.status.code(), Some(200), "{}", describe(&out));
}

/// A borg 2 repository beside the fixture's borg 1 one, created on the server by `borg2`.
fn borg2_repo(f: &Fixture, borg2: &Path) -> PathBuf {
    let repo = f.dir().join("repo2");
    let out = borg2_local(f, borg2, &repo, &["repo-create", "-e", "aes256-ocb"]);
    assert_ok(&out, "borg 2 repo-create");
    repo
}

/// borg 2 run locally on the server against `repo`.
fn borg2_local(f: &Fixture, borg2: &Path, repo: &Path, args: &[&str]) -> Outcome {
    TestCommand::new(borg2)
        .arg("-r")
        .arg(repo)
        .args(args)
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .env_remove("BORG_PASSCOMMAND")
        .env_remove("BORG_REPO")
        .current_dir(f.dir())
        .output()
}

#[test]
fn borg_2_on_both_ends_init_create_list_extract_and_no_delete() {
    let Some(borg2) = borg_pull_testkit::borg2() else {
        return;
    };
    let f = Fixture::new(Sshd::start(), true);
    // --init creates it on the server with borg 2 and the passphrase pull uses.
    let repo = f.dir().join("repo2");
    let data = f.dir().join("data 'dir' $(x)");
    hostile_dataset(&data);
    let both = [
        OsStr::new("--repo"),
        repo.as_os_str(),
        OsStr::new("--borg"),
        borg2.as_os_str(),
        OsStr::new("--remote-borg"),
        borg2.as_os_str(),
    ];
    let archive = "it's `a` $(archive)";
    let init = [
        OsStr::new("--init"),
        OsStr::new("--encryption"),
        OsStr::new("aes256-ocb"),
    ];
    let out = run(&mut f.pull_with(
        &[&both[..], &init[..]].concat(),
        &[OsStr::new("create"), OsStr::new(archive), data.as_os_str()],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        repo.join("packs").is_dir() && out.stderr_text().contains("repository created"),
        "{}",
        describe(&out)
    );

    let out = run(&mut f.pull_with(&both, &["repo-list", "--format", "{archive}{NL}"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), format!("{archive}\n"));

    let client_restore = f.dir().join("client restore");
    fs::create_dir(&client_restore).unwrap();
    fs::set_permissions(&client_restore, fs::Permissions::from_mode(0o777)).unwrap();
    let mut options = both.to_vec();
    options.extend([OsStr::new("--remote-dir"), client_restore.as_os_str()]);
    let out = run(&mut f.pull_with(&options, &["extract", archive]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        tree(&client_restore.join(data.strip_prefix("/").unwrap())),
        tree(&data)
    );

    // --permissions no-delete: the client cannot delete the archive or the repository.
    for delete in [&["delete", "-a", archive][..], &["repo-delete"][..]] {
        let out = run(&mut f.pull_with(
            &[
                &both[..],
                &[
                    OsStr::new("--env"),
                    OsStr::new("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES"),
                ],
            ]
            .concat(),
            delete,
        ));
        assert_ne!(
            out.status.code(),
            Some(0),
            "{delete:?} allowed: {}",
            describe(&out)
        );
        assert!(
            text(&out.stderr).contains("PermissionDenied"),
            "{}",
            describe(&out)
        );
    }
    let out = borg2_local(&f, &borg2, &repo, &["repo-list", "--format", "{archive}{NL}"]);
    assert_ok(&out, "borg 2 repo-list on the server");
    assert_eq!(text(&out.stdout), format!("{archive}\n"));
    // borg 2's modern exit codes pass through: 4 is "archive not found".
    let out = run(&mut f.pull_with(&both, &["extract", "no such archive"]));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("borg on the client exited with 4 (borg's own code"),
        "{}",
        describe(&out)
    );
    f.assert_clean_processes_only();
}

#[test]
fn borg_major_version_mismatch_is_refused_before_anything_moves() {
    let Some(borg2) = borg_pull_testkit::borg2() else {
        return;
    };
    let f = Fixture::new(Sshd::start(), true);
    let repo2 = borg2_repo(&f, &borg2);
    // Server borg 2, client borg 1.2 (Debian's), and the other way round.
    let server2 = [
        OsStr::new("--repo"),
        repo2.as_os_str(),
        OsStr::new("--borg"),
        borg2.as_os_str(),
    ];
    let client2 = [OsStr::new("--remote-borg"), borg2.as_os_str()];
    // The client's answer is remembered in its cache after the first run: the second round is
    // refused on the remembered versions, just as the first on the asked ones.
    let cache = f.sshd.dir.path().join("cache/borg-pull");
    let remembered = || -> Vec<String> {
        fs::read_dir(&cache).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
                    .filter_map(|entry| entry.lines().nth(1).map(str::to_owned))
                    .collect()
            },
        )
    };
    for round in ["asked", "remembered"] {
        if round == "remembered" {
            let mut versions = remembered();
            versions.sort();
            assert!(
                versions.len() == 2 && versions[0].starts_with("borg 1.") && versions[1] == "borg 2.0.0b25",
                "the client's cache holds {versions:?}"
            );
        }
        for (options, client, server) in [(&server2[..], "1.", "2.0.0b25"), (&client2[..], "2.0.0b25", "1.")]
        {
            let out = run(&mut f.pull_with(options, &["repo-list"]));
            assert_eq!(out.status.code(), Some(214), "{}", describe(&out));
            let err = text(&out.stderr);
            assert!(
                err.contains(&format!("has borg {client}")) && err.contains(&format!("runs borg {server}")),
                "{}",
                describe(&out)
            );
            assert!(
                !err.contains("borg serve"),
                "a borg serve ran ({round}): {}",
                describe(&out)
            );
        }
    }
    f.assert_clean_processes_only();
}

/// The server borg's `--version` runs while the session connects: a server borg that cannot tell
/// its version still fails the pull with 203 naming the program, before anything runs on the
/// client (no private directory is made), and before a connection failure (a closed port) too,
/// as when it was asked before connecting.
mod a_server_borg_that_cannot_tell_its_version_fails_the_pull_with_203 {
    use super::*;

    #[test]
    fn when_it_is_not_borg() {
        case(Borg::NotBorg, Port::Sshd);
    }

    #[test]
    fn when_it_is_missing() {
        case(Borg::Missing, Port::Sshd);
    }

    #[test]
    fn when_it_is_missing_and_the_port_is_closed() {
        case(Borg::Missing, Port::Closed);
    }

    enum Borg {
        /// A program that answers `--version` with something else and exit 1.
        NotBorg,
        /// No such file.
        Missing,
    }

    enum Port {
        /// The fixture's sshd.
        Sshd,
        /// A port nothing listens on.
        Closed,
    }

    fn case(borg: Borg, port: Port) {
        let f = Fixture::new(Sshd::start(), false);
        let dir = tempfile::tempdir().unwrap();
        let borg = match borg {
            Borg::NotBorg => {
                let not_borg = dir.path().join("not-borg");
                fs::write(&not_borg, "#!/bin/sh\necho 'not borg at all'\nexit 1\n").unwrap();
                fs::set_permissions(&not_borg, fs::Permissions::from_mode(0o755)).unwrap();
                not_borg
            }
            Borg::Missing => dir.path().join("missing-borg"),
        };
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port().to_string()
        };
        let mut options = vec![OsStr::new("--borg"), borg.as_os_str()];
        if let Port::Closed = port {
            options.extend([OsStr::new("-p"), OsStr::new(&closed)]);
        }
        let out = run(&mut f.pull_with(&options, &["list"]));
        assert_eq!(out.status.code(), Some(203), "{}", describe(&out));
        let err = text(&out.stderr);
        assert!(err.contains(&borg.display().to_string()), "{}", describe(&out));
        assert!(
            f.sshd.tmpdir_entries().is_empty(),
            "the run started on the client: {}",
            describe(&out)
        );
        f.assert_clean_processes_only();
    }
}
