//! How borg on the client reaches `borg serve` on this server: the three methods of borg's
//! pull-mode docs that need no root and no SSHFS.
//!
//! - [`Via::Socket`] (recommended): a UNIX socket forwarded into a private directory on the
//!   client, `borg-pull-relay` as `BORG_RSH`, `borg serve` started here with the flags we fix.
//!   Needs only exec and UNIX socket forwarding on the client's sshd, and nothing on the server
//!   but this process.
//! - [`Via::Agent`] (the docs' ssh-agent method): we log in with agent forwarding and answer the
//!   agent channels with an in-process agent holding exactly one key ([`crate::ssh::key_agent`]); borg on
//!   the client runs the client's own `ssh` back to the server's sshd, whose `authorized_keys`
//!   forces `borg serve` for that key. For sites where the client may only reach the server's
//!   sshd, or where `borg serve` must be the server admin's forced command.
//! - [`Via::Tcp`] (the docs' `ssh -R 8022:localhost:22` method): like the agent method, but the
//!   client's ssh reaches the server's sshd through a TCP port we forward on the client's loopback
//!   (`TcpForward`, channels/tcp.rs). For clients whose sshd forbids UNIX socket forwarding but allows
//!   TCP, and which cannot reach the server's sshd themselves.
//!
//! In the agent and TCP methods the client's ssh checks the server's host key against a
//! temporary known_hosts file with that one key (`StrictHostKeyChecking=yes`, never
//! `StrictHostKeyChecking=no` as some recipes do), removed with the private directory.
//!
//! Whatever the method, borg on the client sees the repository as `ssh://borg-pull-server/REPO`:
//! borg remembers a repository's location and will not use it under another without asking, so
//! the agent and TCP methods give the server's address, port and user to the client's ssh as
//! options instead of putting them in the URL. The client's ssh logs to a file in the private
//! directory, which comes back after borg has exited, so a failure is named from what ssh said
//! (host key, authentication, connection, forced command) rather than from borg's guess.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use borg_pull_core::serve::ServeConfig;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{PrivateKey, PublicKey};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::channels::agent::AgentForward;
use crate::channels::Forward as _;
use crate::error::ClientSshCause;
use crate::jobs::pull::script::ClientSshLog;
use crate::local::authorized_keys::{self, EphemeralEntry, ForcedCommand};
use crate::ssh::key_agent::KeyAgent;
use crate::{Error, Result};

/// How borg on the client reaches `borg serve`; see the module documentation.
#[derive(Debug, Clone, Default)]
pub enum Via {
    /// Forwarded UNIX socket and `borg-pull-relay` (recommended).
    #[default]
    Socket,
    /// The client's ssh to the server's sshd, with our forwarded agent.
    Agent(ServerLogin),
    /// The client's ssh to a TCP port forwarded to the server's sshd, with our forwarded agent.
    Tcp(ServerLogin),
    /// No borg on the client: its tree mounted here over SFTP, this server's borg create in it
    /// ([`crate::jobs::sftp_pull`]).
    Sftp(crate::jobs::sftp_pull::SftpVia),
}

impl Via {
    /// The server login of the agent and TCP methods.
    pub(crate) fn server_login(&self) -> Option<&ServerLogin> {
        match self {
            Via::Socket | Via::Sftp(_) => None,
            Via::Agent(login) | Via::Tcp(login) => Some(login),
        }
    }
}

/// How the client's ssh logs in to the server's sshd (agent and TCP methods).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerLogin {
    /// The login user on the server, whose `authorized_keys` forces `borg serve` for the key.
    pub user: String,
    /// The server's sshd as the client reaches it ([`Via::Agent`]) or as this process reaches it
    /// ([`Via::Tcp`], where the client connects to its own loopback).
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The server's host key the client's ssh must see.
    pub host_key: PublicKey,
    /// The key the agent holds.
    pub agent_key: AgentKey,
    /// The ssh program on the client (`ssh`).
    pub ssh: OsString,
}

/// Which key the in-process agent holds.
#[derive(Debug, Clone)]
pub enum AgentKey {
    /// A long-lived key whose `authorized_keys` line on the server forces `borg serve` (see
    /// `borg-pull-server authorize`); loaded from exactly this file.
    File(PathBuf),
    /// A fresh ed25519 key for this one pull, added to this `authorized_keys` file with the
    /// forced command for the duration of the pull and removed afterwards (entries left by a
    /// killed run are removed by the next one).
    Ephemeral {
        /// The server user's `authorized_keys`.
        authorized_keys: PathBuf,
    },
}

impl ServerLogin {
    /// Parses `USER@HOST[:PORT]` (port 22 by default; `[v6]:PORT` for IPv6 addresses).
    pub fn new(server: &str, host_key: PublicKey, agent_key: AgentKey) -> Result<Self> {
        let bad = || Error::InvalidOption(format!("{server:?} is not USER@HOST[:PORT] (the server's sshd)"));
        let (user, rest) = server.rsplit_once('@').ok_or_else(bad)?;
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        if user.is_empty() || host.is_empty() || user.contains(['\n', '\0', ' ']) {
            return Err(bad());
        }
        Ok(Self {
            user: user.to_owned(),
            host,
            port,
            host_key,
            agent_key,
            ssh: "ssh".into(),
        })
    }

