//! The SSH cipher against a real OpenSSH sshd (LogLevel DEBUG1, which logs the cipher each key
//! exchange settles on) and real borg on both ends: by default the cheaper cipher for this CPU is
//! negotiated, `--cipher` / `cipher =` forces one, a forced cipher the sshd does not offer fails
//! with exit 214 naming it and the fix, an unknown name is a usage error.

use std::fs;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, PullFixture, TestCommand};

/// What this CPU should get by default, judged from /proc/cpuinfo (not from the code under
/// test): aes128-gcm with AES and carry-less multiply instructions, chacha20-poly1305 without.
fn expected_default() -> &'static str {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let hardware_aes = if cfg!(target_arch = "x86_64") {
        flags.contains(&"aes") && flags.contains(&"pclmulqdq")
    } else if cfg!(target_arch = "aarch64") {
        flags.contains(&"aes")
    } else {
        false
    };
    if hardware_aes {
        "aes128-gcm@openssh.com"
    } else {
        "chacha20-poly1305@openssh.com"
    }
}

/// The ciphers sshd logged (client->server, server->client) for the key exchanges in `log`.
fn logged_ciphers(log: &str) -> Vec<(String, String)> {
    let after = |line: &str, tag: &str| -> Option<String> {
        let rest = &line[line.find(tag)? + tag.len()..];
        Some(rest.split_whitespace().next()?.to_owned())
    };
    let c2s: Vec<String> = log
        .lines()
        .filter_map(|l| after(l, "kex: client->server cipher: "))
        .collect();
    let s2c: Vec<String> = log
        .lines()
        .filter_map(|l| after(l, "kex: server->client cipher: "))
        .collect();
    assert_eq!(c2s.len(), s2c.len(), "{log}");
    c2s.into_iter().zip(s2c).collect()
}

/// The shared pull fixture with an unencrypted repository.
struct Fixture(PullFixture);

impl std::ops::Deref for Fixture {
    type Target = PullFixture;

    fn deref(&self) -> &PullFixture {
        &self.0
    }
}

impl Fixture {
    fn new(sshd: Sshd) -> Fixture {
        let f = Fixture(PullFixture::new(sshd));
        let out = f.server_borg(&["init", "-e", "none"]).arg(&f.repo).output();
        assert_ok(&out, "borg init");
        f
    }

    /// `borg-pull-server pull` with `options` first, then borg's `args`, logging at debug.
    fn pull(&self, options: &[&str], args: &[&str]) -> TestCommand {
        let mut cmd = self.pull_with(options, args);
        cmd.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_PULL_LOG", "debug");
        cmd
    }

    /// Runs `cmd` and returns it with the ciphers sshd logged for its connections.
    fn run_logged(&self, cmd: &mut TestCommand) -> (Outcome, Vec<(String, String)>) {
        let before = self.sshd.log().len();
        let out = cmd.output();
        let log = self.sshd.log();
        (out, logged_ciphers(&log[before..]))
    }
}

/// One connection, both directions `cipher`.
fn assert_negotiated(ciphers: &[(String, String)], cipher: &str, out: &Outcome) {
    assert_eq!(
        ciphers,
        [(cipher.to_owned(), cipher.to_owned())],
        "{}",
        out.describe()
    );
    let err = out.stderr_text();
    assert!(
        err.lines()
            .any(|l| l.contains("negotiated cipher") && l.contains(cipher)),
        "our debug log names the cipher:\n{}",
        out.describe()
    );
}

