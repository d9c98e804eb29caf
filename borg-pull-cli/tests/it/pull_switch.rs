//! Switching one client's repository between the three methods (`--via socket`, `agent`, `tcp`)
//! and between server addresses, against a real OpenSSH sshd and real borg on both ends.
//!
//! borg remembers where it last saw a repository (in the client's security directory) and asks
//! "previously located at ... Do you want to continue?" when the URL changes; in a pull nobody
//! answers, so borg aborts. Every method therefore gives borg the same URL,
//! `ssh://borg-pull-server/REPO`, and the agent and TCP methods hand the real address to the
//! client's ssh as options. The test makes every switch between the methods on one repository,
//! with one client borg state directory, and each pull must succeed without the question.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

const PASSPHRASE: &str = "switch 'method' $(pass)";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// One sshd playing client and server, one encrypted repository owned by its login user, and
/// borg serve run as that user whatever the method (so files written by one method's borg serve
/// stay writable for the others').
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    work: PathBuf,
    data: PathBuf,
    relay: PathBuf,
    agent_key: PathBuf,
    /// borg serve as the forced command runs it (as the login user).
    serve_borg: PathBuf,
    /// borg serve as `pull --via socket` runs it: the same, switched to the login user first.
    socket_serve_borg: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let work = d.join("work");
        let data = d.join("data");
        fs::create_dir(&work).unwrap();
        fs::create_dir(&data).unwrap();
        fs::write(data.join("file"), b"the same data, whatever the method\n").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        let relay = borg_pull_testkit::reachable_relay(&d);
        let bin = relay.parent().unwrap().to_owned();
        let agent_key = d.join("agent_key");
        let out = TestCommand::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f"])
            .arg(&agent_key)
            .output();
        assert_ok(&out, "ssh-keygen");
        let serve_borg = bin.join("serve-borg");
        script(
            &serve_borg,
            &format!("BORG_BASE_DIR='{}/serve-base' exec borg \"$@\"\n", work.display()),
        );
        let socket_serve_borg = bin.join("socket-serve-borg");
        let switch = if is_root() {
            format!(
                "setpriv --reuid={u} --regid={u} --init-groups -- ",
                u = borg_pull_testkit::sshd::TEST_USER
            )
        } else {
            String::new()
        };
        script(
            &socket_serve_borg,
            &format!("exec {switch}'{}' \"$@\"\n", serve_borg.display()),
        );
        let f = Fixture {
            repo: d.join("repo"),
            sshd,
            work,
            data,
            relay,
            agent_key,
            serve_borg,
            socket_serve_borg,
        };
        let out = f.local_borg(&["init", "-e", "repokey"]);
        assert_ok(&out, "borg init");
        borg_pull_testkit::sshd::chown_to_login_user(&f.repo);
        borg_pull_testkit::sshd::chown_to_login_user(&f.work);
        let out = TestCommand::new(server_bin())
            .arg("authorize")
            .arg("--repo")
            .arg(&f.repo)
            .arg("--borg")
            .arg(&f.serve_borg)
            .arg("--key")
            .arg(f.agent_key.with_extension("pub"))
            .arg("--install")
            .arg("--authorized-keys")
            .arg(f.dir().join("authorized_keys"))
            .output();
        assert_ok(&out, "authorize --install");
        f
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    fn local_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        TestCommand::new("borg")
            .args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", self.dir().join("server-base"))
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .current_dir(self.dir())
            .output()
    }

    /// `pull --via VIA` creating `archive`; `server_host` is how `--server-ssh` names the
    /// server's sshd (agent and TCP methods).
    fn create(&self, via: &str, server_host: &str, archive: &str) -> Outcome {
        let port = self.sshd.port.to_string();
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull")
            .args(["--via", via])
            .args(["-p", &port])
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--repo")
            .arg(&self.repo);
        if via == "socket" {
            cmd.arg("--relay")
                .arg(&self.relay)
                .arg("--borg")
                .arg(&self.socket_serve_borg);
        } else {
            cmd.arg("--borg")
                .arg(&self.serve_borg)
                .arg("--agent-key")
                .arg(&self.agent_key)
                .arg("--server-ssh")
                .arg(format!("{}@{server_host}:{}", self.sshd.user, self.sshd.port))
                .arg("--server-host-key")
                .arg(self.dir().join("host_key.pub"));
        }
        cmd.arg("--env")
            .arg(format!("BORG_BASE_DIR={}/client-base", self.work.display()))
            .arg(self.sshd.destination())
            .arg("--")
            .args(["create", &format!("::{archive}")])
            .arg(&self.data)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path())
            .output()
    }

    /// Where the client's borg recorded the repository's location (its security directory).
    fn recorded_locations(&self) -> Vec<String> {
        let security = self.work.join("client-base/.config/borg/security");
        let mut found = Vec::new();
        for entry in fs::read_dir(&security).unwrap() {
            let location = entry.unwrap().path().join("location");
            found.push(fs::read_to_string(location).unwrap_or_default());
        }
        found
    }
}

/// socket, agent, tcp, socket, tcp, agent, socket: every one of the six switches between the
/// methods, then the agent method with the server's sshd named otherwise (localhost instead of
/// 127.0.0.1). Each pull succeeds without borg's relocation question and all archives are there.
#[test]
fn switching_methods_and_server_addresses_needs_nothing() {
    let f = Fixture::new();
    let runs = [
        ("socket", "127.0.0.1"),
        ("agent", "127.0.0.1"),
        ("tcp", "127.0.0.1"),
        ("socket", "127.0.0.1"),
        ("tcp", "127.0.0.1"),
        ("agent", "127.0.0.1"),
        ("socket", "127.0.0.1"),
        ("agent", "localhost"),
    ];
    let mut archives = Vec::new();
    for (n, (via, host)) in runs.iter().enumerate() {
        let archive = format!("run{n}-{via}-{host}");
        let out = f.create(via, host, &archive);
        assert_eq!(
            out.status.code(),
            Some(0),
            "pull {n} (--via {via}, server {host}) failed:\n{}",
            out.describe()
        );
        assert!(
            !out.stderr_text().contains("previously located"),
            "pull {n} (--via {via}): borg asked about the location:\n{}",
            out.describe()
        );
        archives.push(archive);
    }
    let listed = f.local_borg(&["list", "--short"]);
    assert_ok(&listed, "borg list");
    let listed: Vec<String> = listed.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(listed, archives);
    // One location, the same for every method.
    assert_eq!(
        f.recorded_locations(),
        [format!("ssh://borg-pull-server{}", f.repo.display())]
    );
    borg_pull_testkit::assert_no_process_mentions(f.dir());
    borg_pull_testkit::wait_until("the private directories on the client to go", || {
        f.sshd.tmpdir_entries().is_empty()
    });
}
