//! End-to-end tests of `pull --via agent` and `pull --via tcp` (borg's docs' ssh-agent and
//! `ssh -R 8022:localhost:22` methods) against a real OpenSSH sshd and real borg.
//!
//! One sshd plays both sides: pull logs in to it as the client (the fixture's login key), and the
//! client's own `ssh` logs back in to it as the server with the agent key, whose
//! `authorized_keys` line forces `borg serve`. The forced command runs a wrapper that records its
//! argv (so the tests see what really ran) and gives borg serve a state directory of its own.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::{Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

const PASSPHRASE: &str = "agent 'method' $(pass)";

/// The sshd, a repository owned by its login user, the agent key, both wrappers and some data.
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    /// Written by the login user: wrapper records, borg state of both sides.
    work: PathBuf,
    data: PathBuf,
    agent_key: PathBuf,
    /// `borg serve` as the forced command runs it: records its argv in `work/serve-argv`.
    serve_borg: PathBuf,
    /// borg on the client: records what the forwarded agent allows, may wait for `work/hold`.
    client_borg: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(SshdOptions::default())
    }

    fn with(options: SshdOptions) -> Fixture {
        let sshd = Sshd::start_with(options);
        let d = sshd.dir.path().to_owned();
        let work = d.join("work");
        let data = d.join("data");
        fs::create_dir(&work).unwrap();
        fs::create_dir(&data).unwrap();
        write_data(&data);
        let agent_key = d.join("agent_key");
        keygen(&agent_key);
        let serve_borg = d.join("serve-borg");
        script(
            &serve_borg,
            &format!(
                "[ \"$1\" = --version ] || printf '%s\\n' \"$*\" >>'{w}/serve-argv'\nBORG_BASE_DIR='{w}/serve-base' exec borg \"$@\"\n",
                w = work.display()
            ),
        );
        // A key the client's user may try to add to the forwarded agent (ssh-add wants it 0600
        // and its own).
        let other_key = work.join("other_key");
        keygen(&other_key);
        let client_borg = d.join("client-borg");
        let askpass = d.join("askpass");
        script(&askpass, "echo lockpw\n");
        // Waits (bounded) while work/hold exists, so tests can look at a running pull.
        script(
            &client_borg,
            &format!(
                "[ \"$1\" = --version ] && exec borg --version\n\
                 w='{w}'\nprintf '%s\\n' \"$SSH_AUTH_SOCK\" >\"$w/agent-sock\"\n\
                 {{ ssh-add '{other}'; echo \"a=$?\"; ssh-add -D; echo \"D=$?\"; ssh-add -d '{key}.pub'; echo \"d=$?\"; \
                 SSH_ASKPASS='{askpass}' SSH_ASKPASS_REQUIRE=force ssh-add -x; echo \"x=$?\"; \
                 ssh-add -l; echo \"l=$?\"; }} </dev/null >\"$w/agent-checks\" 2>&1\n\
                 n=0; while [ -e \"$w/hold\" ] && [ $n -lt 600 ]; do : >\"$w/started\"; sleep 0.1; n=$((n+1)); done\n\
                 exec borg \"$@\"\n",
                w = work.display(),
                key = agent_key.display(),
                other = other_key.display(),
                askpass = askpass.display(),
            ),
        );
        let f = Fixture {
            repo: d.join("repo"),
            sshd,
            work,
            data,
            agent_key,
            serve_borg,
            client_borg,
        };
        f.init(&f.repo);
        borg_pull_testkit::sshd::chown_to_login_user(&f.work);
        f
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// An encrypted repository, owned by the login user (the forced borg serve runs as it).
    fn init(&self, repo: &Path) {
        let out = self.local_borg(repo, &["init", "-e", "repokey"]);
        assert_ok(&out, "borg init");
        borg_pull_testkit::sshd::chown_to_login_user(repo);
    }

    fn local_borg<S: AsRef<OsStr>>(&self, repo: &Path, args: &[S]) -> Outcome {
        TestCommand::new("borg")
            .args(args)
            .env("BORG_REPO", repo)
            .env("BORG_BASE_DIR", self.dir().join("server-base"))
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .current_dir(self.dir())
            .output()
    }

    /// The agent key's line in authorized_keys, as `authorize` prints it for `repo`.
    fn authorize_agent_key(&self, repo: &Path) {
        let out = TestCommand::new(server_bin())
            .arg("authorize")
            .arg("--repo")
            .arg(repo)
            .arg("--borg")
            .arg(&self.serve_borg)
            .arg("--key")
            .arg(self.agent_key.with_extension("pub"))
            .arg("--install")
            .arg("--authorized-keys")
            .arg(self.authorized_keys())
            .output();
        assert_ok(&out, "authorize --install");
    }

    fn authorized_keys(&self) -> PathBuf {
        self.dir().join("authorized_keys")
    }

    /// `pull --via VIA` with `extra` first, then the fixture's options (each unless `extra` gives
    /// it), then `-- borg_args`.
    fn pull<S: AsRef<OsStr>>(&self, via: &str, extra: &[&str], borg_args: &[S]) -> TestCommand {
        let port = self.sshd.port.to_string();
        let server = format!("{}@127.0.0.1:{}", self.sshd.user, self.sshd.port);
        let host_key = self.dir().join("host_key.pub");
        let defaults: [(&str, &OsStr); 8] = [
            ("-p", port.as_ref()),
            ("-i", self.sshd.client_key().as_os_str()),
            ("--known-hosts", self.sshd.known_hosts.as_os_str()),
            ("--repo", self.repo.as_os_str()),
            ("--borg", self.serve_borg.as_os_str()),
            ("--remote-borg", self.client_borg.as_os_str()),
            ("--server-ssh", server.as_ref()),
            ("--server-host-key", host_key.as_os_str()),
        ];
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull").args(["--via", via]).args(extra);
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.arg("--env")
            .arg(format!("BORG_BASE_DIR={}/client-base", self.work.display()))
            .arg(self.sshd.destination())
            .arg("--")
            .args(borg_args)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    fn create(&self, via: &str, extra: &[&str], archive: &str) -> TestCommand {
        let target = format!("::{archive}");
        self.pull(
            via,
            extra,
            &["create", target.as_str(), self.data.to_str().unwrap()],
        )
    }

    fn work_file(&self, name: &str) -> String {
        fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }

    /// Every file of the data set comes back byte for byte from `archive`.
    fn assert_archive_matches(&self, repo: &Path, archive: &str) {
        for entry in fs::read_dir(&self.data).unwrap() {
            let path = entry.unwrap().path();
            let inside = path.strip_prefix("/").unwrap();
            let out = self.local_borg(
                repo,
                &[
                    OsStr::new("extract"),
                    OsStr::new("--stdout"),
                    OsStr::new(&format!("::{archive}")),
                    inside.as_os_str(),
                ],
            );
            assert_ok(&out, "borg extract --stdout");
            assert!(
                out.stdout == fs::read(&path).unwrap(),
                "{} differs",
                path.display()
            );
        }
    }

    /// The fingerprint `ssh-keygen -l` gives the agent key (what sshd logs on acceptance).
    fn agent_fingerprint(&self) -> String {
        let out = TestCommand::new("ssh-keygen")
            .arg("-lf")
            .arg(self.agent_key.with_extension("pub"))
            .output();
        assert_ok(&out, "ssh-keygen -lf");
        out.stdout_text().split_whitespace().nth(1).unwrap().to_owned()
    }

    /// Nothing of this test runs any more and no private directory is left on the client.
    fn assert_clean(&self) {
        borg_pull_testkit::assert_no_process_mentions(self.dir());
        // The client's watcher removes the private directory within a second of borg's exit
        // (it polls), so its removal is waited for, bounded, like the processes.
        borg_pull_testkit::wait_until("the private directory on the client to go", || {
            self.sshd.tmpdir_entries().is_empty()
        });
    }
}

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
    fs::write(dir.join("small"), b"hello from the client\n").unwrap();
    fs::write(dir.join("it's \"quoted\" $HOME"), noise(10_000)).unwrap();
    fs::write(dir.join("big"), noise(2 << 20)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn keygen(path: &Path) {
    let out = TestCommand::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f"])
        .arg(path)
        .output();
    assert_ok(&out, "ssh-keygen");
    // The client's borg reads the .pub in its agent checks.
    fs::set_permissions(path.with_extension("pub"), fs::Permissions::from_mode(0o644)).unwrap();
}

fn archives(f: &Fixture, repo: &Path) -> String {
    let out = f.local_borg(repo, &["list", "--short"]);
    assert_ok(&out, "borg list");
    out.stdout_text()
}

#[test]
fn agent_method_backs_up_through_the_forced_command_with_the_agent_key() {
    let f = Fixture::new();
    f.authorize_agent_key(&f.repo);
    let key = f.agent_key.to_str().unwrap();
    let out = f.create("agent", &["--agent-key", key], "via-agent").output();
    out.assert_code(0);
    f.assert_archive_matches(&f.repo, "via-agent");
    // What ran on the server is the forced command, not what borg on the client asked for.
    let argv = f.work_file("serve-argv");
    let expected = format!(
        "serve --append-only --restrict-to-repository {}",
        f.repo.display()
    );
    assert_eq!(argv.lines().collect::<Vec<_>>(), [expected.as_str()], "{argv}");
    let log = f.sshd.log();
    assert!(
        log.contains(&format!("Accepted publickey for {}", f.sshd.user))
            && log.contains(&f.agent_fingerprint()),
        "sshd did not log the agent key {}:\n{log}",
        f.agent_fingerprint()
    );
    // The forwarded agent listed the key and refused add, remove-all, remove and lock.
    let checks = f.work_file("agent-checks");
    for refused in ["a=1", "D=1", "d=1", "x=1"] {
        assert!(checks.contains(refused), "{refused} missing in:\n{checks}");
    }
    assert!(
        checks.contains(&f.agent_fingerprint()) && checks.contains("l=0"),
        "{checks}"
    );
    // The agent socket sshd made on the client is gone with the session.
    let sock = f.work_file("agent-sock");
    assert!(!sock.trim().is_empty());
    borg_pull_testkit::wait_until("the client's agent socket to go", || {
        !Path::new(sock.trim()).exists()
    });
    // Every signature is logged with the key's fingerprint; the routine session-bind is no warning.
    let log = out.stderr_text();
    assert!(
        log.contains("agent: signed with the key") && log.contains(&f.agent_fingerprint()),
        "{}",
        out.describe()
    );
    assert!(!log.contains("session-bind"), "{}", out.describe());
    f.assert_clean();
}

#[test]
fn tcp_method_listens_only_on_the_clients_loopback_and_cancels_the_forward() {
    let f = Fixture::new();
    f.authorize_agent_key(&f.repo);
    fs::write(f.work.join("hold"), "").unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&f.work);
    let key = f.agent_key.to_str().unwrap();
    let mut cmd = f.create("tcp", &["--agent-key", key], "via-tcp");
    let mut pull = cmd.spawn(f.dir().join("pull.log"));
    borg_pull_testkit::wait_until("borg to start on the client", || {
        pull.assert_running();
        f.work.join("started").exists()
    });
    let sessions = borg_pull_testkit::descendants(f.sshd.pid());
    let forwards: Vec<String> = listeners()
        .into_iter()
        .filter(|(_, pid)| sessions.contains(pid))
        .map(|(addr, _)| addr)
        .collect();
    assert_eq!(forwards.len(), 1, "sshd's listeners for us: {forwards:?}");
    assert!(forwards[0].starts_with("127.0.0.1:"), "{forwards:?}");
    fs::remove_file(f.work.join("hold")).unwrap();
    let status = pull.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", pull.report());
    f.assert_archive_matches(&f.repo, "via-tcp");
    assert!(
        !listeners().iter().any(|(addr, _)| addr == &forwards[0]),
        "the forward {} still listens",
        forwards[0]
    );
    f.assert_clean();
}

/// Listening TCP sockets with their owning pid (`ss -Hltnp`).
fn listeners() -> Vec<(String, u32)> {
    let out = TestCommand::new("ss").args(["-Hltnp"]).output();
    assert_ok(&out, "ss -Hltnp");
    out.stdout_text()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(3)?.to_string();
            let pid = line.split("pid=").nth(1)?.split(',').next()?.parse().ok()?;
            Some((addr, pid))
        })
        .collect()
}

