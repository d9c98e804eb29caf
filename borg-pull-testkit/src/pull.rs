//! The pull fixture: an sshd (the client), a repository and borg state dirs for both ends, and
//! `borg-pull-server pull` pointed at them.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use crate::sshd::{chown_to_login_user, Sshd};
use crate::{reachable_relay, server_bin, TestCommand};

/// An sshd plus a repository path on "the server" and borg state dirs for both ends; the
/// repository is not created (tests init it as they need: encrypted, by another borg).
pub struct PullFixture {
    /// The client's sshd; everything of the test lives in its directory.
    pub sshd: Sshd,
    /// The repository on the server (`DIR/repo`).
    pub repo: PathBuf,
    /// The server's BORG_BASE_DIR.
    pub server_base: PathBuf,
    /// The client's BORG_BASE_DIR, owned by the login user; its name has a space, which every
    /// quoting on the way to the client must survive.
    pub client_base: PathBuf,
    /// The relay, where the client's login user can run it (see [`reachable_relay`]).
    pub relay: PathBuf,
}

impl PullFixture {
    /// The fixture around `sshd`.
    pub fn new(sshd: Sshd) -> Self {
        let d = sshd.dir.path().to_owned();
        let f = Self {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            client_base: d.join("client base"),
            relay: reachable_relay(&d),
            sshd,
        };
        fs::create_dir(&f.client_base).unwrap();
        chown_to_login_user(&f.client_base);
        f
    }

    /// The test's directory (the sshd's).
    pub fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    /// `borg-pull-server pull OPTIONS` with this fixture's `-p`, `-i`, `--known-hosts`, `--relay`
    /// and `--repo` unless `options` (`--flag` or `--flag VALUE`) gives one, the client's borg
    /// state dir, then `--` and `borg_args`. No passphrase: callers that need one add it.
    pub fn pull_with<O: AsRef<OsStr>, S: AsRef<OsStr>>(&self, options: &[O], borg_args: &[S]) -> TestCommand {
        let given = |flag: &str| options.iter().any(|o| o.as_ref() == flag);
        let port = self.sshd.port.to_string();
        let defaults: [(&str, &OsStr); 5] = [
            ("-p", OsStr::new(&port)),
            ("-i", self.sshd.client_key().as_os_str()),
            ("--known-hosts", self.sshd.known_hosts.as_os_str()),
            ("--relay", self.relay.as_os_str()),
            ("--repo", self.repo.as_os_str()),
        ];
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("pull").args(options);
        for (flag, value) in defaults {
            if !given(flag) {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.arg("--env")
            .arg(format!("BORG_BASE_DIR={}", self.client_base.display()))
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

    /// borg on the server with the server's borg state (no repository or passphrase set).
    pub fn server_borg<S: AsRef<OsStr>>(&self, args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new("borg");
        cmd.args(args)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO");
        cmd
    }
}
