//! `borg-pull-server pull` through a jump host (`-J`) and with the user's ssh-agent, against a
//! real OpenSSH sshd and real borg. One sshd plays both the jump host (as `127.0.0.1:PORT`) and
//! the client (as `localhost:PORT`, reached through the jump host's `direct-tcpip` channel), so
//! the two have separate known_hosts entries.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, Spawned, TestCommand};

/// An sshd, an unencrypted repository on "the server", borg state dirs for both ends and a HOME
/// without any key files.
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    server_base: PathBuf,
    client_base: PathBuf,
    relay: PathBuf,
    home: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let sshd = Sshd::start();
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
        assert_ok(&f.local_borg(&["init", "-e", "none"]), "borg init");
        f
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// `[127.0.0.1]:PORT` (the jump host) and/or `[localhost]:PORT` (the client) with the host key.
    fn known_hosts(&self, name: &str, jump_host: bool, client: bool) -> PathBuf {
        let port = self.sshd.port;
        let mut lines = String::new();
        if jump_host {
            lines.push_str(&format!("[127.0.0.1]:{port} {}\n", self.sshd.host_key_pub));
        }
        if client {
            lines.push_str(&format!("[localhost]:{port} {}\n", self.sshd.host_key_pub));
        }
        let path = self.dir().join(name);
        fs::write(&path, lines).unwrap();
        path
    }

    /// `borg-pull-server pull OPTIONS -p PORT --relay .. --repo .. USER@localhost -- BORG_ARGS`
    /// with HOME without key files and no agent (callers add `-i`, `-J`, SSH_AUTH_SOCK).
    fn pull<S: AsRef<OsStr>>(&self, options: &[&OsStr], borg_args: &[S]) -> TestCommand {
        self.pull_to_port(self.sshd.port, options, borg_args)
    }

    /// [`Fixture::pull`] with the client at `localhost:port`.
    fn pull_to_port<S: AsRef<OsStr>>(&self, port: u16, options: &[&OsStr], borg_args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull")
            .args(options)
            .arg("-p")
            .arg(port.to_string())
            .arg("--relay")
            .arg(&self.relay)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", self.client_base.display()))
            .arg("--env")
            .arg("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes")
            .arg(format!("{}@localhost", self.sshd.user))
            .arg("--")
            .args(borg_args)
            .env("HOME", &self.home)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PULL_LOG", "debug")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    fn local_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        TestCommand::new("borg")
            .args(args)
            .current_dir(self.dir())
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .output()
    }

    /// `SHA256:...` of a public key file.
    fn fingerprint(&self, public_key: &Path) -> String {
        let out = TestCommand::new("ssh-keygen").arg("-lf").arg(public_key).output();
        assert_ok(&out, "ssh-keygen -lf");
        out.stdout_text().split_whitespace().nth(1).unwrap().to_owned()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sshd log\n{}", self.sshd.log());
        }
    }
}

