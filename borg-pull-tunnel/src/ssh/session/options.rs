//! Where and how to log in ([`SessionOptions`]), with the defaults OpenSSH takes from the
//! environment ([`SshEnv`]): read here, so that nothing above `ssh` needs to know them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::limits::{CHANNEL_WINDOW, KEEPALIVE_INTERVAL};
use crate::local::secret::SecretString;
use crate::ssh::cipher::CipherChoice;
use crate::ssh::jump::JumpHost;
use crate::{Error, Result};

/// The environment OpenSSH takes its defaults from, read in one place
/// ([`SshEnv::from_process`]) so that nothing deeper reads variables behind the caller's back.
#[derive(Clone, Default)]
pub struct SshEnv {
    /// `HOME`: the default known_hosts and identities.
    pub home: Option<PathBuf>,
    /// `USER` (or `LOGNAME`): the login user when the destination names none.
    pub user: Option<String>,
    /// `BORG_PULL_IDENTITY_PASSPHRASE`: the identity's passphrase.
    pub identity_passphrase: Option<OsString>,
    /// `SSH_AUTH_SOCK`: the user's ssh-agent, whose keys are offered when no identity is given.
    pub ssh_auth_sock: Option<PathBuf>,
}

impl std::fmt::Debug for SshEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshEnv")
            .field("home", &self.home)
            .field("user", &self.user)
            .field(
                "identity_passphrase",
                &self.identity_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("ssh_auth_sock", &self.ssh_auth_sock)
            .finish()
    }
}

impl SshEnv {
    /// Reads HOME, USER/LOGNAME, BORG_PULL_IDENTITY_PASSPHRASE and SSH_AUTH_SOCK from this
    /// process's environment.
    pub fn from_process() -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            home: var("HOME").map(PathBuf::from),
            user: var("USER")
                .or_else(|| var("LOGNAME"))
                .and_then(|u| u.into_string().ok()),
            identity_passphrase: std::env::var_os("BORG_PULL_IDENTITY_PASSPHRASE"),
            ssh_auth_sock: var("SSH_AUTH_SOCK").map(PathBuf::from),
        }
    }
}