#[test]
fn the_default_is_the_cheaper_cipher_for_this_cpu_and_a_named_one_is_forced() {
    let f = Fixture::new(Sshd::start());
    let expected = expected_default();
    // A real backup and a listing: data both ways through the tunnel with the default cipher.
    let (out, ciphers) = f.run_logged(&mut f.pull(&[], &["create", "::a", "/etc/hostname"]));
    assert_ok(&out, "pull create");
    assert_negotiated(&ciphers, expected, &out);
    let (out, ciphers) = f.run_logged(&mut f.pull(&["--cipher", "auto"], &["list", "--short"]));
    assert_ok(&out, "pull list");
    assert_eq!(out.stdout_text().trim(), "a", "{}", out.describe());
    assert_negotiated(&ciphers, expected, &out);
    // Each name forces its cipher, whatever the CPU, and the backup goes through with it.
    for (name, ssh_name) in [
        ("chacha20-poly1305", "chacha20-poly1305@openssh.com"),
        ("aes128-gcm", "aes128-gcm@openssh.com"),
        ("aes256-gcm@openssh.com", "aes256-gcm@openssh.com"),
    ] {
        let archive = format!("::{}", &name[..6]);
        let (out, ciphers) =
            f.run_logged(&mut f.pull(&["--cipher", name], &["create", &archive, "/etc/hostname"]));
        assert_ok(&out, name);
        assert_negotiated(&ciphers, ssh_name, &out);
    }
}

#[test]
fn a_forced_cipher_the_sshd_does_not_offer_fails_with_214_naming_it_and_auto_falls_back() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: "Ciphers chacha20-poly1305@openssh.com\n".into(),
        ..Default::default()
    });
    let f = Fixture::new(sshd);
    let (out, _) =
        f.run_logged(&mut f.pull(&["--cipher", "aes128-gcm"], &["create", "::a", "/etc/hostname"]));
    out.assert_code(214);
    let err = out.stderr_text();
    for needle in [
        "does not offer the cipher aes128-gcm@openssh.com",
        "--cipher aes128-gcm",
        "(it offers: chacha20-poly1305@openssh.com)",
        "Ciphers in the client's sshd_config",
        "--cipher auto",
    ] {
        assert!(err.contains(needle), "{needle:?} missing:\n{}", out.describe());
    }
    // Nothing was backed up.
    let list = TestCommand::new("borg")
        .args(["list", "--short"])
        .arg(&f.repo)
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .output();
    assert_ok(&list, "borg list");
    assert_eq!(list.stdout_text().trim(), "", "{}", list.describe());
    // auto offers the whole list: this sshd's one cipher is taken, whatever we prefer.
    let (out, ciphers) = f.run_logged(&mut f.pull(&[], &["create", "::a", "/etc/hostname"]));
    assert_ok(&out, "pull with auto");
    assert_negotiated(&ciphers, "chacha20-poly1305@openssh.com", &out);
}

mod an_unknown_cipher_is_a_usage_error_naming_the_accepted_ones {
    use super::*;

    #[test]
    fn pull_aes128_ctr() {
        case("pull", "aes128-ctr");
    }

    #[test]
    fn pull_upper_case() {
        case("pull", "AES128-GCM");
    }

    #[test]
    fn pull_empty() {
        case("pull", "");
    }

    #[test]
    fn pull_auto_with_a_domain() {
        case("pull", "auto@openssh.com");
    }

    #[test]
    fn restore_tar_aes128_ctr() {
        case("restore-tar", "aes128-ctr");
    }

    #[test]
    fn restore_tar_upper_case() {
        case("restore-tar", "AES128-GCM");
    }

    #[test]
    fn restore_tar_empty() {
        case("restore-tar", "");
    }

    #[test]
    fn restore_tar_auto_with_a_domain() {
        case("restore-tar", "auto@openssh.com");
    }

