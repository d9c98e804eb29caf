//! A link that dies silently (a NAT or firewall forgets the connection, the server reboots: no
//! FIN, no RST reaches either side) must not block later runs.
//!
//! A TCP proxy in the test, on 127.0.0.1 between `borg-pull-server` and a real OpenSSH sshd,
//! forwards bytes both ways; on command it stops reading and writing every connection it has
//! (their sockets stay open: neither end learns anything), while new connections pass. The run
//! in flight ends by the server's keepalives (exit 215); the client's sshd never notices, so
//! only the run's own guard (heartbeats, [`borg_pull_tunnel::limits::CLIENT_SILENCE_LIMIT`])
//! stops its borg, which would otherwise keep the client's cache lock. The next run must
//! succeed within two minutes of the freeze, and the repository check clean. Real values of
//! every limit: each test takes about 90 s.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

/// What the issue asks: the next run has succeeded within this long after the freeze.
const NEXT_RUN_WITHIN: Duration = Duration::from_secs(120);

/// A TCP proxy on 127.0.0.1 that can freeze the connections it has.
struct FreezingProxy {
    port: u16,
    /// One flag per connection so far: set, its threads neither read nor write any more.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Set on drop: every thread ends (within its 100 ms poll) and the sockets close.
    done: Arc<AtomicBool>,
}

/// How often the proxy's threads look at their flags.
const PROXY_POLL: Duration = Duration::from_millis(100);

