//! The fleet config: a TOML file with a `[server]` table, a `[defaults]` table and one
//! `[[client]]` entry per client. Every client key but `name` may be set in `[defaults]`; a
//! client's own value wins. Where a client's `host` is a `~/.ssh/config` alias, its HostName,
//! User, Port, IdentityFile and ProxyJump fill what the client entry and `[defaults]` leave unset
//! (the fleet config wins, as ssh's command line beats its config). Unknown keys and wrong types are errors naming the file, line and key.
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
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borg_pull_tunnel::jobs::pull::{AgentKey, PullEnv, PullOptions, ServerLogin, Via};
use borg_pull_tunnel::local::passphrase::{Passphrase, SecretSources};
use borg_pull_tunnel::ssh::cipher::CipherChoice;
use tokio_util::sync::CancellationToken;

use crate::schedule::{self, Backoff, Hours, Schedule};
use crate::time_text::parse_duration;

mod policy;
mod ssh_config;
pub use policy::{CheckPolicy, Retention};
use ssh_config::read_ssh_config;
pub use ssh_config::{HostSettings, SshConfig};

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The file it came from.
    pub path: PathBuf,
    /// Settings of this server.
    pub server: ServerSettings,
    /// The clients, in file order, with `[defaults]` applied.
    pub clients: Vec<Client>,
    /// The `[notify]` table (empty: no notifications).
    pub notify: crate::notify::NotifyConfig,
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the last run's result per client is kept (`/var/lib/borg-pull`).
    pub state_dir: PathBuf,
    /// The node_exporter textfile `run` (and `status --prometheus`) write, if any.
    pub prometheus: Option<PathBuf>,
    /// Clients pulled at once unless `--jobs` says otherwise (4).
    pub jobs: usize,
    /// The borg program on this server (`borg serve`, prune, compact, check, list).
    pub borg: PathBuf,
    /// The status page `run` writes at its end (and `status --html` without a FILE), if any.
    pub html: Option<PathBuf>,
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
    /// Copy this server's relay (the `borg-pull-relay` beside `run`) into the client's cache
    /// when it has none of this version (`pull --install-relay`).
    pub install_relay: bool,
    /// borg on the client (`borg`).
    pub remote_borg: Option<String>,
    /// The repository on this server (absolute).
    pub repo: PathBuf,
    /// `socket`, `agent` or `tcp` and the agent/TCP options.
    pub via: ViaConfig,
    /// Jump hosts, first hop first (`-J`; the ssh config's `ProxyJump`).
    pub jump: Vec<String>,
    /// The SSH cipher (`auto`: the cheaper one for this CPU first), as `pull --cipher`.
    pub cipher: CipherChoice,
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
    /// When `run --due` pulls it: `every`, `window`, `blackout`, `retry`.
    pub schedule: Schedule,
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
    /// `via = "sftp"`: no borg on the client; its tree mounted here over SFTP.
    Sftp,
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

// ---------------------------------------------------------------------------------------------
// Loading and validation.

/// Why a config cannot be used. `Display` names the file, the line and the key where known,
/// e.g. `fleet.toml line 12: unknown key "keep_daly" in [[client]] web1`, and the cause: it is
/// printed as one line, so it names its cause rather than handing it out as a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file (or the ssh config it names) cannot be read.
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a wrong type, or a value is not allowed.
    #[error("{}{}: {message}", file.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line, where known.
        line: Option<usize>,
        /// The key, where known.
        key: Option<String>,
        /// What is wrong, naming the key and table.
        message: String,
    },
}

/// What kind of problem a [`ConfigError`] is. Not `#[non_exhaustive]`: a new kind must get an
/// exit code in every binary before it compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigErrorKind {
    /// The file (or the ssh config it names) cannot be read.
    Unreadable,
    /// It is not valid TOML, or a key or value is not allowed.
    Invalid,
}

impl ConfigError {
    /// The kind of this error (an exhaustive match: a new variant must be classified).
    pub fn kind(&self) -> ConfigErrorKind {
        match self {
            ConfigError::Io { .. } => ConfigErrorKind::Unreadable,
            ConfigError::Invalid { .. } => ConfigErrorKind::Invalid,
        }
    }
}

/// Reads and validates the config at `path`; `~/.ssh/config` is `$HOME/.ssh/config` unless
/// `[server] ssh_config` names another file.
pub fn load(path: &Path) -> Result<Fleet, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
        path: path.to_owned(),
        cause,
    })?;
    parse(&text, path)
}

/// Parses and validates config `text` read from `path` (used in messages only), with
/// `$HOME/.ssh/config` for host aliases.
pub fn parse(text: &str, path: &Path) -> Result<Fleet, ConfigError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    parse_with_home(text, path, home.as_deref())
}