    /// The server's host key as the one line of the client's temporary known_hosts file.
    pub(crate) fn known_hosts_line(&self) -> Result<String> {
        let key = self
            .host_key
            .to_openssh()
            .map_err(|e| Error::InvalidOption(format!("cannot encode the server's host key: {e}")))?;
        Ok(format!("{} {key}", crate::jobs::pull::script::SERVER_HOST_ALIAS))
    }
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => 22,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_owned(), 22)),
    }
}

/// Reads the server's public host key (one OpenSSH `.pub` line, e.g.
/// `/etc/ssh/ssh_host_ed25519_key.pub`).
pub fn read_host_key(path: &Path) -> Result<PublicKey> {
    let bad = |why: String| Error::ServerHostKey {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| bad("the file holds no key".into()))?;
    PublicKey::from_openssh(line).map_err(|e| {
        bad(format!(
            "not an OpenSSH public key line ({e}); give the .pub file, e.g. /etc/ssh/ssh_host_ed25519_key.pub"
        ))
    })
}

/// The agent of one run (agent and TCP methods) and, for an ephemeral key, its
/// `authorized_keys` entry; [`RunAgent::finish`] stops the agent and removes the entry.
pub(crate) struct RunAgent {
    pub(crate) forward: Arc<AgentForward>,
    agent: Arc<KeyAgent>,
    public_line: String,
    /// The `authorized_keys` file of an ephemeral key.
    ephemeral: Option<PathBuf>,
    entry: Option<EphemeralEntry>,
}

impl RunAgent {
    /// Loads the key (or makes an ephemeral one); nothing is written and no task started yet.
    pub(crate) fn prepare(login: &ServerLogin) -> Result<Self> {
        let (agent, ephemeral) = match &login.agent_key {
            AgentKey::File(path) => (KeyAgent::load(path, None)?, None),
            AgentKey::Ephemeral { authorized_keys } => {
                (KeyAgent::new(ephemeral_key()?), Some(authorized_keys.clone()))
            }
        };
        let public_line = agent
            .public_key()
            .to_openssh()
            .map_err(|e| Error::InvalidOption(format!("cannot encode the agent key: {e}")))?;
        Ok(Self {
            forward: AgentForward::new(agent.clone()),
            agent,
            public_line,
            ephemeral,
            entry: None,
        })
    }

    /// For an ephemeral key: removes entries left by runs that did not finish, then adds this
    /// run's key with the forced command for `serve`'s repository. Nothing for a key file.
    pub(crate) async fn authorize(&mut self, serve: &ServeConfig) -> Result<()> {
        let Some(file) = self.ephemeral.clone() else {
            return Ok(());
        };
        let forced = ForcedCommand {
            borg: serve.borg.clone().into_os_string(),
            repo: serve.repo.clone(),
            allow_delete: serve.allow_delete,
        };
        let key = self.agent.public_key().clone();
        // File edits under an flock another pull may hold: not on the runtime's threads.
        let edit = move || -> Result<(usize, EphemeralEntry)> {
            let removed = authorized_keys::remove_stale_ephemeral(&file)?;
            Ok((removed, authorized_keys::add_ephemeral(&file, &forced, &key)?))
        };
        let (removed, entry) =
            tokio::task::spawn_blocking(edit)
                .await
                .map_err(|source| Error::BackgroundTask {
                    task: "editing authorized_keys",
                    source,
                })??;
        if removed > 0 {
            warn!(
                removed,
                file = %entry.file().display(),
                "removed ephemeral keys left behind by runs that did not finish"
            );
        }
        info!(file = %entry.file().display(), fingerprint = %self.agent.fingerprint(), "ephemeral key authorised for this pull");
        self.entry = Some(entry);
        Ok(())
    }

    /// The agent key's public half (one OpenSSH line) for the client's ssh `IdentityFile`.
    pub(crate) fn public_line(&self) -> &str {
        &self.public_line
    }

    /// Stops every agent connection and removes the ephemeral key's entry.
    pub(crate) async fn finish(self) {
        self.forward.stop().await;
        if let Some(entry) = self.entry {
            match tokio::task::spawn_blocking(move || entry.remove()).await {
                Ok(Ok(())) => info!("ephemeral key removed from authorized_keys"),
                Ok(Err(e)) => warn!("{}", borg_pull_core::error::Chain(&e)),
                Err(e) => warn!("removing the ephemeral key: {e}"),
            }
        }
    }
}