    fn case(sub: &str, bad: &str) {
        let mut cmd = TestCommand::new(server_bin());
        cmd.args([sub, "--cipher", bad, "--repo", "/r"]);
        if sub == "pull" {
            cmd.args(["u@127.0.0.1", "--", "list"]);
        } else {
            cmd.args(["--archive", "a", "--remote-dir", "/tmp", "u@127.0.0.1"]);
        }
        let out = cmd.output();
        out.assert_code(200);
        let err = out.stderr_text();
        assert!(
            err.contains("auto, chacha20-poly1305, aes128-gcm or aes256-gcm"),
            "{}",
            out.describe()
        );
    }
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// A fleet config for `f`'s sshd: `defaults` in `[defaults]`, then one client with `client`.
fn fleet_config(f: &Fixture, defaults: &str, client: &str) -> PathBuf {
    let d = f.sshd.dir.path();
    let text = format!(
        "[server]\nstate_dir = {state}\n\n[defaults]\nuser = {user}\nidentity = {key}\n\
         known_hosts = {kh}\nrelay = {relay}\nargs = [\"create\", \"::a-{{now}}\", \"/etc/hostname\"]\n\
         env = {{ BORG_BASE_DIR = {client_base}, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK = \"yes\" }}\n\
         {defaults}\n\n[[client]]\nname = \"one\"\nhost = \"127.0.0.1\"\nport = {port}\nrepo = {repo}\n{client}\n",
        state = toml_str(d.join("state")),
        user = toml_str(&f.sshd.user),
        key = toml_str(f.sshd.client_key()),
        kh = toml_str(&f.sshd.known_hosts),
        relay = toml_str(&f.relay),
        client_base = toml_str(&f.client_base),
        port = f.sshd.port,
        repo = toml_str(&f.repo),
    );
    let path = d.join("fleet.toml");
    fs::write(&path, text).unwrap();
    path
}

fn check_config(f: &Fixture, config: &Path) -> TestCommand {
    let mut cmd = TestCommand::new(server_bin());
    cmd.args(["check-config", "--connect", "--config"])
        .arg(config)
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .env("BORG_PULL_LOG", "debug")
        .attach_log("sshd log", f.sshd.log_path());
    cmd
}

#[test]
fn the_fleet_config_cipher_is_used_by_check_config_and_run_a_clients_own_winning() {
    let f = Fixture::new(Sshd::start());
    // [defaults] forces one cipher, the client another: the client's wins.
    let config = fleet_config(&f, "cipher = \"chacha20-poly1305\"", "cipher = \"aes256-gcm\"");
    let (out, ciphers) = f.run_logged(&mut check_config(&f, &config));
    assert_ok(&out, "check-config --connect");
    assert!(!ciphers.is_empty(), "{}", out.describe());
    for c in &ciphers {
        assert_eq!(c.0, "aes256-gcm@openssh.com", "{}", out.describe());
        assert_eq!(c.1, "aes256-gcm@openssh.com", "{}", out.describe());
    }
    // run pulls with [defaults]' cipher when the client sets none.
    let config = fleet_config(&f, "cipher = \"chacha20-poly1305\"", "");
    let mut run = TestCommand::new(server_bin());
    run.args(["run", "--config"])
        .arg(&config)
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .attach_log("sshd log", f.sshd.log_path());
    let (out, ciphers) = f.run_logged(&mut run);
    assert_ok(&out, "run");
    assert_eq!(
        ciphers,
        [(
            "chacha20-poly1305@openssh.com".to_owned(),
            "chacha20-poly1305@openssh.com".to_owned()
        )],
        "{}",
        out.describe()
    );
}

#[test]
fn a_fleet_cipher_the_sshd_does_not_offer_fails_check_config_with_214_and_the_key_to_change() {
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: "Ciphers aes256-gcm@openssh.com\n".into(),
        ..Default::default()
    });
    let f = Fixture::new(sshd);
    let config = fleet_config(&f, "", "cipher = \"chacha20-poly1305\"");
    let out = check_config(&f, &config).output();
    out.assert_code(214);
    let text = format!("{}{}", out.stdout_text(), out.stderr_text());
    for needle in [
        "does not offer the cipher chacha20-poly1305@openssh.com",
        "(it offers: aes256-gcm@openssh.com)",
        "cipher = \"auto\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{}", out.describe());
    }
    // An unknown name is a config error naming the key, its line and the accepted values.
    let config = fleet_config(&f, "", "cipher = \"blowfish\"");
    let out = TestCommand::new(server_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output();
    out.assert_code(200);
    let err = out.stderr_text();
    let line = fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("cipher ="))
        .unwrap()
        + 1;
    for needle in [
        format!("line {line}"),
        "\"cipher\"".to_owned(),
        "\"blowfish\"".to_owned(),
        "auto, chacha20-poly1305, aes128-gcm or aes256-gcm".to_owned(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing:\n{}", out.describe());
    }
}