/// [`parse`] with the home directory given (`None`: no default ssh config).
pub fn parse_with_home(text: &str, path: &Path, home: Option<&Path>) -> Result<Fleet, ConfigError> {
    let cx = Context { text, path };
    let raw: RawFile = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
    let server = raw.server.unwrap_or_default();
    let ssh_config = match (&server.ssh_config, home) {
        (Some(file), _) => Some(read_ssh_config(file, true)?),
        (None, Some(home)) => Some(read_ssh_config(&home.join(".ssh/config"), false)?),
        (None, None) => None,
    }
    .flatten();
    let jobs = server.jobs.unwrap_or(DEFAULT_JOBS);
    if jobs == 0 {
        return Err(cx.at_key(None, "jobs", "[server]", "jobs must be at least 1".into()));
    }
    let settings = ServerSettings {
        state_dir: server
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        prometheus: server.prometheus,
        jobs,
        borg: server.borg.unwrap_or_else(|| PathBuf::from("borg")),
        html: server.html,
    };
    let defaults = raw.defaults.map(|d| (d.span(), d.into_inner()));
    if let Some((span, d)) = &defaults {
        if d.name.is_some() {
            return Err(cx.at_key(
                Some(span.clone()),
                "name",
                "[defaults]",
                "\"name\" is per client: it cannot be in [defaults]".into(),
            ));
        }
    }
    let mut clients: Vec<Client> = Vec::new();
    for entry in raw.client {
        let span = entry.span();
        let raw = entry.into_inner();
        let client = cx.client(
            raw,
            defaults.as_ref().map(|d| &d.1),
            span.clone(),
            ssh_config.as_ref(),
            home,
        )?;
        if let Some(other) = clients.iter().find(|c| c.name == client.name) {
            return Err(cx.at_key(
                Some(span),
                "name",
                &format!("[[client]] {}", client.name),
                format!("the name {:?} is used twice (names must be unique)", other.name),
            ));
        }
        if let Some(other) = clients.iter().find(|c| c.repo == client.repo) {
            return Err(cx.at_key(
                Some(span),
                "repo",
                &format!("[[client]] {}", client.name),
                format!(
                    "repository {} is also {}'s: two clients on one repository would only wait for \
                     each other (borg's repository lock serialises them); give each client its own",
                    client.repo.display(),
                    other.name
                ),
            ));
        }
        clients.push(client);
    }
    let notify = match raw.notify {
        None => crate::notify::NotifyConfig::default(),
        Some(table) => {
            let span = table.span();
            table
                .into_inner()
                .validate()
                .map_err(|(key, message)| cx.at_key(Some(span), key, "[notify]", message))?
        }
    };
    Ok(Fleet {
        path: path.to_owned(),
        server: settings,
        clients,
        notify,
    })
}

/// `[server] jobs` when unset.
pub const DEFAULT_JOBS: usize = 4;
/// `[server] state_dir` when unset.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/borg-pull";
/// `max_runtime` when unset (as `pull --max-runtime`): core's one constant, re-exported.
pub use borg_pull_core::limits::DEFAULT_MAX_RUNTIME;
/// `max_age` when unset: a nightly backup one run late is not yet stale.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(36 * 3600);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<RawServer>,
    defaults: Option<toml::Spanned<RawClient>>,
    #[serde(default)]
    client: Vec<toml::Spanned<RawClient>>,
    notify: Option<toml::Spanned<crate::notify::RawNotify>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    state_dir: Option<PathBuf>,
    prometheus: Option<PathBuf>,
    jobs: Option<usize>,
    borg: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    html: Option<PathBuf>,
}

/// One `[[client]]` entry or `[defaults]` (which may not set `name`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    accept_new_host_key: Option<bool>,
    relay: Option<String>,
    install_relay: Option<bool>,
    remote_borg: Option<String>,
    repo: Option<PathBuf>,
    via: Option<String>,
    server_ssh: Option<String>,
    agent_key: Option<PathBuf>,
    ephemeral_key: Option<bool>,
    authorized_keys: Option<PathBuf>,
    server_host_key: Option<PathBuf>,
    jump: Option<Vec<String>>,
    cipher: Option<String>,
    env: Option<BTreeMap<String, String>>,
    args: Option<Vec<String>>,
    passphrase_file: Option<PathBuf>,
    passcommand: Option<String>,
    max_runtime: Option<String>,
    storage_quota: Option<String>,
    prune: Option<Retention>,
    compact: Option<bool>,
    check_every_runs: Option<u32>,
    check_every_days: Option<u32>,
    max_age: Option<String>,
    every: Option<String>,
    window: Option<String>,
    blackout: Option<Vec<String>>,
    retry: Option<String>,
}

