//! `borg-pull-server pull` against a client sshd that limits careless clients: `MaxAuthTries`
//! (real OpenSSH sshd, with OpenSSH's `ssh-agent` as the user's agent holding more keys than sshd
//! lets anyone try) and OpenSSH >= 9.8's PerSourcePenalties refusal (this machine's sshd is 9.2,
//! so an in-test TCP peer says what 9.8 says to a penalised address: "Not allowed at this time",
//! then closes).

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, Spawned, TestCommand};

/// What sshd logs (and says) when a client reaches MaxAuthTries failures.
const MAX_TRIES_LOGGED: &str = "maximum authentication attempts exceeded";
const MAX_TRIES_SAID: &str = "Too many authentication failures";

/// An sshd with `extra` config lines, a repository, borg state dirs and a HOME without key files.
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    server_base: PathBuf,
    client_base: PathBuf,
    relay: PathBuf,
    home: PathBuf,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        let sshd = Sshd::start_with(SshdOptions {
            extra_config: extra.iter().map(|l| format!("{l}\n")).collect(),
            ..Default::default()
        });
        let d = sshd.dir.path().to_owned();
        let relay = borg_pull_testkit::reachable_relay(&d);
        let f = Fixture {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            client_base: d.join("client-base"),
            relay,
            home: d.join("empty-home"),
            sshd,
        };
        fs::create_dir(&f.client_base).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&f.client_base);
        fs::create_dir_all(f.home.join(".ssh")).unwrap();
        let out = TestCommand::new("borg")
            .args(["init", "-e", "none"])
            .env("BORG_REPO", &f.repo)
            .env("BORG_BASE_DIR", &f.server_base)
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .output();
        assert_ok(&out, "borg init");
        f
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// `pull OPTIONS -p PORT ... USER@127.0.0.1 -- --version` with HOME without key files and no
    /// agent (callers add `-i`, SSH_AUTH_SOCK).
    fn pull(&self, options: &[&OsStr]) -> TestCommand {
        let mut cmd = pull_to(self.sshd.port, options);
        cmd.arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--relay")
            .arg(&self.relay)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", self.client_base.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .arg(format!("{}@127.0.0.1", self.sshd.user))
            .args(["--", "--version"])
            .env("HOME", &self.home)
            .env("BORG_BASE_DIR", &self.server_base)
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sshd log\n{}", self.sshd.log());
        }
    }
}

/// `borg-pull-server pull OPTIONS -p PORT` with the environment a test controls (no agent, no
/// borg variables, debug log); the caller adds the rest.
fn pull_to(port: u16, options: &[&OsStr]) -> TestCommand {
    let mut cmd = TestCommand::new(server_bin());
    cmd.arg("pull")
        .args(options)
        .arg("-p")
        .arg(port.to_string())
        .env("BORG_PULL_LOG", "debug")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("BORG_PASSPHRASE")
        .env_remove("BORG_PASSCOMMAND")
        .env_remove("BORG_REPO")
        .deadline(Duration::from_secs(120));
    cmd
}

/// OpenSSH's `ssh-agent -D -a SOCK` owned by the test (killed on drop) holding `keys`.
struct Agent {
    _child: Spawned,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, keys: &[PathBuf]) -> Agent {
        let socket = dir.join("agent.sock");
        let mut child = TestCommand::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .spawn(dir.join("agent.log"));
        child.wait_for_socket(&socket);
        for key in keys {
            let out = TestCommand::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &socket)
                .output();
            assert_ok(&out, "ssh-add");
        }
        Agent {
            _child: child,
            socket,
        }
    }
}

/// `n` fresh ed25519 keys no sshd authorises.
fn strangers(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("stranger_{i}"));
            let out = TestCommand::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f"])
                .arg(&path)
                .output();
            assert_ok(&out, "ssh-keygen");
            path
        })
        .collect()
}