#[test]
fn ephemeral_key_is_gone_after_success_failure_and_a_killed_run() {
    let f = Fixture::new();
    let original = fs::read_to_string(f.authorized_keys()).unwrap();
    let ak = f.authorized_keys();
    let ephemeral = ["--ephemeral-key", "--authorized-keys", ak.to_str().unwrap()];
    // Success.
    f.create("agent", &ephemeral, "first").output().assert_code(0);
    assert_eq!(fs::read_to_string(&ak).unwrap(), original);
    assert_eq!(f.work_file("serve-argv").lines().count(), 1);
    // Failure: borg fails on the client (no such source path).
    let out = f
        .pull("agent", &ephemeral, &["create", "::second", "/nonexistent/path"])
        .output();
    assert_ne!(out.status.code(), Some(0), "{}", out.describe());
    assert_eq!(fs::read_to_string(&ak).unwrap(), original);
    // Killed while borg runs: the entry stays, the next run removes it.
    fs::write(f.work.join("hold"), "").unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&f.work);
    let mut cmd = f.create("agent", &ephemeral, "killed");
    let mut pull = cmd.spawn(f.dir().join("pull-killed.log"));
    borg_pull_testkit::wait_until("borg to start on the client", || {
        pull.assert_running();
        f.work.join("started").exists()
    });
    assert!(fs::read_to_string(&ak).unwrap().contains("borg-pull-ephemeral"));
    pull.signal("KILL");
    pull.wait_exit();
    fs::remove_file(f.work.join("hold")).unwrap();
    assert!(fs::read_to_string(&ak).unwrap().contains("borg-pull-ephemeral"));
    let out = f.create("agent", &ephemeral, "after-kill").output();
    out.assert_code(0);
    assert_eq!(fs::read_to_string(&ak).unwrap(), original, "{}", out.describe());
    assert!(
        out.stderr_text().contains("removed ephemeral keys left behind"),
        "{}",
        out.describe()
    );
    assert!(archives(&f, &f.repo).contains("after-kill"));
    f.assert_clean();
}

