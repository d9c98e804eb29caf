//! `pull` against OpenSSH >= 9.8's `PerSourcePenalties` in the real thing: Debian 13's own sshd
//! (OpenSSH 10.0) from the trixie tree, chrooted on 127.0.0.1 (see `borg_pull_testkit::sshd::CHROOT_SCRIPT`), with
//! the penalties the fixture otherwise turns off switched back on (the test's config lines come
//! first; sshd keeps the first value). The server side is the host's borg 1.4
//! (BORG_PULL_BORG14). pull_auth_limits.rs has the same refusal from an in-process peer; this is
//! the reference it copies.
//!
//! Values checked against trixie's sshd_config(5) and its `sshd -T`: `authfail` is the penalty
//! for a connection that made a failed authentication attempt, `min` what must accrue before a
//! penalty is enforced (a new penalty longer than `min` is enforced at once), `max` the cap.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

const PASSPHRASE: &str = "penalised 'client' $(pass)";

/// One failed login is penalised for 10 minutes, well above `min` (so it is enforced from the
/// first failure, not after several add up) and longer than anything a loaded machine puts
/// between two pulls, so the refusal of the next pull does not depend on timing. `max` spelled
/// out so the cap cannot shorten it. The sshd is the test's own and dies with it.
const PENALTIES: &str = "PerSourcePenalties authfail:10m max:10m min:15s\n";

/// What the listening sshd logs when it reaps the session of a login that failed (the event
/// the `authfail` penalty is for).
const AUTHFAIL_REAPED: &str = "exited after unsuccessful auth attempt";

/// The reason sshd gives for an authfail penalty, in its penalty and drop lines.
const AUTHFAIL_REASON: &str = "penalty: failed authentication";

/// The chrooted trixie sshd with `extra_config`, an encrypted repository made by the server's
/// borg 1.4, borg state for both ends, a small data set, a key the client does not authorise and
/// a HOME without key files.
struct Trixie {
    sshd: Sshd,
    borg14: PathBuf,
    repo: PathBuf,
    server_base: PathBuf,
    client_base: PathBuf,
    relay: PathBuf,
    data: PathBuf,
    stranger: PathBuf,
    home: PathBuf,
}

impl Trixie {
    /// `None` (a skip) only without BORG_PULL_REQUIRE_DEPS; with it, a missing tree fails.
    fn start(extra_config: &str) -> Option<Trixie> {
        let tree = borg_pull_testkit::trixie_root()?;
        let borg14 = borg_pull_testkit::borg14()?;
        let sshd = Sshd::start_with(SshdOptions {
            chroot: Some(tree),
            extra_config: extra_config.to_owned(),
            ..SshdOptions::default()
        });
        let d = sshd.dir.path().to_owned();
        let relay = borg_pull_testkit::reachable_relay(&d);
        let stranger = d.join("stranger");
        let out = TestCommand::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f"])
            .arg(&stranger)
            .output();
        assert_ok(&out, "ssh-keygen");
        let t = Trixie {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            client_base: d.join("client-base"),
            data: d.join("data"),
            home: d.join("empty-home"),
            relay,
            stranger,
            borg14,
            sshd,
        };
        fs::create_dir(&t.client_base).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&t.client_base);
        fs::create_dir_all(t.home.join(".ssh")).unwrap();
        fs::create_dir(&t.data).unwrap();
        fs::write(t.data.join("file"), b"backed up past the penalties\n").unwrap();
        fs::set_permissions(&t.data, fs::Permissions::from_mode(0o755)).unwrap();
        assert_ok(&t.server_borg(&["init", "-e", "repokey"]).output(), "borg init");
        // What refuses us below is trixie's OpenSSH 10, with penalties as the test set them.
        assert!(
            t.sshd.log().contains("OpenSSH_10."),
            "the chrooted sshd is not OpenSSH 10:\n{}",
            t.sshd.log()
        );
        Some(t)
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// The server's borg 1.4 with the repository and passphrase in its environment.
    fn server_borg(&self, args: &[&str]) -> TestCommand {
        let mut cmd = TestCommand::new(&self.borg14);
        cmd.args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .current_dir(self.dir());
        cmd
    }

    /// `pull -i KEY ... -- create ::ARCHIVE DATA` to the trixie client: with `-i` that key is
    /// the only one offered (and no agent, HOME without key files, to be sure).
    fn pull(&self, key: &Path, archive: &str) -> Outcome {
        TestCommand::new(server_bin())
            .arg("pull")
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg("-i")
            .arg(key)
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--relay")
            .arg(&self.relay)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--borg")
            .arg(&self.borg14)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", self.client_base.display()))
            .arg(self.sshd.destination())
            .arg("--")
            .args([
                OsString::from("create"),
                format!("::{archive}").into(),
                self.data.clone().into(),
            ])
            .env("HOME", &self.home)
            .env_remove("SSH_AUTH_SOCK")
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("trixie sshd log", self.sshd.log_path())
            .output()
    }

