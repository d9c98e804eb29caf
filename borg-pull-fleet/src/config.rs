//! The fleet config: a TOML file with a `[server]` table, a `[defaults]` table and one
//! `[[client]]` entry per client. Every client key but `name` may be set in `[defaults]`; a
//! client's own value wins. Unknown keys and wrong types are errors naming the file, line and key.
//!
//! ```toml
//! [server]
//! state_dir = "/var/lib/borg-pull"        # last results per client (status, checks)
//! prometheus = "/var/lib/node_exporter/textfile/borg_pull.prom"
//! jobs = 4
//!
//! [defaults]
//! user = "root"
//! identity = "/etc/borg-pull/id_ed25519"
//! args = ["create", "--stats", "::{hostname}-{now}", "/etc", "/home"]
//! passphrase_file = "/etc/borg-pull/passphrase"
//! prune = { keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }
//! compact = true
//! check_every_days = 7
//! max_age = "36h"
//!
//! [[client]]
//! name = "web1"
//! host = "web1.example.org"
//! repo = "/srv/borg/web1"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::retention::{CheckPolicy, Retention};

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The file it came from.
    pub path: PathBuf,
    /// Settings of this server.
    pub server: ServerSettings,
    /// The clients, in file order, with `[defaults]` applied.
    pub clients: Vec<Client>,
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the last run's result per client is kept (`/var/lib/borg-pull`).
    pub state_dir: PathBuf,
    /// The node_exporter textfile `run` and `status` write, if any.
    pub prometheus: Option<PathBuf>,
    /// Clients pulled at once unless `--jobs` says otherwise (4).
    pub jobs: usize,
    /// The borg program on this server (`borg serve`, prune, compact, check, list).
    pub borg: PathBuf,
}

/// One client with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Unique name (letters, digits, `.`, `_`, `-`): output prefix, state file, metrics label.
    pub name: String,
    /// Host name, address or `~/.ssh/config` alias.
    pub host: String,
    /// sshd port (22, or the ssh config's `Port`).
    pub port: u16,
    /// Login user (the ssh config's `User`, else the current user).
    pub user: Option<String>,
    /// Private key (the ssh config's first `IdentityFile`, else OpenSSH's defaults / the agent).
    pub identity: Option<PathBuf>,
    /// known_hosts file (`~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key on first contact.
    pub accept_new_host_key: bool,
    /// The relay on the client (`borg-pull-relay`).
    pub relay: Option<String>,
    /// borg on the client (`borg`).
    pub remote_borg: Option<String>,
    /// The repository on this server (absolute).
    pub repo: PathBuf,
    /// `socket`, `agent` or `tcp` and the agent/TCP options.
    pub via: ViaConfig,
    /// Jump hosts, first hop first (`-J`; the ssh config's `ProxyJump`).
    pub jump: Vec<String>,
    /// Extra environment for borg on the client.
    pub env: BTreeMap<String, String>,
    /// borg's arguments on the client, e.g. `["create", "::{hostname}-{now}", "/etc"]`.
    pub args: Vec<String>,
    /// Where the repository passphrase comes from (also used by retention and status here).
    pub passphrase: PassphraseSource,
    /// `--max-runtime` (24 h).
    pub max_runtime: Duration,
    /// A storage quota for the client's `borg serve` (socket method).
    pub storage_quota: Option<String>,
    /// `prune` after a successful create (nothing when every `keep_*` is unset).
    pub prune: Retention,
    /// `compact` after a successful prune.
    pub compact: bool,
    /// When to run `borg check` after a successful create.
    pub check: CheckPolicy,
    /// A newest archive older than this makes `status` flag the client (36 h).
    pub max_age: Duration,
}

/// `via = "socket" | "agent" | "tcp"` and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ViaConfig {
    /// The default: forwarded socket and relay.
    #[default]
    Socket,
    /// `via = "agent"` or `"tcp"` with `server_ssh`, `agent_key` or `ephemeral_key`,
    /// `server_host_key`.
    Agent {
        /// TCP instead of the agent method.
        tcp: bool,
        /// `USER@HOST[:PORT]`.
        server_ssh: String,
        /// The agent key file; `None`: an ephemeral key.
        agent_key: Option<PathBuf>,
        /// The server user's authorized_keys for ephemeral keys.
        authorized_keys: Option<PathBuf>,
        /// This server's public host key file.
        server_host_key: PathBuf,
    },
}

/// `passphrase_file` or `passcommand` (never the passphrase itself in the config).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PassphraseSource {
    /// Unencrypted repository, or BORG_PASSPHRASE/BORG_PASSCOMMAND of the `run` process.
    #[default]
    Inherited,
    /// First line of this file (0600).
    File(PathBuf),
    /// Output of this command (run by `sh -c`, like BORG_PASSCOMMAND).
    Command(String),
}