/// The client's ssh refuses a host key other than `--server-host-key`: named from ssh's own log
/// (not borg's "Connection closed by remote host", which it often printed instead), exit 210;
/// for both methods that use the client's ssh.
mod a_wrong_server_host_key_stops_the_clients_ssh_before_borg_serve_runs {
    use super::*;

    #[test]
    fn via_agent() {
        case("agent");
    }

    #[test]
    fn via_tcp() {
        case("tcp");
    }

    fn case(via: &str) {
        let f = Fixture::new();
        f.authorize_agent_key(&f.repo);
        let other = f.dir().join("other_host_key");
        keygen(&other);
        let key = f.agent_key.to_str().unwrap();
        let other_pub = other.with_extension("pub");
        let out = f
            .create(
                via,
                &[
                    "--agent-key",
                    key,
                    "--server-host-key",
                    other_pub.to_str().unwrap(),
                ],
                "never",
            )
            .output();
        out.assert_code(210);
        let err = out.stderr_text();
        assert!(
            err.contains("refused the server's host key")
                && err.contains("Host key verification failed")
                && err.contains("--server-host-key"),
            "{}",
            out.describe()
        );
        assert_eq!(f.work_file("serve-argv"), "", "borg serve ran");
        assert!(
            !f.sshd.log().contains(&f.agent_fingerprint()),
            "the agent key was offered"
        );
        f.assert_clean();
    }
}