/// Where and how to log in. Made by [`SessionOptions::new`], [`SessionOptions::with_env`] or
/// [`SessionOptions::from_env`], then changed field by field.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Host name or address of the client.
    pub host: String,
    /// sshd's TCP port (22).
    pub port: u16,
    /// Login user on the client.
    pub user: String,
    /// Private key file; `None` tries the keys of the agent at
    /// [`agent_socket`](Self::agent_socket), then [`default_identities`](Self::default_identities).
    pub identity: Option<PathBuf>,
    /// Keys tried in order when `identity` is `None` and the agent's keys did not get us in (the
    /// first that exists is used); set from HOME by [`SessionOptions::with_env`]:
    /// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub default_identities: Vec<PathBuf>,
    /// The user's ssh-agent (`SSH_AUTH_SOCK`, set by [`SessionOptions::with_env`]): its
    /// keys are offered first when `identity` is `None` (at most
    /// [`MAX_AGENT_KEYS`](crate::limits::MAX_AGENT_KEYS)); an unreachable agent is skipped.
    pub agent_socket: Option<PathBuf>,
    /// Passphrase of an encrypted identity.
    pub identity_passphrase: Option<SecretString>,
    /// The known_hosts file to verify (and, with `accept_new_host_key`, record) host keys.
    pub known_hosts: PathBuf,
    /// Record the key of a host not yet in `known_hosts` (OpenSSH's `accept-new`); a changed or
    /// revoked key is refused regardless.
    pub accept_new_host_key: bool,
    /// Send a keepalive after this long without hearing from the client; after
    /// [`crate::limits::KEEPALIVE_MAX`] unanswered ones the connection counts as lost (like OpenSSH's
    /// `ServerAliveInterval`). [`crate::limits::KEEPALIVE_INTERVAL`] by default.
    pub keepalive_interval: std::time::Duration,
    /// SSH channel window in bytes ([`crate::limits::CHANNEL_WINDOW`] unless measured otherwise).
    pub channel_window: u32,
    /// Jump hosts, first hop first (`ssh -J`): each is reached through a `direct-tcpip` channel of
    /// the one before, its host key verified against `known_hosts` and logged in to with the same
    /// keys (as its own user, or [`user`](Self::user)).
    pub jump: Vec<JumpHost>,
    /// The cipher to offer: [`CipherChoice::Auto`] (the cheaper one for this CPU first) or the one
    /// forced (`--cipher`, `cipher =`); the same for jump hosts.
    pub cipher: CipherChoice,
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("identity", &self.identity)
            .field("default_identities", &self.default_identities)
            .field(
                "identity_passphrase",
                &self.identity_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("known_hosts", &self.known_hosts)
            .field("accept_new_host_key", &self.accept_new_host_key)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("channel_window", &self.channel_window)
            .field("agent_socket", &self.agent_socket)
            .field("jump", &self.jump)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl SessionOptions {
    /// `user@host` on port 22 with no key, agent or known_hosts file set (a caller sets them, or
    /// uses [`SessionOptions::with_env`]). Reads no environment variable.
    pub fn new(host: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: 22,
            user: user.into(),
            identity: None,
            default_identities: Vec::new(),
            identity_passphrase: None,
            agent_socket: None,
            // Checked at connect time, so a caller that sets its own file does not need HOME.
            known_hosts: PathBuf::new(),
            accept_new_host_key: false,
            keepalive_interval: KEEPALIVE_INTERVAL,
            channel_window: CHANNEL_WINDOW,
            jump: Vec::new(),
            cipher: CipherChoice::Auto,
        }
    }

    /// How to reach `destination` (`[USER@]HOST`) with the defaults OpenSSH takes from `env`: the
    /// login user when `destination` names none, `~/.ssh/known_hosts`, `~/.ssh/id_*`, the identity
    /// passphrase and the ssh-agent; port 22.
    pub fn with_env(destination: &str, env: &SshEnv) -> Result<Self> {
        let (user, host) = match destination.rsplit_once('@') {
            Some((user, host)) => (user.to_owned(), host.to_owned()),
            None => (
                env.user
                    .clone()
                    .ok_or_else(|| Error::InvalidOption("no login user: write USER@HOST".into()))?,
                destination.to_owned(),
            ),
        };
        if host.is_empty() || user.is_empty() {
            return Err(Error::InvalidOption(format!(
                "{destination:?} is not [USER@]HOST"
            )));
        }
        let mut options = Self::new(host, user);
        if let Some(home) = &env.home {
            options.known_hosts = home.join(".ssh").join("known_hosts");
            options.default_identities = default_identities(home);
        }
        options.identity_passphrase = match &env.identity_passphrase {
            Some(p) => Some(SecretString::new(p.clone().into_string().map_err(|_| {
                Error::InvalidOption("the identity passphrase is not valid UTF-8".into())
            })?)),
            None => None,
        };
        options.agent_socket = env.ssh_auth_sock.clone();
        Ok(options)
    }

    /// [`SessionOptions::with_env`] with this process's environment ([`SshEnv::from_process`]).
    pub fn from_env(destination: &str) -> Result<Self> {
        Self::with_env(destination, &SshEnv::from_process())
    }
}

/// The keys OpenSSH tries by default, in its order, under `home`.
fn default_identities(home: &Path) -> Vec<PathBuf> {
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_no_environment_unless_asked() {
        let o = SessionOptions::with_env("u@h", &SshEnv::default()).unwrap();
        assert_eq!((o.user.as_str(), o.host.as_str(), o.port), ("u", "h", 22));
        assert!(o.known_hosts.as_os_str().is_empty());
        assert!(o.default_identities.is_empty() && o.agent_socket.is_none());
        for bad in ["host-only", "u@", "@h"] {
            assert!(
                SessionOptions::with_env(bad, &SshEnv::default()).is_err(),
                "{bad}"
            );
        }
        let env = SshEnv {
            home: Some("/home/op".into()),
            user: Some("op".into()),
            identity_passphrase: Some("pw".into()),
            ssh_auth_sock: Some("/run/agent.sock".into()),
        };
        let o = SessionOptions::with_env("h", &env).unwrap();
        assert_eq!(o.user, "op");
        assert_eq!(o.known_hosts, PathBuf::from("/home/op/.ssh/known_hosts"));
        assert_eq!(o.default_identities[0], PathBuf::from("/home/op/.ssh/id_ed25519"));
        assert_eq!(o.agent_socket, Some(PathBuf::from("/run/agent.sock")));
        assert_eq!(
            o.identity_passphrase.as_ref().map(SecretString::as_str),
            Some("pw")
        );
        assert!(!format!("{env:?} {o:?}").contains("pw\""));
    }
}