/// A real `ssh-agent -D -a SOCK` owned by the test (killed on drop) holding `keys`.
struct Agent {
    _child: Spawned,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, keys: &[&Path]) -> Agent {
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

fn keygen(path: &Path) {
    let out = TestCommand::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f"])
        .arg(path)
        .output();
    assert_ok(&out, "ssh-keygen");
}

/// The `borg-pull-server: error: ...` line (stderr also carries the debug log).
fn error_line(out: &Outcome) -> String {
    let err = out.stderr_text();
    err.lines()
        .find(|l| l.starts_with("borg-pull-server: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.describe()))
        .to_owned()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_pull_through_one_jump_host_round_trips() {
    let f = Fixture::new();
    let data = f.dir().join("data");
    fs::create_dir(&data).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    fs::write(data.join("file"), &content).unwrap();
    let known_hosts = f.known_hosts("known_hosts", true, true);
    let jump = format!("{}@127.0.0.1:{}", f.sshd.user, f.sshd.port);
    let options = [
        os("-J"),
        os(&jump),
        os("-i"),
        f.sshd.client_key().as_os_str(),
        os("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    let out = f
        .pull(&options, &[os("create"), os("::jumped"), data.as_os_str()])
        .output();
    out.assert_code(0);

    let log = f.sshd.log();
    assert!(
        log.contains("direct-tcpip"),
        "no direct-tcpip open in the sshd log:\n{log}"
    );
    assert!(
        log.contains(&format!("target localhost port {}", f.sshd.port)),
        "the jump host did not connect to the client:\n{log}"
    );
    // Two logins: the jump host and, through it, the client.
    assert_eq!(log.matches("Accepted publickey").count(), 2, "{log}");

    let restore = f.dir().join("restore");
    fs::create_dir(&restore).unwrap();
    let out = TestCommand::new("borg")
        .arg("extract")
        .arg("::jumped")
        .current_dir(&restore)
        .env("BORG_REPO", &f.repo)
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .output();
    assert_ok(&out, "borg extract");
    let extracted = restore.join(data.strip_prefix("/").unwrap()).join("file");
    assert!(fs::read(&extracted).unwrap() == content, "contents differ");
}

#[test]
fn an_unknown_jump_host_key_is_refused_before_anything_runs() {
    let f = Fixture::new();
    // Only the client is known, not the jump host.
    let known_hosts = f.known_hosts("known_hosts.client-only", false, true);
    let jump = format!("127.0.0.1:{}", f.sshd.port);
    let options = [
        os("--jump"),
        os(&jump),
        os("-i"),
        f.sshd.client_key().as_os_str(),
        os("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    let out = f.pull(&options, &["--version"]).output();
    out.assert_code(210);
    let err = error_line(&out);
    assert!(
        err.contains(&format!("[127.0.0.1]:{}", f.sshd.port)),
        "{}",
        out.describe()
    );
    assert!(err.contains("host key verification failed"), "{}", out.describe());
    let log = f.sshd.log();
    assert!(!log.contains("Accepted publickey"), "someone logged in:\n{log}");
    assert!(!log.contains("direct-tcpip"), "{log}");
    assert!(!out.stdout_text().contains("borg "), "{}", out.describe());
}

#[test]
fn the_agents_key_logs_in_without_key_files() {
    let f = Fixture::new();
    let agent = Agent::start(f.dir(), &[f.sshd.client_key()]);
    let known_hosts = f.known_hosts("known_hosts", false, true);
    let mut cmd = f.pull(&[os("--known-hosts"), known_hosts.as_os_str()], &["--version"]);
    let out = cmd.env("SSH_AUTH_SOCK", &agent.socket).output();
    out.assert_code(0);
    assert!(out.stdout_text().starts_with("borg "), "{}", out.describe());
    let fingerprint = f.fingerprint(&f.sshd.client_key().with_extension("pub"));
    let log = f.sshd.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("Accepted publickey"))
        .unwrap_or_else(|| panic!("no login in the sshd log:\n{log}"));
    assert!(accepted.contains(&fingerprint), "{accepted} (want {fingerprint})");

    // Through a jump host too: both logins with the agent's key.
    let known_hosts = f.known_hosts("known_hosts.both", true, true);
    let jump = format!("127.0.0.1:{}", f.sshd.port);
    let options = [os("-J"), os(&jump), os("--known-hosts"), known_hosts.as_os_str()];
    let out = f
        .pull(&options, &["--version"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output();
    out.assert_code(0);
    let log = f.sshd.log();
    assert_eq!(
        log.matches(&format!("Accepted publickey for {}", f.sshd.user))
            .count(),
        3,
        "{log}"
    );

    // An unreachable agent is skipped; without key files that is "no identity", naming the agent.
    let out = f
        .pull(&[os("--known-hosts"), known_hosts.as_os_str()], &["--version"])
        .env("SSH_AUTH_SOCK", f.dir().join("no-agent.sock"))
        .output();
    out.assert_code(211);
    let err = error_line(&out);
    assert!(
        err.contains("no identity given") && err.contains("no-agent.sock"),
        "{err}"
    );
}

#[test]
fn an_identity_given_wins_over_a_working_agent() {
    let f = Fixture::new();
    let agent = Agent::start(f.dir(), &[f.sshd.client_key()]);
    let stranger = f.dir().join("stranger");
    keygen(&stranger);
    let known_hosts = f.known_hosts("known_hosts", false, true);
    let options = [
        os("--identity"),
        stranger.as_os_str(),
        os("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    let out = f
        .pull(&options, &["--version"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output();
    out.assert_code(211);
    let err = error_line(&out);
    assert!(
        err.contains("permission denied") && err.contains("stranger"),
        "{}",
        out.describe()
    );
    assert!(!err.contains("agent"), "the agent was used: {}", out.describe());
    assert!(
        !out.stderr_text().contains("agent key"),
        "the agent was used: {}",
        out.describe()
    );
    assert!(!f.sshd.log().contains("Accepted publickey"), "{}", f.sshd.log());
}

#[test]
fn refused_agent_keys_fall_back_to_the_default_key_file_and_are_named() {
    let f = Fixture::new();
    let stranger = f.dir().join("stranger");
    keygen(&stranger);
    let agent = Agent::start(f.dir(), &[&stranger]);
    let known_hosts = f.known_hosts("known_hosts", false, true);
    let options = [os("--known-hosts"), known_hosts.as_os_str()];

    // Only the agent's (unauthorised) key: refused, and the error says the agent's key was tried.
    let out = f
        .pull(&options, &["--version"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output();
    out.assert_code(211);
    let err = error_line(&out);
    assert!(
        err.contains("permission denied") && err.contains("1 key of the agent"),
        "{err}"
    );

    // With the authorised key as ~/.ssh/id_ed25519: the agent's key first, then the file.
    let default_key = f.home.join(".ssh/id_ed25519");
    fs::copy(f.sshd.client_key(), &default_key).unwrap();
    fs::set_permissions(&default_key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = f
        .pull(&options, &["--version"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output();
    out.assert_code(0);
    let log = f.sshd.log();
    let fingerprint = f.fingerprint(&f.sshd.client_key().with_extension("pub"));
    assert!(
        log.contains(&format!("Accepted publickey for {}", f.sshd.user)),
        "{log}"
    );
    assert!(log.contains(&fingerprint), "{log}");
}

#[test]
fn a_jump_host_that_cannot_reach_the_client_exits_213_naming_both() {
    let f = Fixture::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let known_hosts = f.known_hosts("known_hosts", true, false);
    let jump = format!("127.0.0.1:{}", f.sshd.port);
    let options = [
        os("-J"),
        os(&jump),
        os("-i"),
        f.sshd.client_key().as_os_str(),
        os("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    let out = f.pull_to_port(closed_port, &options, &["--version"]).output();
    out.assert_code(213);
    let err = error_line(&out);
    assert!(
        err.contains(&format!("jump host 127.0.0.1 port {}", f.sshd.port))
            && err.contains(&format!("localhost port {closed_port}")),
        "{err}"
    );
}

#[test]
fn two_comma_separated_jump_hosts_are_passed_in_order() {
    let f = Fixture::new();
    let known_hosts = f.known_hosts("known_hosts", true, true);
    // 127.0.0.1, then localhost (through the first), then the client (through the second).
    let jumps = format!(
        "{user}@127.0.0.1:{port},localhost:{port}",
        user = f.sshd.user,
        port = f.sshd.port
    );
    let options = [
        os("-J"),
        os(&jumps),
        os("-i"),
        f.sshd.client_key().as_os_str(),
        os("--known-hosts"),
        known_hosts.as_os_str(),
    ];
    let out = f.pull(&options, &["--version"]).output();
    out.assert_code(0);
    assert!(out.stdout_text().starts_with("borg "), "{}", out.describe());
    let log = f.sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 3, "{log}");
    assert_eq!(
        log.matches(&format!("target localhost port {}", f.sshd.port))
            .count(),
        2,
        "{log}"
    );

    // A malformed jump host is a usage error, before anything connects.
    let out = f.pull(&[os("-J"), os("host:0")], &["--version"]).output();
    out.assert_code(200);
    assert!(out.stderr_text().contains("host:0"), "{}", out.describe());
}