impl FreezingProxy {
    fn start(target: u16) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let (list, stop) = (frozen.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                list.lock().unwrap().push(flag.clone());
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (flag, stop) = (flag.clone(), stop.clone());
                    std::thread::spawn(move || pump(from, to, &flag, &stop));
                }
            }
        });
        FreezingProxy { port, frozen, done }
    }

    /// Freezes every connection made so far; later ones pass.
    fn freeze(&self) {
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until EOF, an error, or the test's end; once `frozen`, it holds both
/// sockets open and touches neither (no FIN, no RST) until the test ends.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, done: &AtomicBool) {
    from.set_read_timeout(Some(PROXY_POLL)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    while !done.load(Ordering::SeqCst) {
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(PROXY_POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Read before the freeze, written after it: dropped, as a dead link would.
                if frozen.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    continue;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    if !frozen.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// An sshd behind a freezing proxy, a repository on "the server", the client's borg state and
/// a slow data source for a backup that is still running when the link dies.
struct Fixture {
    sshd: Sshd,
    proxy: FreezingProxy,
    repo: PathBuf,
    server_base: PathBuf,
    /// Written by the client's login user: its borg state, the slow source's progress.
    work: PathBuf,
    relay: PathBuf,
    /// known_hosts naming the sshd's host key at the proxy's port.
    known_hosts: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let sshd = Sshd::start();
        let proxy = FreezingProxy::start(sshd.port);
        let d = sshd.dir.path().to_owned();
        let work = d.join("work");
        fs::create_dir(&work).unwrap();
        let data = d.join("data");
        fs::create_dir(&data).unwrap();
        for i in 0..20 {
            fs::write(
                data.join(format!("file-{i}")),
                format!("content {i}\n").repeat(500),
            )
            .unwrap();
        }
        borg_pull_testkit::sshd::chown_to_login_user(&work);
        let relay = borg_pull_testkit::reachable_relay(&d);
        let known_hosts = d.join("known_hosts_proxy");
        fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{} {}\n", proxy.port, sshd.host_key_pub.trim()),
        )
        .unwrap();
        let f = Fixture {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            sshd,
            proxy,
            work,
            relay,
            known_hosts,
            data,
        };
        assert_ok(&f.local_borg(&["init", "-e", "none"]), "borg init");
        f
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// `borg-pull-server pull` through the proxy, then `--` and `borg_args`.
    fn pull<S: AsRef<OsStr>>(&self, borg_args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull")
            .arg("-p")
            .arg(self.proxy.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--relay")
            .arg(&self.relay)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}/client-base", self.work.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .arg(self.sshd.destination())
            .arg("--")
            .args(borg_args)
            .env("BORG_BASE_DIR", &self.server_base)
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    /// A backup whose source (run by borg on the client) writes a line to `work/progress` and
    /// 64 KiB of data every 200 ms, for at most 150 s: still running when the link dies.
    fn slow_backup(&self) -> TestCommand {
        let source = self.slow_source();
        self.pull(&[
            "create",
            "--content-from-command",
            "::dead-run",
            "--",
            "sh",
            "-c",
            &source,
        ])
    }

    fn progress(&self) -> usize {
        fs::read_to_string(self.work.join("progress"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn local_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        TestCommand::new("borg")
            .args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .current_dir(self.dir())
            .output()
    }

    /// Starts `first`, waits until its backup is under way, freezes the link, and waits for
    /// `first` to end by the server's keepalives (215); returns when the freeze happened.
    fn kill_the_link_under(&self, mut first: TestCommand, started: impl Fn(&Fixture) -> bool) -> Instant {
        let log = self.dir().join("first-run.log");
        let mut run = first.spawn(log);
        let until = Instant::now() + borg_pull_testkit::DEADLINE;
        while !started(self) {
            assert!(
                Instant::now() < until,
                "the first run never got going:\n{}",
                run.report()
            );
            assert!(run.is_running(), "the first run ended early:\n{}", run.report());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The server's heartbeats reach the run's guard (they, not a clock from the start, keep
        // a long run alive): its stamp moves on from the one the start wrote.
        let beat = || -> Option<(PathBuf, u64)> {
            let entries = self.sshd.tmpdir_entries();
            let [name] = entries.as_slice() else { return None };
            let dir = self.sshd.tmpdir.join(name);
            // `TIME COUNT`: the count of heartbeats received.
            let line = fs::read_to_string(dir.join("beat")).ok()?;
            let count = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((dir, count))
        };
        let until = Instant::now() + borg_pull_testkit::DEADLINE;
        let first_stamp = loop {
            if let Some(found) = beat() {
                break found;
            }
            assert!(
                Instant::now() < until,
                "no guarded run on the client:\n{}",
                run.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        while beat().is_none_or(|now| now.1 <= first_stamp.1) {
            assert!(
                Instant::now() < until,
                "no heartbeat reached the client:\n{}",
                run.report()
            );
            assert!(run.is_running(), "the first run ended early:\n{}", run.report());
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proxy.freeze();
        let frozen_at = Instant::now();
        let status = run.wait_exit();
        assert_eq!(
            status.code(),
            Some(215),
            "the first run should end by its keepalives:\n{}",
            run.report()
        );
        eprintln!("first run ended {:?} after the freeze", frozen_at.elapsed());
        frozen_at
    }

    /// Nothing of this test runs any more and no private directory is left on the client
    /// (bounded wait: the dead run's guard may still be finishing).
    fn assert_clean(&self) {
        let until = Instant::now() + borg_pull_testkit::DEADLINE;
        while !self.sshd.tmpdir_entries().is_empty() {
            assert!(
                Instant::now() < until,
                "left on the client: {:?}",
                self.sshd.tmpdir_entries()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        borg_pull_testkit::assert_no_process_mentions(&self.work);
    }
}

#[test]
fn after_a_frozen_link_the_next_pull_succeeds_and_the_repository_checks_clean() {
    let f = Fixture::new();
    let frozen_at = f.kill_the_link_under(f.slow_backup(), |f| f.progress() >= 10);
    let data = f.data.to_str().unwrap().to_owned();
    let out = f.pull(&["create", "::next-run", data.as_str()]).output();
    assert_ok(&out, "the pull after the freeze");
    let took = frozen_at.elapsed();
    eprintln!("next pull succeeded {took:?} after the freeze");
    assert!(
        took < NEXT_RUN_WITHIN,
        "the next pull took until {took:?} after the freeze"
    );
    assert_ok(&f.local_borg(&["check"]), "borg check");
    let list = f.local_borg(&["list", "--short"]);
    assert_ok(&list, "borg list");
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l == "next-run"),
        "{}",
        list.describe()
    );
    f.assert_clean();
}

impl Fixture {
    /// `borg-pull-server restore-tar` of `archive` through the proxy into `target`.
    fn restore(&self, archive: &str, target: &Path, tar: Option<&Path>) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("restore-tar")
            .arg("-p")
            .arg(self.proxy.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--archive")
            .arg(archive)
            .arg("--remote-dir")
            .arg(target);
        if let Some(tar) = tar {
            cmd.arg("--remote-tar").arg(tar);
        }
        cmd.arg(self.sshd.destination())
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    /// A directory the client's login user can restore into.
    fn target(&self, name: &str) -> PathBuf {
        let target = self.work.join(name);
        fs::create_dir(&target).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&target);
        target
    }
}

#[test]
fn after_a_frozen_link_the_next_restore_succeeds_and_the_dead_runs_tar_is_stopped() {
    let f = Fixture::new();
    // 16 MiB that do not compress: at the dead run's pace (64 KiB per 200 ms) the stream lasts
    // far beyond the freeze.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..16 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    fs::write(f.data.join("big"), &big).unwrap();
    let data = f.data.to_str().unwrap().to_owned();
    assert_ok(
        &f.local_borg(&["create", "--compression", "none", "::src", data.as_str()]),
        "borg create",
    );
    let slow_tar = f.dir().join("bin/slow-tar");
    fs::write(
        &slow_tar,
        format!(
            "#!/bin/sh\nn=0; while [ $n -lt 750 ]; do echo $n >>'{w}/progress'; \
             dd bs=65536 count=1 of=/dev/null 2>/dev/null; sleep 0.2; n=$((n+1)); done\n",
            w = f.work.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&slow_tar, fs::Permissions::from_mode(0o755)).unwrap();
    let first = f.restore("src", &f.target("dead"), Some(&slow_tar));
    let frozen_at = f.kill_the_link_under(first, |f| f.progress() >= 10);
    let target = f.target("next");
    let out = f.restore("src", &target, None).output();
    assert_ok(&out, "the restore after the freeze");
    let took = frozen_at.elapsed();
    eprintln!("next restore succeeded {took:?} after the freeze");
    assert!(
        took < NEXT_RUN_WITHIN,
        "the next restore took until {took:?} after the freeze"
    );
    let restored = target.join(f.data.join("big").strip_prefix("/").unwrap());
    assert!(
        fs::read(&restored).unwrap() == big,
        "{} differs",
        restored.display()
    );
    // The dead run's tar is gone with its directory (its guard, or the next run, stopped it).
    f.assert_clean();
    borg_pull_testkit::assert_no_process_mentions(&slow_tar);
}

/// `--via agent` / `--via tcp`: the client's borg logs in to the server's sshd (here the same
/// sshd) with the forwarded agent; `authorize` put the agent key there with its forced
/// `borg serve`. The client's own ssh reaches the server directly (agent method) or through the
/// run's TCP forward (TCP method): the freeze cuts the run's connection to the client.
fn via_fixture() -> (Fixture, PathBuf) {
    let f = Fixture::new();
    let agent_key = f.dir().join("agent_key");
    assert_ok(
        &TestCommand::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f"])
            .arg(&agent_key)
            .output(),
        "ssh-keygen",
    );
    // The forced borg serve runs as the login user.
    borg_pull_testkit::sshd::chown_to_login_user(&f.repo);
    let out = TestCommand::new(server_bin())
        .arg("authorize")
        .arg("--repo")
        .arg(&f.repo)
        .arg("--borg")
        .arg("/usr/bin/borg")
        .arg("--key")
        .arg(agent_key.with_extension("pub"))
        .arg("--install")
        .arg("--authorized-keys")
        .arg(f.dir().join("authorized_keys"))
        .output();
    assert_ok(&out, "authorize --install");
    (f, agent_key)
}

impl Fixture {
    /// `pull --via VIA` through the proxy with the agent key.
    fn via_pull(&self, via: &str, agent_key: &Path, borg_args: &[&str]) -> TestCommand {
        let server = format!("{}@127.0.0.1:{}", self.sshd.user, self.sshd.port);
        let mut with = TestCommand::new(server_bin());
        with.arg("pull")
            .args(["--via", via, "--agent-key"])
            .arg(agent_key)
            .arg("--server-ssh")
            .arg(server)
            .arg("--server-host-key")
            .arg(self.dir().join("host_key.pub"))
            .arg("-p")
            .arg(self.proxy.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}/client-base", self.work.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .arg(self.sshd.destination())
            .arg("--")
            .args(borg_args)
            .env("BORG_BASE_DIR", &self.server_base)
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env_remove("SSH_AUTH_SOCK")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        with
    }

    fn slow_source(&self) -> String {
        format!(
            "n=0; while [ $n -lt 750 ]; do echo $n >>'{w}/progress'; head -c 65536 /dev/urandom; \
             sleep 0.2; n=$((n+1)); done",
            w = self.work.display()
        )
    }
}

fn next_run_after_a_frozen_link_via(via: &str) {
    let (f, agent_key) = via_fixture();
    let source = f.slow_source();
    let first = f.via_pull(
        via,
        &agent_key,
        &[
            "create",
            "--content-from-command",
            "::dead-run",
            "--",
            "sh",
            "-c",
            &source,
        ],
    );
    let frozen_at = f.kill_the_link_under(first, |f| f.progress() >= 10);
    let data = f.data.to_str().unwrap().to_owned();
    let out = f
        .via_pull(via, &agent_key, &["create", "::next-run", data.as_str()])
        .output();
    assert_ok(&out, &format!("the pull --via {via} after the freeze"));
    let took = frozen_at.elapsed();
    eprintln!("next pull --via {via} succeeded {took:?} after the freeze");
    assert!(
        took < NEXT_RUN_WITHIN,
        "the next pull took until {took:?} after the freeze"
    );
    assert_ok(&f.local_borg(&["check"]), "borg check");
    let list = f.local_borg(&["list", "--short"]);
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l == "next-run"),
        "{}",
        list.describe()
    );
    f.assert_clean();
}

#[test]
fn after_a_frozen_link_the_next_pull_via_agent_succeeds() {
    next_run_after_a_frozen_link_via("agent");
}

#[test]
fn after_a_frozen_link_the_next_pull_via_tcp_succeeds() {
    next_run_after_a_frozen_link_via("tcp");
}

/// The other side of the bound: on a live link the heartbeats keep a run going well past
/// [`borg_pull_tunnel::limits::CLIENT_SILENCE_LIMIT`] (45 s) without a byte of borg's own traffic.
#[test]
fn a_live_pull_and_restore_longer_than_the_silence_bound_are_not_stopped() {
    let f = Fixture::new();
    // borg create waits 55 s for its source's first byte: nothing but heartbeats go to the client.
    let out = f
        .pull(&[
            "create",
            "--content-from-command",
            "::quiet",
            "--",
            "sh",
            "-c",
            "sleep 55; echo done",
        ])
        .output();
    assert_ok(&out, "a quiet pull of 55 s");
    // tar starts reading after 55 s: the stream waits at the client's window meanwhile.
    let lazy_tar = f.dir().join("bin/lazy-tar");
    fs::write(&lazy_tar, "#!/bin/sh\nsleep 55\nexec tar \"$@\"\n").unwrap();
    fs::set_permissions(&lazy_tar, fs::Permissions::from_mode(0o755)).unwrap();
    let data = f.data.to_str().unwrap().to_owned();
    assert_ok(&f.local_borg(&["create", "::src", data.as_str()]), "borg create");
    let target = f.target("lazy");
    let out = f.restore("src", &target, Some(&lazy_tar)).output();
    assert_ok(&out, "a restore whose tar waits 55 s");
    let restored = target.join(f.data.join("file-3").strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(&restored).unwrap(),
        fs::read(f.data.join("file-3")).unwrap()
    );
    f.assert_clean();
}