impl RawClient {
    /// This entry with `[defaults]` filling what it does not set (`env` is merged, the client's
    /// variables winning).
    fn with_defaults(self, d: &RawClient) -> RawClient {
        let d = d.clone();
        let (own_file, own_command) = (self.passphrase_file.is_some(), self.passcommand.is_some());
        let env = match (d.env, self.env) {
            (Some(mut base), Some(own)) => {
                base.extend(own);
                Some(base)
            }
            (a, b) => b.or(a),
        };
        RawClient {
            name: self.name,
            host: self.host.or(d.host),
            port: self.port.or(d.port),
            user: self.user.or(d.user),
            identity: self.identity.or(d.identity),
            known_hosts: self.known_hosts.or(d.known_hosts),
            accept_new_host_key: self.accept_new_host_key.or(d.accept_new_host_key),
            relay: self.relay.or(d.relay),
            install_relay: self.install_relay.or(d.install_relay),
            remote_borg: self.remote_borg.or(d.remote_borg),
            repo: self.repo.or(d.repo),
            via: self.via.or(d.via),
            server_ssh: self.server_ssh.or(d.server_ssh),
            agent_key: self.agent_key.or(d.agent_key),
            ephemeral_key: self.ephemeral_key.or(d.ephemeral_key),
            authorized_keys: self.authorized_keys.or(d.authorized_keys),
            server_host_key: self.server_host_key.or(d.server_host_key),
            jump: self.jump.or(d.jump),
            cipher: self.cipher.or(d.cipher),
            env,
            args: self.args.or(d.args),
            // One source of the passphrase: a client's own choice replaces the default's.
            passphrase_file: if own_command {
                self.passphrase_file
            } else {
                self.passphrase_file.or(d.passphrase_file)
            },
            passcommand: if own_file {
                self.passcommand
            } else {
                self.passcommand.or(d.passcommand)
            },
            max_runtime: self.max_runtime.or(d.max_runtime),
            storage_quota: self.storage_quota.or(d.storage_quota),
            prune: self.prune.or(d.prune),
            compact: self.compact.or(d.compact),
            check_every_runs: self.check_every_runs.or(d.check_every_runs),
            check_every_days: self.check_every_days.or(d.check_every_days),
            max_age: self.max_age.or(d.max_age),
            every: self.every.or(d.every),
            window: self.window.or(d.window),
            blackout: self.blackout.or(d.blackout),
            retry: self.retry.or(d.retry),
        }
    }
}