    /// sshd's log once it holds `n` lines containing `needle`, waited for (bounded): the
    /// listener reaps a failed login's session, and penalises its address, after the client has
    /// already seen the end of the login.
    fn log_with(&self, needle: &str, n: usize) -> String {
        borg_pull_testkit::wait_until(&format!("{n} lines with {needle:?} in the sshd log"), || {
            self.sshd.log().lines().filter(|l| l.contains(needle)).count() >= n
        });
        self.sshd.log()
    }

    fn archives(&self) -> String {
        let out = self.server_borg(&["list", "--short"]).output();
        assert_ok(&out, "borg list");
        out.stdout_text()
    }

    /// Nothing of the test runs, the client's private directory is gone, then the chroot is
    /// stopped and no process or mount of it is left.
    fn finish(self) {
        borg_pull_testkit::assert_no_process_mentions(self.dir());
        borg_pull_testkit::wait_until("the private directory on the client to go", || {
            self.sshd.tmpdir_entries().is_empty()
        });
        self.sshd.stop_and_assert_gone();
    }
}

/// The `borg-pull-server: error: ...` line.
fn error_line(out: &Outcome) -> String {
    out.stderr_text()
        .lines()
        .find(|l| l.starts_with("borg-pull-server: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.describe()))
        .to_owned()
}

/// The failed login: exit 211, and sshd refused the stranger's key and ended a login that tried.
fn assert_refused_key(t: &Trixie, out: &Outcome, failures: usize) {
    out.assert_code(211);
    let log = t.log_with(AUTHFAIL_REAPED, failures);
    assert_eq!(log.matches("Failed publickey for").count(), failures, "{log}");
    assert!(!log.contains("Accepted publickey"), "{log}");
}

/// Lines where sshd put the source under an enforced authfail penalty: a new one longer than
/// `min` ("new ... active penalty"), or one that grew past `min` ("activating"; the fixture's
/// readiness probe leaves a short `noauth` one the failure can add to).
fn enforced_penalties(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains(AUTHFAIL_REASON) && (l.contains(" active penalty of ") || l.contains(": activating "))
        })
        .collect()
}

#[test]
fn one_failed_pull_gets_the_next_refused_by_trixie_sshd_exit_220() {
    let Some(t) = Trixie::start(PENALTIES) else {
        return;
    };
    let out = t.pull(&t.stranger, "never");
    assert_refused_key(&t, &out, 1);
    assert!(
        error_line(&out).contains("permission denied (publickey)"),
        "{}",
        out.describe()
    );
    // The penalty is in force before the next pull starts (sshd imposes it when it reaps the
    // failed session, after our pull has ended).
    let log = t.log_with(AUTHFAIL_REASON, 1);
    let enforced = enforced_penalties(&log);
    assert_eq!(enforced.len(), 1, "no enforced penalty for 127.0.0.1:\n{log}");
    assert!(enforced[0].contains("127.0.0.1"), "{}", enforced[0]);

    // The right key does not help: sshd refuses the address before any SSH is spoken.
    let out = t.pull(t.sshd.client_key(), "refused");
    out.assert_code(220);
    let err = error_line(&out);
    for needle in [
        format!("127.0.0.1 port {}", t.sshd.port),
        "closed the connection without sending its SSH banner (it said \"Not allowed at this time\")"
            .to_owned(),
        "PerSourcePenalties".to_owned(),
        "PerSourcePenaltyExemptList".to_owned(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing from: {err}");
    }
    // sshd's side: it dropped exactly one connection (pull does not retry) for the penalty,
    // and never let the key in.
    let log = t.log_with("drop connection #", 1);
    let drops: Vec<&str> = log.lines().filter(|l| l.contains("drop connection #")).collect();
    assert_eq!(drops.len(), 1, "{log}");
    assert!(
        drops[0].contains("from [127.0.0.1]") && drops[0].contains(AUTHFAIL_REASON),
        "{}",
        drops[0]
    );
    assert!(!log.contains("Accepted publickey"), "{log}");
    assert_eq!(t.archives(), "");
    t.finish();
}

#[test]
fn the_exempt_list_lets_the_right_key_in_after_four_failed_pulls() {
    // The README's fix, with the same penalties that refused the second pull above.
    let Some(t) = Trixie::start(&format!("{PENALTIES}PerSourcePenaltyExemptList 127.0.0.1\n")) else {
        return;
    };
    for failures in 1..=4 {
        let out = t.pull(&t.stranger, "never");
        // Each waits for sshd to have reaped the one before: were it penalised, the next pull
        // would already be refused.
        assert_refused_key(&t, &out, failures);
    }
    let log = t.sshd.log();
    assert!(
        !log.contains(AUTHFAIL_REASON) && !log.contains("drop connection #"),
        "sshd penalised or dropped an exempt address:\n{log}"
    );

    let out = t.pull(t.sshd.client_key(), "after-failures");
    out.assert_code(0);
    borg_pull_testkit::wait_until("the login in the sshd log", || {
        t.sshd.log().contains("Accepted publickey")
    });
    assert_eq!(t.archives(), "after-failures\n");
    assert_ok(&t.server_borg(&["check"]).output(), "borg check");
    let out = t
        .server_borg(&["extract", "--stdout", "::after-failures"])
        .output();
    assert_ok(&out, "borg extract --stdout");
    assert_eq!(out.stdout, b"backed up past the penalties\n");
    t.finish();
}