/// The agent key is not in the server user's authorized_keys: exit 211, named.
#[test]
fn an_agent_key_the_server_does_not_authorise_is_named() {
    let f = Fixture::new();
    let key = f.agent_key.to_str().unwrap();
    let out = f.create("agent", &["--agent-key", key], "never").output();
    out.assert_code(211);
    let err = out.stderr_text();
    assert!(
        err.contains("was refused the agent key") && err.contains("Permission denied (publickey)"),
        "{}",
        out.describe()
    );
    assert_eq!(f.work_file("serve-argv"), "", "borg serve ran");
    f.assert_clean();
}

/// A TCP port on 127.0.0.1 that refuses connections while the returned socket lives: bound, never
/// listening (so no other test can take it meanwhile).
fn refusing_port() -> (rustix::fd::OwnedFd, u16) {
    use rustix::net::{bind, getsockname, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(
        &fd,
        &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
    )
    .unwrap();
    let addr = std::net::SocketAddr::try_from(getsockname(&fd).unwrap()).unwrap();
    (fd, addr.port())
}

/// Nothing listens at `--server-ssh`'s port: exit 213, named; for the agent method from the client
/// ssh's log, for the TCP method from our bridge to the server's sshd.
mod a_server_sshd_that_refuses_connections_is_named {
    use super::*;

    #[test]
    fn via_agent() {
        case("agent");
    }

    #[test]
    fn via_tcp() {
        case("tcp");
    }

    fn case(via: &str) {
        let f = Fixture::new();
        f.authorize_agent_key(&f.repo);
        let (_socket, port) = refusing_port();
        let server = format!("{}@127.0.0.1:{port}", f.sshd.user);
        let key = f.agent_key.to_str().unwrap();
        let out = f
            .create(via, &["--agent-key", key, "--server-ssh", &server], "never")
            .output();
        out.assert_code(213);
        let err = out.stderr_text();
        assert!(err.contains("could not connect"), "{}", out.describe());
        if via == "agent" {
            assert!(err.contains("Connection refused"), "{}", out.describe());
        }
        assert_eq!(f.work_file("serve-argv"), "", "borg serve ran");
        f.assert_clean();
    }
}

/// The agent key's forced command is not borg serve (here a program that greets and exits):
/// exit 219, named with the fix.
#[test]
fn a_forced_command_that_is_not_borg_serve_is_named() {
    let f = Fixture::new();
    let not_borg = f.dir().join("not-borg");
    script(&not_borg, "echo 'hello from a forced command'\n");
    let out = TestCommand::new(server_bin())
        .arg("authorize")
        .arg("--repo")
        .arg(&f.repo)
        .arg("--borg")
        .arg(&not_borg)
        .arg("--key")
        .arg(f.agent_key.with_extension("pub"))
        .arg("--install")
        .arg("--authorized-keys")
        .arg(f.authorized_keys())
        .output();
    assert_ok(&out, "authorize --install");
    let key = f.agent_key.to_str().unwrap();
    let out = f.create("agent", &["--agent-key", key], "never").output();
    out.assert_code(219);
    let err = out.stderr_text();
    assert!(
        err.contains("does not speak borg's protocol") && err.contains("authorize"),
        "{}",
        out.describe()
    );
    assert_eq!(archives(&f, &f.repo), "");
    f.assert_clean();
}

#[test]
fn another_repository_than_the_forced_one_is_refused() {
    let f = Fixture::new();
    f.authorize_agent_key(&f.repo);
    let other = f.dir().join("other repo");
    f.init(&other);
    let key = f.agent_key.to_str().unwrap();
    let out = f
        .create(
            "agent",
            &["--agent-key", key, "--repo", other.to_str().unwrap()],
            "elsewhere",
        )
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(out.stderr_text().contains("not allowed"), "{}", out.describe());
    assert_eq!(archives(&f, &other), "");
    assert_eq!(archives(&f, &f.repo), "");
    f.assert_clean();
}

#[test]
fn a_client_that_does_not_forward_the_agent_is_named_with_its_setting() {
    let f = Fixture::with(SshdOptions {
        authorized_keys_options: "restrict,port-forwarding ",
        ..SshdOptions::default()
    });
    f.authorize_agent_key(&f.repo);
    let key = f.agent_key.to_str().unwrap();
    let out = f.create("agent", &["--agent-key", key], "none").output();
    out.assert_code(214);
    assert!(
        out.stderr_text().contains("agent-forwarding"),
        "{}",
        out.describe()
    );
    assert_eq!(f.work_file("serve-argv"), "");
    f.assert_clean();
}

#[test]
fn via_options_are_checked_before_connecting() {
    let f = TestCommand::new(server_bin())
        .args([
            "pull",
            "--via",
            "agent",
            "--repo",
            "/r",
            "u@127.0.0.1",
            "--",
            "list",
        ])
        .output();
    f.assert_code(200);
    assert!(f.stderr_text().contains("--server-ssh"), "{}", f.describe());
    let f = TestCommand::new(server_bin())
        .args([
            "pull",
            "--agent-key",
            "/k",
            "--server-ssh",
            "u@h",
            "--repo",
            "/r",
            "u@127.0.0.1",
            "--",
            "list",
        ])
        .output();
    f.assert_code(200);
    let f = TestCommand::new(server_bin())
        .args([
            "pull",
            "--via",
            "tcp",
            "--ephemeral-key",
            "--authorized-keys",
            "/nonexistent/ak",
            "--server-ssh",
            "u@h",
            "--server-host-key",
            "/nonexistent/key.pub",
            "--repo",
            "/r",
            "u@127.0.0.1",
            "--",
            "list",
        ])
        .output();
    f.assert_code(200);
    assert!(
        f.stderr_text().contains("/nonexistent/key.pub"),
        "{}",
        f.describe()
    );
    // A quota pull cannot enforce (the forced command runs borg serve) is refused, not ignored.
    let f = TestCommand::new(server_bin())
        .args([
            "pull",
            "--via",
            "agent",
            "--agent-key",
            "/k",
            "--server-ssh",
            "u@h",
        ])
        .args([
            "--storage-quota",
            "1G",
            "--repo",
            "/r",
            "u@127.0.0.1",
            "--",
            "list",
        ])
        .output();
    f.assert_code(200);
    assert!(
        f.stderr_text().contains("--storage-quota needs --via socket"),
        "{}",
        f.describe()
    );
    // A relay that agent/tcp would never use is refused, not silently skipped.
    let f = TestCommand::new(server_bin())
        .args(["pull", "--via", "tcp", "--agent-key", "/k", "--server-ssh", "u@h"])
        .args(["--install-relay", "--repo", "/r", "u@127.0.0.1", "--", "list"])
        .output();
    f.assert_code(200);
    assert!(
        f.stderr_text().contains("--install-relay needs --via socket"),
        "{}",
        f.describe()
    );
}