/// The text being parsed, for line numbers and table names in messages.
struct Context<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Context<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The table around `offset`: `[server]`, `[defaults]` or `[[client]] NAME`.
    fn table_at(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let mut start = None;
        for (at, line) in line_starts(before) {
            let t = line.trim_start();
            if t.starts_with('[') {
                start = Some((at, t.trim_end().to_owned()));
            }
        }
        let Some((at, header)) = start else {
            return "the top level".into();
        };
        let header = header.split('#').next().unwrap_or("").trim().to_owned();
        if header.replace(' ', "") != "[[client]]" {
            return header;
        }
        // The entry's name, if it has one: the first `name = "..."` line after the header.
        let rest = &self.text[at..];
        for (i, (_, line)) in line_starts(rest).enumerate() {
            let t = line.trim();
            if i > 0 && t.starts_with('[') {
                break;
            }
            if let Some(value) = t
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|v| v.strip_prefix('='))
            {
                if let Ok(name) = toml::from_str::<toml::Table>(&format!("v = {}", value.trim())) {
                    if let Some(name) = name.get("v").and_then(|v| v.as_str()) {
                        return format!("[[client]] {name}");
                    }
                }
            }
        }
        header
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        let Some(span) = e.span() else {
            return ConfigError::Invalid {
                file: self.path.to_owned(),
                line: None,
                key: None,
                message,
            };
        };
        let line = self.line_of(span.start);
        let table = self.table_at(span.start);
        // serde: "unknown field `keep_daly`, expected one of ...".
        if let Some(key) = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_owned())
        {
            return ConfigError::Invalid {
                file: self.path.to_owned(),
                line: Some(line),
                message: format!("unknown key {key:?} in {table}"),
                key: Some(key),
            };
        }
        // A wrong type or value: the span is the value; its key starts the line.
        let line_text = self.text.lines().nth(line - 1).unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        ConfigError::Invalid {
            file: self.path.to_owned(),
            line: Some(line),
            message: match &key {
                Some(key) => format!("key {key:?} in {table}: {message}"),
                None => format!("in {table}: {message}"),
            },
            key,
        }
    }

    /// An error about `key` in the table starting at `span` (the line of `key` in it if it is
    /// there, else the table's first line).
    fn at_key(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        table: &str,
        message: String,
    ) -> ConfigError {
        let line = span.map(|span| {
            // toml's span of a table may be its header only: look up to the next header.
            let block = &self.text[span.start.min(self.text.len())..];
            line_starts(block)
                .enumerate()
                .take_while(|(i, (_, l))| *i == 0 || !l.trim_start().starts_with('['))
                .map(|(_, line)| line)
                .find(|(_, l)| {
                    let t = l.trim_start();
                    t.strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
                .map(|(at, _)| self.line_of(span.start + at))
                .unwrap_or_else(|| self.line_of(span.start))
        });
        ConfigError::Invalid {
            file: self.path.to_owned(),
            line,
            key: Some(key.to_owned()),
            message: format!("key {key:?} in {table}: {message}"),
        }
    }

    fn client(
        &self,
        raw: RawClient,
        defaults: Option<&RawClient>,
        span: std::ops::Range<usize>,
        ssh_config: Option<&SshConfig>,
        home: Option<&Path>,
    ) -> Result<Client, ConfigError> {
        let own = raw.clone();
        let raw = match defaults {
            Some(d) => raw.with_defaults(d),
            None => raw,
        };
        let table_for = |name: &str| format!("[[client]] {name}");
        let name = match raw.name {
            Some(name) => name,
            None => {
                return Err(self.at_key(
                    Some(span),
                    "name",
                    "[[client]]",
                    "every client needs a name".into(),
                ))
            }
        };
        let table = table_for(&name);
        let err = |key: &str, message: String| self.at_key(Some(span.clone()), key, &table, message);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(err(
                "name",
                format!("{name:?}: use only letters, digits, '.', '_' and '-' (it names files and metrics)"),
            ));
        }
        let Some(alias) = raw.host.clone() else {
            return Err(err("host", "no host (set it here or in [defaults])".into()));
        };
        let repo = match raw.repo {
            Some(repo) if repo.is_absolute() => repo,
            Some(repo) => return Err(err("repo", format!("{} is not an absolute path", repo.display()))),
            None => {
                return Err(err(
                    "repo",
                    "no repository (an absolute path on this server)".into(),
                ))
            }
        };
        let args = match raw.args {
            Some(args) if !args.is_empty() => args,
            _ => {
                return Err(err(
                    "args",
                    "no borg arguments, e.g. [\"create\", \"::{now}\", \"/etc\"]".into(),
                ))
            }
        };
        let passphrase = match (raw.passphrase_file, raw.passcommand) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "passcommand",
                    "set passphrase_file or passcommand, not both".into(),
                ))
            }
            (Some(file), None) => PassphraseSource::File(file),
            (None, Some(command)) => PassphraseSource::Command(command),
            (None, None) => PassphraseSource::Inherited,
        };
        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|m| err(key, m)),
        };
        let max_runtime = duration("max_runtime", raw.max_runtime, DEFAULT_MAX_RUNTIME)?;
        let max_age = duration("max_age", raw.max_age, DEFAULT_MAX_AGE)?;
        let schedule = schedule_of(
            [&raw.every, &raw.retry, &raw.window],
            raw.blackout.as_deref(),
            &err,
        )?;
        for (k, _) in raw.env.iter().flatten() {
            if !borg_pull_tunnel::ssh::exec::is_env_name(k)
                || borg_pull_tunnel::jobs::pull::RESERVED_ENV.contains(&k.as_str())
            {
                return Err(err(
                    "env",
                    format!("{k:?} cannot be set (not a shell variable name, or set by borg-pull)"),
                ));
            }
        }
        let via_name = raw.via.as_deref().unwrap_or("socket");
        let via = match via_name {
            "socket" => {
                // Only the entry's own keys: [defaults] may hold them for other clients.
                for (key, set) in [
                    ("server_ssh", own.server_ssh.is_some()),
                    ("agent_key", own.agent_key.is_some()),
                    ("ephemeral_key", own.ephemeral_key.unwrap_or(false)),
                ] {
                    if set {
                        return Err(err(key, "needs via = \"agent\" or \"tcp\"".into()));
                    }
                }
                ViaConfig::Socket
            }
            "agent" | "tcp" => {
                // The entry's own key only: [defaults] may set it for the socket clients.
                if own.install_relay == Some(true) {
                    return Err(err(
                        "install_relay",
                        "needs via = \"socket\": with agent or tcp the client's borg reaches this server with its own ssh, no relay".into(),
                    ));
                }
                if raw.storage_quota.is_some() {
                    return Err(err(
                        "storage_quota",
                        "needs via = \"socket\": with agent or tcp the server's forced command runs borg serve".into(),
                    ));
                }
                let Some(server_ssh) = raw.server_ssh else {
                    return Err(err(
                        "server_ssh",
                        format!("via = {via_name:?} needs server_ssh = \"USER@HOST[:PORT]\""),
                    ));
                };
                let agent_key = match (raw.agent_key, raw.ephemeral_key.unwrap_or(false)) {
                    (Some(file), false) => Some(file),
                    (None, true) => None,
                    (Some(_), true) => {
                        return Err(err(
                            "ephemeral_key",
                            "set agent_key or ephemeral_key, not both".into(),
                        ))
                    }
                    (None, false) => {
                        return Err(err(
                            "agent_key",
                            format!("via = {via_name:?} needs agent_key = FILE or ephemeral_key = true"),
                        ))
                    }
                };
                ViaConfig::Agent {
                    tcp: via_name == "tcp",
                    server_ssh,
                    agent_key,
                    authorized_keys: raw.authorized_keys,
                    server_host_key: raw
                        .server_host_key
                        .unwrap_or_else(|| PathBuf::from("/etc/ssh/ssh_host_ed25519_key.pub")),
                }
            }
            "sftp" => {
                for (key, set) in [
                    ("server_ssh", own.server_ssh.is_some()),
                    ("agent_key", own.agent_key.is_some()),
                    ("ephemeral_key", own.ephemeral_key.unwrap_or(false)),
                    ("install_relay", own.install_relay == Some(true)),
                    ("storage_quota", raw.storage_quota.is_some()),
                ] {
                    if set {
                        return Err(err(
                            key,
                            "cannot be used with via = \"sftp\": nothing runs on the client and no borg serve runs here".into(),
                        ));
                    }
                }
                ViaConfig::Sftp
            }
            other => {
                return Err(err(
                    "via",
                    format!("{other:?}: expected \"socket\", \"agent\", \"tcp\" or \"sftp\""),
                ))
            }
        };
        // ~/.ssh/config fills what this entry and [defaults] leave open, as ssh's own command
        // line beats its config: a `Host *` IdentityFile or User in the operator's file must not
        // silently replace what the fleet config says.
        let alias_settings = ssh_config.map(|c| c.lookup(&alias)).unwrap_or_default();
        let host = alias_settings
            .host_name
            .map(|h| h.replace("%h", &alias))
            .unwrap_or_else(|| alias.clone());
        let port = raw.port.or(alias_settings.port).unwrap_or(22);
        let user = raw.user.or(alias_settings.user);
        let identity = raw
            .identity
            .or(alias_settings.identity.map(|i| expand_tilde(&i, home)));
        let jump = match (raw.jump, alias_settings.proxy_jump) {
            (Some(j), _) => j,
            (None, Some(j)) if j == "none" => Vec::new(),
            (None, Some(j)) => j.split(',').map(|s| s.trim().to_owned()).collect(),
            (None, None) => Vec::new(),
        };
        for hop in &jump {
            borg_pull_tunnel::ssh::jump::JumpHost::parse(hop).map_err(|e| err("jump", e.to_string()))?;
        }
        let cipher = match raw.cipher {
            None => CipherChoice::Auto,
            Some(name) => name.parse().map_err(|m| err("cipher", m))?,
        };
        Ok(Client {
            name,
            host,
            port,
            user,
            identity,
            known_hosts: raw.known_hosts,
            accept_new_host_key: raw.accept_new_host_key.unwrap_or(false),
            relay: raw.relay,
            install_relay: raw.install_relay.unwrap_or(false),
            remote_borg: raw.remote_borg,
            repo,
            via,
            jump,
            cipher,
            env: raw.env.unwrap_or_default(),
            args,
            passphrase,
            max_runtime,
            storage_quota: raw.storage_quota,
            prune: raw.prune.unwrap_or_default(),
            compact: raw.compact.unwrap_or(false),
            check: CheckPolicy {
                every_runs: raw.check_every_runs,
                every_days: raw.check_every_days,
            },
            max_age,
            schedule,
        })
    }
}