/// The `borg-pull-server: error: ...` line (stderr also carries the debug log).
fn error_line(out: &Outcome) -> String {
    out.stderr_text()
        .lines()
        .find(|l| l.starts_with("borg-pull-server: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.describe()))
        .to_owned()
}

/// sshd's log once it has logged `n` ends of logins that did not get in (ours: "Connection closed
/// by authenticating user", its own: "Disconnecting authenticating user"), waited for (bounded):
/// sshd's monitor writes the log, not in step with what the client sees.
fn log_after_failed_logins(sshd: &Sshd, n: usize) -> String {
    let ends = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("Connection closed by authenticating user")
                    || l.contains("Disconnecting authenticating user")
            })
            .count()
    };
    borg_pull_testkit::wait_until(&format!("{n} failed logins in the sshd log"), || {
        ends(&sshd.log()) >= n
    });
    sshd.log()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn an_agent_with_more_keys_than_max_auth_tries_stops_at_five_and_says_so() {
    // sshd's default, spelled out: the bound is below it.
    let f = Fixture::new(&["MaxAuthTries 6"]);
    let mut keys = strangers(f.dir(), 8);
    // The authorised key ninth: OpenSSH's ssh would be cut off before reaching it too.
    keys.push(f.sshd.client_key().to_path_buf());
    let agent = Agent::start(f.dir(), &keys);

    let out = f.pull(&[]).env("SSH_AUTH_SOCK", &agent.socket).output();
    out.assert_code(211);
    let err = error_line(&out);
    for needle in [
        "permission denied (publickey) for the 5 keys of the agent at",
        "The agent holds 9 keys, but at most 5 keys are offered per login",
        "MaxAuthTries",
        "pass the key the client authorises with -i FILE",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    let log = log_after_failed_logins(&f.sshd, 1);
    assert!(!log.contains(MAX_TRIES_LOGGED), "sshd cut the login off:\n{log}");
    // sshd logs every refused key: five, all on one connection (one first userauth attempt).
    assert_eq!(log.matches("Failed publickey for").count(), 5, "{log}");
    assert_eq!(log.matches("attempt 0 failures 0").count(), 1, "{log}");
    assert!(!out.stderr_text().contains(MAX_TRIES_SAID), "{}", out.describe());
    assert!(!log.contains("Accepted publickey"), "{log}");

    // None authorised at all: the same five offers, the same clear end.
    let only_strangers = f.dir().join("only-strangers");
    fs::create_dir(&only_strangers).unwrap();
    let none = Agent::start(&only_strangers, &keys[..8]);
    let out = f.pull(&[]).env("SSH_AUTH_SOCK", &none.socket).output();
    out.assert_code(211);
    let err = error_line(&out);
    assert!(
        err.contains("The agent holds 8 keys, but at most 5 keys are offered per login"),
        "{err}"
    );
    let log = log_after_failed_logins(&f.sshd, 2);
    assert!(!log.contains(MAX_TRIES_LOGGED), "{log}");
    assert_eq!(log.matches("Failed publickey for").count(), 10, "{log}");

    // Naming the key works with the same agent present: it is then the only key offered.
    let out = f
        .pull(&[os("-i"), f.sshd.client_key().as_os_str()])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output();
    out.assert_code(0);
    assert!(out.stdout_text().starts_with("borg "), "{}", out.describe());
    borg_pull_testkit::wait_until("the login in the sshd log", || {
        f.sshd.log().contains("Accepted publickey")
    });
    let log = f.sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
    assert!(!log.contains(MAX_TRIES_LOGGED), "{log}");
}

#[test]
fn a_lower_max_auth_tries_is_named_when_sshd_ends_the_login() {
    // Below our bound of five: sshd ends the login at its third refused key. That cannot be
    // avoided from our side (sshd does not say how many tries are left), only named.
    let f = Fixture::new(&["MaxAuthTries 3"]);
    let agent = Agent::start(f.dir(), &strangers(f.dir(), 4));
    let out = f.pull(&[]).env("SSH_AUTH_SOCK", &agent.socket).output();
    out.assert_code(211);
    let err = error_line(&out);
    for needle in [
        "the client's sshd ended the login after 3 refused keys",
        MAX_TRIES_SAID,
        "MaxAuthTries",
        "pass the key the client authorises with -i FILE",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // The reference: the real sshd did cut us off at its limit.
    let log = log_after_failed_logins(&f.sshd, 1);
    assert!(log.contains(MAX_TRIES_LOGGED), "{log}");
}

#[test]
fn a_penalised_address_exits_220_naming_per_source_penalties() {
    // What OpenSSH >= 9.8's listener does for a penalised source (sshd.c drop_connection): the
    // TCP connection is accepted, "Not allowed at this time" written, the socket closed.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let peer = std::thread::spawn(move || {
        // Bounded: a pull that never connects fails the test instead of hanging it.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let tcp = loop {
            match listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the pull never connected");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(tcp.try_clone().unwrap());
        // The client's banner is read first, so the close is a FIN (closing with unread data
        // would be a reset, which may overtake the line).
        let mut banner = String::new();
        reader.by_ref().take(255).read_line(&mut banner).unwrap();
        (&tcp).write_all(b"Not allowed at this time\r\n").unwrap();
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = reader.take(64 * 1024).read_to_end(&mut rest);
        banner
    });
    let dir = tempfile::tempdir().unwrap();
    let key = strangers(dir.path(), 1).remove(0);
    let known_hosts = dir.path().join("known_hosts");
    fs::write(&known_hosts, "").unwrap();
    let out = pull_to(port, &[os("-i"), key.as_os_str()])
        .arg("--known-hosts")
        .arg(&known_hosts)
        .arg("--repo")
        .arg(dir.path().join("repo"))
        .env("HOME", dir.path())
        .arg("someone@127.0.0.1")
        .args(["--", "--version"])
        .output();
    let banner = peer.join().unwrap();
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
    out.assert_code(220);
    let err = error_line(&out);
    for needle in [
        &format!("127.0.0.1 port {port}") as &str,
        "closed the connection without sending its SSH banner (it said \"Not allowed at this time\")",
        "PerSourcePenalties",
        "PerSourcePenaltyExemptList",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // `--help` lists the code.
    let help = TestCommand::new(server_bin()).args(["pull", "--help"]).output();
    assert!(help.stdout_text().contains("220"), "{}", help.describe());
}
