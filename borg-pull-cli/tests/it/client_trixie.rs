//! A second client distribution: the end-to-end paths of pull_cli.rs, restore_tar.rs and
//! pull_via.rs against Debian 13 (trixie) with its own OpenSSH 10 sshd and ssh, borg 1.4 and
//! tar, from the tree `scripts/install-deps` builds with mmdebstrap (BORG_PULL_TRIXIE_ROOT). Its
//! sshd runs chrooted in private mount and pid namespaces on 127.0.0.1 (see
//! `borg_pull_testkit::sshd::CHROOT_SCRIPT`); the server side is the host's: borg 1.4 (BORG_PULL_BORG14) and, for
//! `--via agent|tcp`, the host's OpenSSH 9.2 sshd with the forced command. Every test ends by
//! stopping the chroot and checking that no process or mount of it is left.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

const PASSPHRASE: &str = "trixie 'client' $(pass)";

/// The chrooted trixie sshd, an encrypted repository made by the server's borg 1.4, borg state
/// for both ends and a data set, all in the sshd's test directory (bound into the chroot).
struct Trixie {
    sshd: Sshd,
    borg14: PathBuf,
    repo: PathBuf,
    server_base: PathBuf,
    /// BORG_BASE_DIR of borg on the client, writable by the login user.
    client_base: PathBuf,
    relay: PathBuf,
    data: PathBuf,
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
        let t = Trixie {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            client_base: d.join("client-base"),
            relay: borg_pull_testkit::reachable_relay(&d),
            data: d.join("data 'dir' $(x)"),
            borg14,
            sshd,
        };
        fs::create_dir(&t.client_base).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&t.client_base);
        fs::create_dir(&t.data).unwrap();
        write_data(&t.data);
        assert_ok(&t.server_borg(&["init", "-e", "repokey"]).output(), "borg init");
        // Proof of what runs there: the chroot's sshd is OpenSSH 10, not the host's 9.2.
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
    fn server_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new(&self.borg14);
        cmd.args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .current_dir(self.dir());
        cmd
    }

    /// `pull` to the trixie client (`--via socket`, the relay) with `options` first.
    fn pull<O: AsRef<OsStr>, S: AsRef<OsStr>>(&self, options: &[O], borg_args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull")
            .args(options)
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
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
            .args(borg_args)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("trixie sshd log", self.sshd.log_path());
        cmd
    }

    /// `borg check` of the whole repository on the server.
    fn assert_check_clean(&self) {
        let out = self.server_borg(&["check"]).output();
        assert_ok(&out, "borg check on the server");
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

/// Names that break naive quoting, a few sizes, a 2 MiB incompressible file.
fn write_data(dir: &Path) {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    fs::create_dir(dir.join("sub dir")).unwrap();
    fs::write(dir.join("small"), b"hello from trixie\n").unwrap();
    fs::write(dir.join("it's \"quoted\" $HOME"), noise(10_000)).unwrap();
    fs::write(dir.join("sub dir/new\nline"), noise(777)).unwrap();
    fs::write(dir.join(OsStr::from_bytes(b"\xff\xfe not utf-8")), noise(99)).unwrap();
    fs::write(dir.join("big"), noise(2 << 20)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Relative path -> contents (directories map to a marker).
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

/// A directory the login user may write (borg extract and tar run as it on the client).
fn writable_dir(path: &Path) -> PathBuf {
    fs::create_dir(path).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(path);
    path.to_owned()
}

#[test]
fn pull_create_check_and_extract_with_a_trixie_client() {
    let Some(t) = Trixie::start("") else { return };
    // The client's borg is trixie's own 1.4 (the host has Debian 12's 1.2 on PATH).
    let out = t.pull::<&str, _>(&[], &["--version"]).output();
    out.assert_code(0);
    assert!(out.stdout_text().starts_with("borg 1.4."), "{}", out.describe());

    let out = t
        .pull::<&str, _>(
            &[],
            &[
                OsString::from("create"),
                "--stats".into(),
                "::first".into(),
                t.data.clone().into(),
            ],
        )
        .output();
    out.assert_code(0);
    assert!(
        out.stderr_text().contains("Number of files: 5") || out.stdout_text().contains("Number of files: 5"),
        "{}",
        out.describe()
    );
    t.assert_check_clean();
    assert_eq!(t.archives(), "first\n");

    // A restore through pull: borg extract runs on the client, in --remote-dir.
    let restore = writable_dir(&t.dir().join("client restore 'q'"));
    let out = t
        .pull(
            &[OsStr::new("--remote-dir"), restore.as_os_str()],
            &["extract", "::first"],
        )
        .output();
    out.assert_code(0);
    let rel = t.data.strip_prefix("/").unwrap();
    assert_eq!(tree(&restore.join(rel)), tree(&t.data));

    // borg's own codes pass through from the trixie borg: 2 for a missing archive.
    let out = t.pull::<&str, _>(&[], &["list", "::no-such-archive"]).output();
    out.assert_code(2);
    t.finish();
}

#[test]
fn restore_tar_into_a_trixie_client_as_user_and_as_root() {
    let Some(t) = Trixie::start("") else { return };
    // The archive is made on the server; one file gets an owner that exists nowhere.
    let owned = t.data.join("small");
    assert_ok(
        &TestCommand::new("chown").arg("12345:54321").arg(&owned).output(),
        "chown",
    );
    let out = t
        .server_borg(&[
            OsString::from("create"),
            "::tarred".into(),
            "data 'dir' $(x)".into(),
        ])
        .output();
    assert_ok(&out, "borg create on the server");
    for (login, numeric) in [(t.sshd.user.clone(), false), ("root".to_owned(), true)] {
        let target = t.dir().join(format!("restored-{login}"));
        if login == "root" {
            fs::create_dir(&target).unwrap();
        } else {
            writable_dir(&target);
        }
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("restore-tar")
            .arg("-p")
            .arg(t.sshd.port.to_string())
            .arg("-i")
            .arg(t.sshd.client_key())
            .arg("--known-hosts")
            .arg(&t.sshd.known_hosts)
            .arg("--repo")
            .arg(&t.repo)
            .arg("--borg")
            .arg(&t.borg14)
            .arg("--archive")
            .arg("tarred")
            .arg("--remote-dir")
            .arg(&target);
        if numeric {
            cmd.arg("--numeric-owner");
        }
        cmd.arg(format!("{login}@127.0.0.1"))
            .env("BORG_BASE_DIR", &t.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("trixie sshd log", t.sshd.log_path());
        let out = cmd.output();
        out.assert_code(0);
        let restored = target.join("data 'dir' $(x)");
        assert_eq!(tree(&restored), tree(&t.data), "as {login}");
        let uid = fs::metadata(restored.join("small")).unwrap().uid();
        if numeric {
            // trixie's GNU tar as root took the archive's numeric owner.
            assert_eq!(uid, 12345, "as root");
        } else {
            assert_eq!(
                uid,
                fs::metadata(&target).unwrap().uid(),
                "tar as the login user owns what it writes"
            );
        }
    }
    t.finish();
}

/// The host's own sshd (OpenSSH 9.2) as the server for `--via agent|tcp`: the agent key's
/// authorized_keys line forces `borg serve` (a wrapper recording its argv) for the repository.
struct ServerSide {
    sshd: Sshd,
    agent_key: PathBuf,
    work: PathBuf,
}

impl ServerSide {
    fn start(t: &Trixie) -> ServerSide {
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let work = d.join("work");
        fs::create_dir(&work).unwrap();
        let agent_key = d.join("agent_key");
        let out = TestCommand::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f"])
            .arg(&agent_key)
            .output();
        assert_ok(&out, "ssh-keygen");
        let serve_borg = d.join("serve-borg");
        fs::write(
            &serve_borg,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] || printf '%s\\n' \"$*\" >>'{w}/serve-argv'\n\
                 BORG_BASE_DIR='{w}/serve-base' exec '{borg}' \"$@\"\n",
                w = work.display(),
                borg = t.borg14.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&serve_borg, fs::Permissions::from_mode(0o755)).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&work);
        // The forced borg serve runs as the host's login user: the repository is its.
        borg_pull_testkit::sshd::chown_to_login_user(&t.repo);
        let out = TestCommand::new(server_bin())
            .arg("authorize")
            .arg("--repo")
            .arg(&t.repo)
            .arg("--borg")
            .arg(&serve_borg)
            .arg("--key")
            .arg(agent_key.with_extension("pub"))
            .arg("--install")
            .arg("--authorized-keys")
            .arg(sshd.dir.path().join("authorized_keys"))
            .output();
        assert_ok(&out, "authorize --install");
        ServerSide {
            sshd,
            agent_key,
            work,
        }
    }

    /// `pull --via VIA` to the trixie client, whose own ssh logs back in to this sshd.
    fn pull(&self, t: &Trixie, via: &str, archive: &str) -> TestCommand {
        let server = format!("{}@127.0.0.1:{}", self.sshd.user, self.sshd.port);
        let mut cmd = t.pull(
            &[
                OsStr::new("--via"),
                OsStr::new(via),
                OsStr::new("--agent-key"),
                self.agent_key.as_os_str(),
                OsStr::new("--server-ssh"),
                OsStr::new(&server),
                OsStr::new("--server-host-key"),
                self.sshd.dir.path().join("host_key.pub").as_os_str(),
            ],
            &[
                OsString::from("create"),
                format!("::{archive}").into(),
                t.data.clone().into(),
            ],
        );
        cmd.env_remove("SSH_AUTH_SOCK")
            .attach_log("server sshd log", self.sshd.log_path());
        cmd
    }

    fn agent_fingerprint(&self) -> String {
        let out = TestCommand::new("ssh-keygen")
            .arg("-lf")
            .arg(self.agent_key.with_extension("pub"))
            .output();
        assert_ok(&out, "ssh-keygen -lf");
        out.stdout_text().split_whitespace().nth(1).unwrap().to_owned()
    }

    /// What ran on the server is the forced command, once, and trixie's ssh logged in with the
    /// agent key.
    fn assert_forced_serve_by_trixie_ssh(&self, t: &Trixie) {
        let argv = fs::read_to_string(self.work.join("serve-argv")).unwrap_or_default();
        let expected = format!(
            "serve --append-only --restrict-to-repository {}",
            t.repo.display()
        );
        assert_eq!(argv.lines().collect::<Vec<_>>(), [expected.as_str()], "{argv}");
        let log = self.sshd.log();
        assert!(
            log.contains("remote software version OpenSSH_10."),
            "the client's ssh was not trixie's OpenSSH 10:\n{log}"
        );
        assert!(
            log.contains(&format!("Accepted publickey for {}", self.sshd.user))
                && log.contains(&self.agent_fingerprint()),
            "the host's sshd did not accept the agent key:\n{log}"
        );
    }
}

fn assert_archive_matches(t: &Trixie, archive: &str) {
    let restore = t.dir().join(format!("server-restore-{archive}"));
    fs::create_dir(&restore).unwrap();
    let out = t
        .server_borg(&["extract".to_owned(), format!("::{archive}")])
        .current_dir(&restore)
        .output();
    assert_ok(&out, "borg extract on the server");
    let rel = t.data.strip_prefix("/").unwrap();
    assert_eq!(tree(&restore.join(rel)), tree(&t.data));
}

#[test]
fn via_agent_trixie_ssh_logs_back_in_to_the_hosts_sshd_with_the_forced_command() {
    let Some(t) = Trixie::start("") else { return };
    let server = ServerSide::start(&t);
    let out = server.pull(&t, "agent", "via-agent").output();
    out.assert_code(0);
    assert!(
        out.stderr_text().contains("agent: signed with the key"),
        "{}",
        out.describe()
    );
    server.assert_forced_serve_by_trixie_ssh(&t);
    t.assert_check_clean();
    assert_archive_matches(&t, "via-agent");
    borg_pull_testkit::assert_no_process_mentions(server.sshd.dir.path());
    t.finish();
}

#[test]
fn via_tcp_trixie_ssh_reaches_the_hosts_sshd_through_the_clients_loopback_forward() {
    let Some(t) = Trixie::start("") else { return };
    let server = ServerSide::start(&t);
    let out = server.pull(&t, "tcp", "via-tcp").output();
    out.assert_code(0);
    server.assert_forced_serve_by_trixie_ssh(&t);
    // The trixie sshd opened the remote forward on the client's loopback.
    assert!(
        t.sshd.log().contains("tcpip-forward"),
        "no remote forward in the trixie sshd's log:\n{}",
        t.sshd.log()
    );
    t.assert_check_clean();
    assert_archive_matches(&t, "via-tcp");
    borg_pull_testkit::assert_no_process_mentions(server.sshd.dir.path());
    t.finish();
}

/// How many key exchanges the trixie sshd finished (the first one included).
fn key_exchanges(log: &str) -> usize {
    log.matches("SSH2_MSG_NEWKEYS received").count()
}

#[test]
fn a_64_mib_pull_survives_a_rekey_every_megabyte() {
    let Some(t) = Trixie::start("RekeyLimit 1M\n") else {
        return;
    };
    let big = t.data.join("random 64 MiB");
    let mut bytes = Vec::with_capacity(64 << 20);
    fs::File::open("/dev/urandom")
        .unwrap()
        .take(64 << 20)
        .read_to_end(&mut bytes)
        .unwrap();
    fs::write(&big, &bytes).unwrap();
    let before = key_exchanges(&t.sshd.log());
    let started = std::time::Instant::now();
    let out: Outcome = t
        .pull::<&str, _>(
            &[],
            &[
                OsString::from("create"),
                "::rekeyed".into(),
                t.data.clone().into(),
            ],
        )
        .output();
    out.assert_code(0);
    let elapsed = started.elapsed();
    let rekeys = key_exchanges(&t.sshd.log()) - before;
    eprintln!("64 MiB pull with RekeyLimit 1M: {rekeys} key exchanges in {elapsed:?}");
    // 64 MiB from the client alone passes the 1 MiB limit 64 times: many re-exchanges, each
    // in the middle of channel data.
    assert!(rekeys >= 16, "only {rekeys} key exchanges:\n{}", t.sshd.log());
    t.assert_check_clean();
    let inside = big.strip_prefix("/").unwrap();
    let out = t
        .server_borg(&[
            OsStr::new("extract"),
            OsStr::new("--stdout"),
            OsStr::new("::rekeyed"),
            inside.as_os_str(),
        ])
        .output();
    assert_ok(&out, "borg extract --stdout");
    assert!(out.stdout == bytes, "the 64 MiB file came back different");

    // The other direction: the 64 MiB come from russh's side (borg serve's replies through the
    // forwarded socket) while sshd starts a re-exchange every MiB: a restore on the client.
    let before = key_exchanges(&t.sshd.log());
    let restore = writable_dir(&t.dir().join("client restore"));
    let started = std::time::Instant::now();
    let out = t
        .pull(
            &[OsStr::new("--remote-dir"), restore.as_os_str()],
            &[OsStr::new("extract"), OsStr::new("::rekeyed"), inside.as_os_str()],
        )
        .output();
    out.assert_code(0);
    let elapsed = started.elapsed();
    let rekeys = key_exchanges(&t.sshd.log()) - before;
    eprintln!("64 MiB restore with RekeyLimit 1M: {rekeys} key exchanges in {elapsed:?}");
    assert!(rekeys >= 16, "only {rekeys} key exchanges:\n{}", t.sshd.log());
    assert!(
        fs::read(restore.join(inside)).unwrap() == bytes,
        "the 64 MiB file restored on the client differs"
    );
    // sshd never saw a message out of place during a key exchange.
    let log = t.sshd.log();
    for bad in ["dispatch_protocol_error", "protocol error", "Bad packet"] {
        assert!(!log.contains(bad), "{bad:?} in the trixie sshd's log:\n{log}");
    }
    t.finish();
}

#[test]
fn stopping_the_fixture_mid_pull_ends_every_process_and_mount_of_the_chroot() {
    let Some(t) = Trixie::start("") else { return };
    let started = t.client_base.join("started");
    // Stands in for borg on the client: a session child that would outlive a careless fixture.
    let script = format!(": >'{}'; exec sleep 300", started.display());
    // Its log outlives the test's directory, which the fixture's stop removes.
    let logs = tempfile::tempdir().unwrap();
    let mut pull = t
        .pull(&["--remote-borg", "/bin/sh"], &["-c", script.as_str()])
        .spawn(logs.path().join("pull.log"));
    borg_pull_testkit::wait_until("the client's command to start in the chroot", || {
        pull.assert_running();
        started.exists()
    });
    let sleepers = borg_pull_testkit::descendants(t.sshd.pid())
        .into_iter()
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x00300")))
        .count();
    assert_eq!(sleepers, 1, "the session's sleep is not under the chrooted sshd");
    let Trixie { sshd, .. } = t;
    sshd.stop_and_assert_gone();
    let status = pull.wait_exit();
    // pull loses its client and says so with its own code for a lost connection.
    assert_eq!(status.code(), Some(215), "{}", pull.report());
}