/// A client's `every`, `retry`, `window` and `blackout` (defaults applied) as its [`Schedule`];
/// `err` names the key in the client's table.
fn schedule_of(
    [every, retry, window]: [&Option<String>; 3],
    blackout: Option<&[String]>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Schedule, ConfigError> {
    let duration = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|m| err(key, m)),
    };
    let raw_window = window;
    let every = duration("every", every, schedule::DEFAULT_EVERY)?;
    let first = duration("retry", retry, schedule::DEFAULT_RETRY)?;
    let hours = |key: &str, v: &str| v.parse::<Hours>().map_err(|m| err(key, m));
    let window = window.as_deref().map(|w| hours("window", w)).transpose()?;
    let blackout = blackout
        .unwrap_or_default()
        .iter()
        .map(|b| hours("blackout", b))
        .collect::<Result<Vec<_>, _>>()?;
    let schedule = Schedule {
        every,
        window,
        blackout,
        retry: Backoff {
            first: first.min(every),
            cap: every,
        },
    };
    if !schedule.leaves_time_to_start() {
        let key = if raw_window.is_some() {
            "window"
        } else {
            "blackout"
        };
        return Err(err(
            key,
            format!(
                "window {} and blackout [{}] leave no minute of the day to start a pull: \
                 shorten a blackout or widen the window ({})",
                window.map_or_else(|| "(all day)".into(), |w| format!("\"{w}\"")),
                schedule
                    .blackout
                    .iter()
                    .map(|b| format!("\"{b}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                Hours::FORM
            ),
        ));
    }
    Ok(schedule)
}

/// `(byte offset, line)` of each line of `text`.
fn line_starts(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n').map(move |line| {
        let start = at;
        at += line.len();
        (start, line)
    })
}

fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

impl Client {
    /// `USER@HOST` for messages and [`PullOptions::with_env`] (the login user of `env` when no
    /// user is set).
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// Where this client's repository passphrase comes from: its own file or command, else the
    /// server's BORG_PASSPHRASE / BORG_PASSCOMMAND in `env`.
    pub fn secret_sources(&self, env: &PullEnv) -> SecretSources {
        match &self.passphrase {
            PassphraseSource::Inherited => env.secret_sources(None),
            PassphraseSource::File(file) => SecretSources {
                file: Some(file.clone()),
                passphrase: None,
                passcommand: None,
            },
            PassphraseSource::Command(command) => SecretSources {
                file: None,
                passphrase: None,
                passcommand: Some(command.into()),
            },
        }
    }