/// Why the client's ssh did not get borg to `borg serve` (agent and TCP methods), from what it
/// logged (the same causes `pull` names for its own connection), whether the TCP method's bridge
/// failed to reach the server's sshd, and borg's last words; `None` when none of them says.
///
/// ssh's own lines win over borg's guess: borg often reports only "Connection closed by remote
/// host" whatever ssh said, depending on which of ssh's pipes it reads first.
pub(crate) fn client_ssh_cause(log: &ClientSshLog, bridge_failed: bool) -> Option<ClientSshCause> {
    let said = |needles: &[&str]| {
        log.lines.iter().any(|line| {
            let line = String::from_utf8_lossy(line);
            needles.iter().any(|n| line.contains(n))
        })
    };
    if said(&[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    ]) {
        return Some(ClientSshCause::HostKey);
    }
    if said(&["Permission denied (", "Too many authentication failures"]) {
        return Some(ClientSshCause::Auth);
    }
    if bridge_failed
        || said(&[
            "ssh: connect to host ",
            "Could not resolve hostname",
            "Connection timed out during banner exchange",
            "kex_exchange_identification:",
        ])
    {
        return Some(ClientSshCause::Connect);
    }
    // Only when the whole log came back and names nothing: a lost log must not turn a host key
    // failure into a wrong hint about the forced command.
    // ssh's warnings (e.g. OpenSSH 10's "** WARNING: connection is not using a post-quantum key
    // exchange") come with successful logins too; any other line may be the real cause.
    let only_warnings = log.lines.iter().all(|line| {
        let line = String::from_utf8_lossy(line);
        line.trim().is_empty() || line.starts_with("**") || line.starts_with("Warning:")
    });
    let borg = String::from_utf8_lossy(&log.borg_tail);
    if log.complete
        && only_warnings
        && (borg.contains("Is borg working on the server?")
            || borg.contains("Got unexpected RPC data format from server"))
    {
        return Some(ClientSshCause::NotBorgServe);
    }
    None
}

/// A fresh ed25519 key from the kernel's random source.
fn ephemeral_key() -> Result<PrivateKey> {
    let mut seed = Zeroizing::new([0u8; 32]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed[..]))
        .map_err(|source| Error::Io {
            context: "cannot read /dev/urandom for an ephemeral key".into(),
            source,
        })?;
    let keypair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(keypair), "borg-pull ephemeral")
        .map_err(|e| Error::InvalidOption(format!("cannot make an ephemeral key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_parse_as_ssh_does() {
        let key = ephemeral_key().unwrap().public_key().clone();
        let login = |s: &str| ServerLogin::new(s, key.clone(), AgentKey::File("/k".into()));
        let l = login("borg@srv").unwrap();
        assert_eq!((l.user.as_str(), l.host.as_str(), l.port), ("borg", "srv", 22));
        let l = login("b@x@srv.example:2222").unwrap();
        assert_eq!(
            (l.user.as_str(), l.host.as_str(), l.port),
            ("b@x", "srv.example", 2222)
        );
        let l = login("borg@[::1]:22").unwrap();
        assert_eq!(l.host, "::1");
        for bad in ["srv", "@srv", "borg@", "borg@srv:x", "borg@::1", "borg@srv:70000"] {
            assert!(login(bad).is_err(), "{bad}");
        }
        assert!(login("borg@srv")
            .unwrap()
            .known_hosts_line()
            .unwrap()
            .starts_with("borg-pull-server ssh-ed25519 AAAA"));
    }

    #[test]
    fn ephemeral_keys_differ() {
        assert_ne!(
            ephemeral_key().unwrap().public_key(),
            ephemeral_key().unwrap().public_key()
        );
    }

    #[test]
    fn the_client_ssh_cause_comes_from_its_log_before_borgs_guess() {
        let log = |lines: &[&str], complete: bool, borg: &str| ClientSshLog {
            lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
            complete,
            borg_tail: borg.as_bytes().to_vec(),
        };
        let guess = "Connection closed by remote host. Is borg working on the server?\n";
        let cases = [
            (
                log(&["Host key verification failed."], true, guess),
                false,
                Some(ClientSshCause::HostKey),
            ),
            (
                log(&["u@127.0.0.1: Permission denied (publickey)."], true, guess),
                false,
                Some(ClientSshCause::Auth),
            ),
            (
                log(
                    &["ssh: connect to host 127.0.0.1 port 9: Connection refused"],
                    true,
                    guess,
                ),
                false,
                Some(ClientSshCause::Connect),
            ),
            (
                log(
                    &["kex_exchange_identification: Connection closed by remote host"],
                    false,
                    "",
                ),
                false,
                Some(ClientSshCause::Connect),
            ),
            (log(&[], true, guess), true, Some(ClientSshCause::Connect)),
            (log(&[], true, guess), false, Some(ClientSshCause::NotBorgServe)),
            (
                log(
                    &["** WARNING: connection is not using a post-quantum key exchange algorithm."],
                    true,
                    "Got unexpected RPC data format from server:\nhello\n",
                ),
                false,
                Some(ClientSshCause::NotBorgServe),
            ),
            // The log did not come back, or names something else: no guess of ours either.
            (log(&[], false, guess), false, None),
            (log(&["Bad configuration option: x"], true, guess), false, None),
            (log(&[], true, "Repository path not allowed\n"), false, None),
        ];
        for (log, bridge_failed, expected) in cases {
            assert_eq!(client_ssh_cause(&log, bridge_failed), expected, "{log:?}");
        }
    }
}