    /// The options `borg-pull-server pull` would build from the same settings given as flags;
    /// `server` supplies the borg program here. Reads the passphrase (file or command) and, for
    /// `via = "agent"/"tcp"`, this server's host key; `cancel` stops the pull.
    pub async fn pull_options(
        &self,
        server: &ServerSettings,
        env: &PullEnv,
        cancel: CancellationToken,
    ) -> borg_pull_tunnel::Result<PullOptions> {
        let args: Vec<OsString> = self.args.iter().map(OsString::from).collect();
        let mut options = PullOptions::with_env(&self.destination(), &self.repo, args, env)?;
        options.session.port = self.port;
        options.session.identity = self.identity.clone();
        options.session.accept_new_host_key = self.accept_new_host_key;
        if self.install_relay {
            options.install_relay = Some(borg_pull_tunnel::jobs::pull::RelayBinary::beside_this_program()?);
        }
        if let Some(kh) = &self.known_hosts {
            options.session.known_hosts = kh.clone();
        }
        options.session.jump = self
            .jump
            .iter()
            .map(|hop| borg_pull_tunnel::ssh::jump::JumpHost::parse(hop))
            .collect::<borg_pull_tunnel::Result<_>>()?;
        options.session.cipher = self.cipher;
        if let Some(relay) = &self.relay {
            options.relay = relay.into();
        }
        if let Some(borg) = &self.remote_borg {
            options.remote_borg = borg.into();
        }
        options.env = self
            .env
            .iter()
            .map(|(n, v)| (n.clone(), OsString::from(v)))
            .collect();
        options.serve.borg = server.borg.clone();
        options.serve.storage_quota = self.storage_quota.clone();
        options.serve.version = Some(server_borg_version(&server.borg).await?);
        options.max_runtime = self.max_runtime;
        options.via = match &self.via {
            ViaConfig::Socket => Via::Socket,
            ViaConfig::Sftp => {
                let root = borg_pull_tunnel::jobs::sftp_pull::running_as_root();
                // As for `pull --via sftp`: a systemd unit's RuntimeDirectory= first.
                let var = |name| {
                    std::env::var_os(name)
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                };
                match borg_pull_tunnel::jobs::sftp_pull::default_work_dir(
                    root,
                    var("RUNTIME_DIRECTORY"),
                    var("XDG_RUNTIME_DIR"),
                    env.ssh.home.as_deref(),
                ) {
                    Some(work_dir) => Via::Sftp(borg_pull_tunnel::jobs::sftp_pull::SftpVia { work_dir }),
                    None => {
                        return Err(borg_pull_tunnel::Error::InvalidOption(
                            "via = \"sftp\" without root needs HOME for its work directory".into(),
                        ))
                    }
                }
            }
            ViaConfig::Agent {
                tcp,
                server_ssh,
                agent_key,
                authorized_keys,
                server_host_key,
            } => {
                let agent_key = match (agent_key, authorized_keys, &env.ssh.home) {
                    (Some(file), _, _) => AgentKey::File(file.clone()),
                    (None, Some(file), _) => AgentKey::Ephemeral {
                        authorized_keys: file.clone(),
                    },
                    (None, None, Some(home)) => AgentKey::Ephemeral {
                        authorized_keys: home.join(".ssh/authorized_keys"),
                    },
                    (None, None, None) => {
                        return Err(borg_pull_tunnel::Error::InvalidOption(
                            "ephemeral_key without HOME needs authorized_keys = FILE".into(),
                        ))
                    }
                };
                let host_key = borg_pull_tunnel::jobs::pull::via::read_host_key(server_host_key)?;
                let login = ServerLogin::new(server_ssh, host_key, agent_key)?;
                if *tcp {
                    Via::Tcp(login)
                } else {
                    Via::Agent(login)
                }
            }
        };
        options.passphrase = Passphrase::from_sources(&self.secret_sources(env)).await?;
        options.cancel = cancel;
        Ok(options)
    }
}

/// The server borg's version (it decides `borg serve`'s flags), asked once per program and process
/// however many clients a run pulls; callers that come while it is being asked wait for that
/// answer. A failure is not kept: the next caller asks again (and reports it).
async fn server_borg_version(borg: &Path) -> borg_pull_tunnel::Result<borg_pull_core::BorgVersion> {
    type Cell = std::sync::Arc<tokio::sync::OnceCell<borg_pull_core::BorgVersion>>;
    static KNOWN: std::sync::Mutex<Vec<(PathBuf, Cell)>> = std::sync::Mutex::new(Vec::new());
    let cell = {
        let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        match known.iter().find(|(p, _)| p == borg) {
            Some((_, cell)) => cell.clone(),
            None => {
                let cell = Cell::default();
                known.push((borg.to_owned(), cell.clone()));
                cell
            }
        }
    };
    let version = cell
        .get_or_try_init(|| async {
            let program = borg.to_owned();
            tokio::task::spawn_blocking(move || borg_pull_core::BorgVersion::probe(&program))
                .await
                .map_err(|source| borg_pull_tunnel::Error::BackgroundTask {
                    task: "asking borg for its version",
                    source,
                })?
                .map_err(borg_pull_tunnel::Error::Serve)
        })
        .await?;
    Ok(version.clone())
}

/// Starts asking the server borg for its version now (about 0.2 s of Python start-up), so that a
/// run's first pull finds it known instead of asking after its own preparations (the listing
/// before the job). The answer is kept as [`Client::pull_options`] keeps it; a failure is dropped
/// here and reported by the pull that asks again. The returned handle owns the task.
pub fn prefetch_server_borg_version(borg: &Path) -> tokio_util::task::AbortOnDropHandle<()> {
    let borg = borg.to_owned();
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = server_borg_version(&borg).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Fleet, ConfigError> {
        parse_with_home(text, Path::new("fleet.toml"), None)
    }

    fn message(text: &str) -> String {
        parse_text(text).unwrap_err().to_string()
    }

    #[test]
    fn via_sftp_parses_and_refuses_what_needs_a_client_side() {
        let sftp = GOOD.replace("via = \"agent\"", "via = \"sftp\"");
        let sftp: String = sftp
            .lines()
            .filter(|l| !l.starts_with("agent_key") && !l.starts_with("server_ssh"))
            .map(|l| format!("{l}\n"))
            .collect();
        let fleet = parse_text(&sftp).unwrap_or_else(|e| panic!("{e}\n{sftp}"));
        assert!(fleet.clients.iter().any(|c| c.via == ViaConfig::Sftp));
        let with_relay = sftp.replace("via = \"sftp\"\n", "via = \"sftp\"\ninstall_relay = true\n");
        let m = message(&with_relay);
        assert!(m.contains("install_relay") && m.contains("sftp"), "{m}");
    }

    const GOOD: &str = r#"
[server]
state_dir = "/var/lib/bp"
jobs = 2

[defaults]
user = "root"
args = ["create", "::{now}", "/etc"]
passphrase_file = "/etc/bp/pass"
env = { BORG_FILES_CACHE_TTL = "40" }
max_age = "2d"
prune = { keep_daily = 7 }

[[client]]
name = "web1"
host = "web1.example.org"
repo = "/srv/borg/web1"
env = { BORG_X = "1" }

[[client]]
name = "db.2"
host = "db2"
port = 2222
user = "backup"
repo = "/srv/borg/db2"
passcommand = "pass show borg"
via = "agent"
server_ssh = "borg@server"
agent_key = "/etc/bp/agent"
max_runtime = "90m"
"#;

    #[test]
    fn defaults_apply_and_clients_win() {
        let fleet = parse_text(GOOD).unwrap();
        assert_eq!(fleet.server.jobs, 2);
        assert_eq!(fleet.server.borg, PathBuf::from("borg"));
        let [web, db] = &fleet.clients[..] else { panic!() };
        assert_eq!(web.user.as_deref(), Some("root"));
        assert_eq!(web.port, 22);
        assert_eq!(web.passphrase, PassphraseSource::File("/etc/bp/pass".into()));
        assert_eq!(web.env.len(), 2, "env is merged");
        assert_eq!(web.max_age, Duration::from_secs(2 * 86400));
        assert_eq!(web.max_runtime, DEFAULT_MAX_RUNTIME);
        assert_eq!(web.prune.keep_daily, Some(7));
        assert_eq!(db.user.as_deref(), Some("backup"));
        assert_eq!(db.port, 2222);
        assert_eq!(db.passphrase, PassphraseSource::Command("pass show borg".into()));
        assert_eq!(db.max_runtime, Duration::from_secs(90 * 60));
        assert!(matches!(
            &db.via,
            ViaConfig::Agent {
                tcp: false,
                agent_key: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn unknown_key_names_file_line_key_and_client() {
        let text = GOOD.replace("env = { BORG_X = \"1\" }", "keep_daly = 3");
        let e = parse_text(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fleet.toml line 18: unknown key \"keep_daly\" in [[client]] web1"
        );
        let ConfigError::Invalid { line, key, .. } = e else {
            panic!()
        };
        assert_eq!((line, key.as_deref()), (Some(18), Some("keep_daly")));
        let text = GOOD.replace("prune = { keep_daily = 7 }", "prune = { keep_daly = 7 }");
        assert_eq!(
            message(&text),
            "fleet.toml line 12: unknown key \"keep_daly\" in [defaults]"
        );
        assert!(message("[server]\njobz = 3\n")
            .starts_with("fleet.toml line 2: unknown key \"jobz\" in [server]"));
    }

    #[test]
    fn wrong_type_names_file_line_key() {
        let text = GOOD.replace("port = 2222", "port = \"ssh\"");
        let m = message(&text);
        assert!(
            m.starts_with("fleet.toml line 23: key \"port\" in [[client]] db.2: "),
            "{m}"
        );
        let text = GOOD.replace("jobs = 2", "jobs = -1");
        let m = message(&text);
        assert!(
            m.starts_with("fleet.toml line 4: key \"jobs\" in [server]"),
            "{m}"
        );
    }

    #[test]
    fn validation_errors() {
        let dup_name = GOOD.replace("name = \"db.2\"", "name = \"web1\"");
        assert!(
            message(&dup_name).contains("used twice"),
            "{}",
            message(&dup_name)
        );
        let dup_repo = GOOD.replace("/srv/borg/db2", "/srv/borg/web1");
        let m = message(&dup_repo);
        assert!(
            m.contains("line 25") && m.contains("borg's repository lock"),
            "{m}"
        );
        let relative = GOOD.replace("/srv/borg/db2", "srv/borg/db2");
        assert!(message(&relative).contains("not an absolute path"));
        let bad_name = GOOD.replace("name = \"db.2\"", "name = \"db 2\"");
        assert!(message(&bad_name).contains("only letters"));
        let both = GOOD.replace("passcommand", "passphrase_file = \"/x\"\npasscommand");
        assert!(message(&both).contains("not both"), "{}", message(&both));
        let dur = GOOD.replace("\"90m\"", "\"90 minutes\"");
        let m = message(&dur);
        assert!(m.contains("key \"max_runtime\"") && m.contains("line 30"), "{m}");
        let no_server = GOOD.replace("server_ssh = \"borg@server\"\n", "");
        assert!(message(&no_server).contains("needs server_ssh"));
        let no_key = GOOD.replace("agent_key = \"/etc/bp/agent\"\n", "");
        assert!(message(&no_key).contains("needs agent_key"));
        let bad_via = GOOD.replace("via = \"agent\"", "via = \"carrier-pigeon\"");
        assert!(message(&bad_via).contains("carrier-pigeon"));
        let socket_with_agent_key = GOOD.replace("via = \"agent\"\n", "");
        assert!(message(&socket_with_agent_key).contains("needs via"));
        let agent_with_relay = GOOD.replace("via = \"agent\"\n", "via = \"agent\"\ninstall_relay = true\n");
        let m = message(&agent_with_relay);
        assert!(
            m.contains("key \"install_relay\"") && m.contains("needs via = \"socket\""),
            "{m}"
        );
        let relay_for_everyone = GOOD.replace("user = \"root\"", "user = \"root\"\ninstall_relay = true");
        let fleet = parse_text(&relay_for_everyone).unwrap();
        assert!(
            fleet.clients[0].install_relay,
            "[defaults] install_relay applies to socket clients"
        );
        let name_in_defaults = GOOD.replace("user = \"root\"", "name = \"x\"");
        assert!(message(&name_in_defaults).contains("cannot be in [defaults]"));
        assert!(
            message("[[client]]\nname = \"a\"\nhost = \"h\"\nrepo = \"/r\"\n").contains("no borg arguments")
        );
    }

    #[test]
    fn ssh_config_aliases_fill_what_the_entry_leaves_open() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        std::fs::write(
            home.path().join(".ssh/config"),
            "Host web1\n  HostName 192.0.2.7\n  User alias-user\n  Port 2200\n  IdentityFile ~/.ssh/web\n  ProxyJump gw:2022\nHost db2\n  Port 9\n",
        )
        .unwrap();
        let text = GOOD.replace("host = \"web1.example.org\"", "host = \"web1\"");
        let fleet = parse_with_home(&text, Path::new("fleet.toml"), Some(home.path())).unwrap();
        let web = &fleet.clients[0];
        assert_eq!(web.host, "192.0.2.7");
        assert_eq!(
            web.user.as_deref(),
            Some("root"),
            "[defaults] beats the ssh config"
        );
        let no_user = text.replace("user = \"root\"\n", "");
        let fleet = parse_with_home(&no_user, Path::new("fleet.toml"), Some(home.path())).unwrap();
        assert_eq!(fleet.clients[0].user.as_deref(), Some("alias-user"));
        assert_eq!(web.port, 2200);
        assert_eq!(web.identity, Some(home.path().join(".ssh/web")));
        assert_eq!(web.jump, vec!["gw:2022".to_owned()]);
        let db = &fleet.clients[1];
        assert_eq!(db.port, 2222, "the entry's own port wins");
        assert_eq!(db.host, "db2");
        // [server] ssh_config names another file, which must exist.
        let text = format!("[server]\nssh_config = \"{}/nope\"\n", home.path().display());
        assert!(matches!(parse_text(&text), Err(ConfigError::Io { .. })));
    }

    #[test]
    fn an_unreadable_config_is_classified_unreadable_and_names_its_cause_once() {
        let e = load(Path::new("/nonexistent/fleet.toml")).unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Unreadable);
        let text = e.to_string();
        assert!(
            text.starts_with("cannot read /nonexistent/fleet.toml: "),
            "{text}"
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "said in the message: {text}"
        );
    }

    #[test]
    fn an_invalid_config_is_classified_invalid() {
        let e = parse_text("[server]\njobs = 0\n").unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{e}");
        assert!(std::error::Error::source(&e).is_none(), "{e}");
    }

    #[test]
    fn debug_shows_no_secret_and_durations_parse() {
        let fleet = parse_text(GOOD).unwrap();
        assert!(!format!("{fleet:?}").to_lowercase().contains("passphrase(\""));
        assert_eq!(parse_duration("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
    }
}
