//! The one error type of borg-pull-tunnel.
//!
//! Messages are lowercase and name the host, key, file or sshd setting involved, the cause and the
//! fix, in the spirit of OpenSSH's own messages: they are what a sysadmin sees when a nightly pull
//! fails.
//!
//! Each cause is said once: a variant either names it in its message or hands it out as
//! [`std::error::Error::source`], never both ([`borg_pull_core::error::Chain`] prints the chain on
//! one line). [`Error::kind`] classifies every variant, so a binary maps kinds, not variants, to
//! exit codes. A client's sshd is named by its [`Peer`], shown the same way everywhere.

use std::path::PathBuf;

/// Result alias for borg-pull-tunnel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An sshd we talk to (the client's, a jump host's): the host as given and its TCP port. Shown as
/// `HOST port PORT`, OpenSSH's own wording (`ssh: connect to host web1 port 22: ...`), wherever a
/// message names the connection; a message about the machine names `host` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Peer {
    /// Host name or address as given.
    pub host: String,
    /// sshd's TCP port.
    pub port: u16,
}

impl Peer {
    /// The sshd at `host`, `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} port {}", self.host, self.port)
    }
}

/// Why the client's sshd refused to listen on our socket path (`streamlocal-forward@openssh.com`
/// only answers "request denied"; we find the cause by looking at the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardDenial {
    /// The directory exists and is writable and nothing is in the way: the sshd forbids it.
    Forbidden,
    /// The socket directory does not exist on the client.
    NoDirectory,
    /// The login user cannot create files in the socket directory.
    NotWritable,
    /// Something already exists at the socket path (a stale socket; sshd's
    /// `StreamLocalBindUnlink` is `no` by default).
    StaleSocket,
    /// The socket path is longer than a UNIX socket path may be.
    PathTooLong,
    /// The diagnosis itself failed; the text says what we saw.
    Unknown(String),
}

impl std::fmt::Display for ForwardDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardDenial::Forbidden => f.write_str(
                "the directory exists, is writable and nothing is in the way, so the client's sshd \
                 forbids UNIX socket forwarding: set `AllowStreamLocalForwarding yes` (or `remote`) in \
                 its sshd_config; OpenSSH also refuses it when `AllowTcpForwarding` is `no` or `local`, \
                 `PermitListen` is `none`, `DisableForwarding` is set, or the key's authorized_keys line \
                 has a `restrict` or `no-port-forwarding` option",
            ),
            ForwardDenial::NoDirectory => {
                f.write_str("the socket directory does not exist on the client (was it removed meanwhile?)")
            }
            ForwardDenial::NotWritable => f.write_str(
                "the login user cannot write to the socket directory (permissions; check $TMPDIR on the client)",
            ),
            ForwardDenial::StaleSocket => f.write_str(
                "a stale socket is in the way (sshd's `StreamLocalBindUnlink` defaults to `no`); remove it",
            ),
            ForwardDenial::PathTooLong => f.write_str(
                "the socket path is longer than 107 bytes (set a shorter TMPDIR for the login user on the client)",
            ),
            ForwardDenial::Unknown(seen) => write!(f, "cause unknown: {seen}"),
        }
    }
}

/// The details of a host key verification failure.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HostKeyProblem {
    /// `host` or `[host]:port`, the name looked up in known_hosts.
    pub host_port: String,
    /// The sshd that offered the key.
    pub peer: Peer,
    /// Algorithm of the offered key, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// `SHA256:...` fingerprint of the offered key.
    pub fingerprint: String,
    /// The known_hosts file consulted.
    pub known_hosts: PathBuf,
    /// 1-based line of the relevant entry (changed, revoked), else 0.
    pub line: usize,
    /// Key types on record for the host (comma separated), for [`Error::HostKeyTypeUnknown`].
    pub known_types: String,
}

/// Everything that can go wrong in borg-pull-tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option or argument is unusable; the text says which and why.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// An argument for the client contains a NUL byte, which no argv and no shell can carry.
    #[error("argument {0:?} contains a NUL byte, which cannot be passed to a remote command")]
    NulInArgument(String),

    /// The TCP connection could not be made.
    #[error("cannot connect to {peer}")]
    Connect {
        /// The client's sshd.
        peer: Peer,
        /// Why.
        source: std::io::Error,
    },

    /// The TCP connection or SSH handshake did not complete in time.
    #[error("connecting to {peer} timed out after {secs} s (is sshd running and reachable?)")]
    ConnectTimeout {
        /// The client's sshd.
        peer: Peer,
        /// The timeout.
        secs: u64,
    },

    /// The host is not in known_hosts (and `--accept-new-host-key` was not given).
    #[error(
        "host key verification failed: no {} key for {} in {:?}; the server's {} key fingerprint is {}. \
         If that is the client you expect, record it (ssh-keyscan -p {} -t {} {} >> {:?}) or let this \
         run record a new host key (OpenSSH's accept-new)",
        .0.key_type, .0.host_port, .0.known_hosts, .0.key_type, .0.fingerprint,
        .0.peer.port, .0.key_type, .0.peer.host, .0.known_hosts
    )]
    UnknownHostKey(Box<HostKeyProblem>),

    /// known_hosts has a different key of the same type for this host: possible man-in-the-middle.
    #[error(
        "host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED for {}: the server \
         offered {} key {}, but {:?} line {} records a different {} key. Someone could be eavesdropping \
         (man-in-the-middle), or the host key was just changed. If the change is expected, remove the \
         old key with `ssh-keygen -f {:?} -R '{}'` and let the next run record the new one (accept-new)",
        .0.host_port, .0.key_type, .0.fingerprint, .0.known_hosts, .0.line, .0.key_type,
        .0.known_hosts, .0.host_port
    )]
    HostKeyChanged(Box<HostKeyProblem>),

    /// known_hosts only has keys of other types for this host; we refuse rather than silently
    /// trusting a new key type (OpenSSH asks interactively here).
    #[error(
        "host key verification failed: the server {} offered a {} key ({}), but {:?} only records \
         other key types for it ({}). Add the {} key after checking it (ssh-keyscan -p {} -t {} {}), \
         or remove the old entries with `ssh-keygen -f {:?} -R '{}'` and let the next run record the \
         new one (accept-new)",
        .0.host_port, .0.key_type, .0.fingerprint, .0.known_hosts, .0.known_types, .0.key_type,
        .0.peer.port, .0.key_type, .0.peer.host, .0.known_hosts, .0.host_port
    )]
    HostKeyTypeUnknown(Box<HostKeyProblem>),

    /// The offered key is marked `@revoked` in known_hosts.
    #[error(
        "host key verification failed: the {} key {} of {} is marked @revoked in {:?} line {}; \
         refusing to connect",
        .0.key_type, .0.fingerprint, .0.host_port, .0.known_hosts, .0.line
    )]
    HostKeyRevoked(Box<HostKeyProblem>),

    /// The server presented a host certificate; `@cert-authority` is not supported.
    #[error(
        "host key verification failed: {} presented a host certificate, but @cert-authority entries \
         are not supported; record the plain host key in {:?}",
        .0.host_port, .0.known_hosts
    )]
    HostCertificateUnsupported(Box<HostKeyProblem>),

    /// Reading or appending to known_hosts failed.
    #[error("cannot {action} known_hosts file {path:?}")]
    KnownHostsIo {
        /// `read` or `append to`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The identity (private key) file could not be loaded.
    #[error("cannot load identity {path:?}")]
    Identity {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: russh::keys::Error,
    },

    /// The identity is encrypted and no passphrase was supplied.
    #[error("identity {path:?} is encrypted and no passphrase for it was given")]
    IdentityEncrypted {
        /// The key file.
        path: PathBuf,
    },

    /// A file holding a secret (key or passphrase) can be read by other users.
    #[error(
        "permissions {mode:04o} for {kind} {path:?} are too open: other users could read it; \
         fix: chmod 600 {path:?}"
    )]
    SecretFileTooOpen {
        /// What the file holds.
        kind: SecretKind,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// No identity was given, the agent (if any) offered no key and none of the default key files
    /// exists.
    #[error("no identity given, {}none of the default keys exists ({})", agent_offered_none(.agent), display_paths(.tried))]
    NoIdentity {
        /// The default key files looked for.
        tried: Vec<PathBuf>,
        /// The agent socket asked for keys (unreachable, or it holds none); `None` when no agent
        /// was given.
        agent: Option<PathBuf>,
    },

    /// No known_hosts file was given and there is no HOME to find the default one in.
    #[error("no known_hosts file given and HOME is not set, so host keys cannot be verified")]
    NoKnownHostsFile,

    /// The client's sshd refused our key(s).
    #[error(
        "{user}@{peer}: permission denied (publickey) for {}; is its \
         public key in ~{user}/.ssh/authorized_keys on the client (and is the account not locked)?{}",
        keys_offered(.identity, .agent, *.agent_keys),
        keys_left_out(*.agent_keys, *.agent_keys_held)
    )]
    AuthFailed {
        /// Login user.
        user: String,
        /// The client's sshd.
        peer: Peer,
        /// The key file offered; empty when only the agent's keys were.
        identity: PathBuf,
        /// The agent socket whose keys were offered first, if any.
        agent: Option<PathBuf>,
        /// How many of the agent's keys were offered.
        agent_keys: usize,
        /// How many distinct keys the agent holds: more than `agent_keys` when the bound on keys
        /// offered per login ([`crate::limits::MAX_KEY_OFFERS`]) left some out.
        agent_keys_held: u32,
    },

    /// The client's sshd ended the login while refusing our keys: its `MaxAuthTries` is below the
    /// number of keys offered (what it says then: "Too many authentication failures").
    #[error(
        "{user}@{peer}: the client's sshd ended the login after {offered} refused {} \
         (it said \"{said}\"): sshd does this at MaxAuthTries failed attempts, which the client has \
         set below the {} keys a login may offer, and OpenSSH >= 9.8 also penalises this server's \
         address for it; name the key the client authorises, which is then the only key offered",
        if *.offered == 1 { "key" } else { "keys" },
        crate::limits::MAX_KEY_OFFERS
    )]
    AuthCutOff {
        /// Login user.
        user: String,
        /// The client's sshd.
        peer: Peer,
        /// Keys offered on the connection, the one it ended at included.
        offered: usize,
        /// Its disconnect message, escaped; empty when it closed without one.
        said: String,
    },

    /// Something failed at a jump host (connecting, logging in, a lost connection); host key
    /// failures of a jump host are the host key variants themselves, naming its `host:port`.
    #[error("jump host {peer}")]
    JumpHost {
        /// The jump host's sshd.
        peer: Peer,
        /// What went wrong there.
        #[source]
        source: Box<Error>,
    },

    /// A jump host could not open the `direct-tcpip` channel to the next host.
    #[error(
        "jump host {peer} cannot connect to {target}: {reason} \
         (can the jump host reach it, and does its sshd allow TCP forwarding: AllowTcpForwarding, \
         PermitOpen, the key's restrict / no-port-forwarding options?)"
    )]
    JumpConnect {
        /// The jump host's sshd.
        peer: Peer,
        /// The next sshd (a jump host's or the client's).
        target: Peer,
        /// What the jump host said.
        reason: String,
    },

    /// The repository passphrase could not be obtained on the server.
    #[error("cannot get the repository passphrase: {0}")]
    Passphrase(String),

    /// An SSH protocol operation failed.
    #[error("ssh {context} failed")]
    Ssh {
        /// What we were doing.
        context: &'static str,
        /// russh's error.
        source: russh::Error,
    },

    /// The connection to the client was lost (keepalives unanswered, TCP reset, sshd exited).
    #[error("connection to {peer} lost while {context} (the client vanished or its sshd was stopped)")]
    ConnectionLost {
        /// The client's sshd.
        peer: Peer,
        /// What we were doing.
        context: &'static str,
    },

    /// A helper command on the client failed.
    #[error("on the client, `{command}` failed ({}): {output}", exit_text(*status))]
    RemoteHelper {
        /// The command (never contains secrets).
        command: String,
        /// Its exit status, if any arrived.
        status: Option<u32>,
        /// What it printed on stdout/stderr (trimmed).
        output: String,
    },

    /// A helper command on the client did not finish in time.
    #[error("on the client, `{command}` did not finish within {secs} s")]
    RemoteHelperTimeout {
        /// The command.
        command: String,
        /// The timeout.
        secs: u64,
    },

    /// A program pull needs cannot be run on the client (checked before anything is set up there).
    #[error("the {role} program {program:?} cannot be run on the client {}: {why}", .peer.host)]
    RemoteProgramMissing {
        /// The program as given.
        program: String,
        /// Which program it is.
        role: RemoteProgram,
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// What the client's shell found: not found on PATH, not executable, a parent directory
        /// the login user cannot search.
        why: String,
    },

    /// The client's borg is of another major version than the server's: borg 1 and borg 2 speak
    /// different protocols to `borg serve` (msgpack RPC vs. HTTP) and use different repositories.
    #[error(
        "the client {} has borg {client} ({program:?}) but this server runs borg {server}: \
         borg 1 and borg 2 cannot use each other's repositories or serve; install borg {server_major}.x \
         on the client, or use a borg {client_major}.x here",
        .peer.host
    )]
    BorgVersionMismatch {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The client's borg program as given.
        program: String,
        /// The client's borg version.
        client: String,
        /// Its major version.
        client_major: u32,
        /// The server's borg version.
        server: String,
        /// Its major version.
        server_major: u32,
    },

    /// The client's borg 2 is of another generation than the server's (the serve flags, the wire
    /// protocol or the repository format changed within the 2.0 betas; see
    /// `borg_pull_core::version::Generation`).
    #[error(
        "the client {} has borg {client} ({program:?}, {client_generation}) but this server runs \
         borg {server} ({server_generation}): these cannot use each other's serve or repositories; \
         install a borg of {server_generation} on the client (best the same version), or use a borg \
         of {client_generation} here",
        .peer.host
    )]
    BorgGenerationMismatch {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The client's borg program as given.
        program: String,
        /// The client's borg version.
        client: String,
        /// Its generation.
        client_generation: borg_pull_core::version::Generation,
        /// The server's borg version.
        server: String,
        /// Its generation.
        server_generation: borg_pull_core::version::Generation,
    },

    /// The agent and TCP methods: the client's sshd started our command without forwarding the
    /// agent, so the client's ssh would have no key to log in to the server with.
    #[error(
        "the client {} did not forward the agent to borg's session (no SSH_AUTH_SOCK): its sshd \
         has AllowAgentForwarding no, or our key's authorized_keys line has `restrict` without \
         `agent-forwarding`",
        .peer.host
    )]
    AgentNotForwarded {
        /// The client's sshd (messages name its host).
        peer: Peer,
    },

    /// `--install-relay`: the relay could not be installed on the client.
    #[error("cannot install the relay on the client {}: {why}", .peer.host)]
    RelayInstall {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// What went wrong.
        why: String,
    },

    /// `--via tcp`: the client's sshd refused to listen on its loopback for us.
    #[error(
        "the client {peer} refused to forward a TCP port on its loopback: its sshd has \
         AllowTcpForwarding no (or local), or our key's authorized_keys line has `restrict` without \
         `port-forwarding`"
    )]
    TcpForwardDenied {
        /// The client's sshd.
        peer: Peer,
    },

    /// The server's host key for the client's ssh (agent and TCP methods) cannot be read.
    #[error("cannot use {path} as the server's public host key: {why}")]
    ServerHostKey {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },

    /// The client refused a request (a forward, usually); the caller explains why.
    #[error("{peer} refused {request}")]
    RequestDenied {
        /// The client's sshd.
        peer: Peer,
        /// What we asked for.
        request: &'static str,
    },

    /// The client did not answer a request in time (while still answering keepalives, or not).
    #[error("{peer} did not answer {what} within {secs} s")]
    NoAnswer {
        /// The client's sshd.
        peer: Peer,
        /// What we asked for.
        what: &'static str,
        /// The deadline.
        secs: u64,
    },

    /// The client's sshd sent a packet larger than we allow; the connection was ended.
    #[error(
        "{peer} sent a {len}-byte data packet, above the {max} bytes we accept; connection \
         ended (the client's sshd is not a well-behaved SSH server)"
    )]
    OversizedPacket {
        /// The client's sshd.
        peer: Peer,
        /// Its size.
        len: usize,
        /// Our limit.
        max: u32,
    },

    /// An agent connection sent a message longer than any agent request we answer; it was ended.
    #[error(
        "an agent connection sent a {len}-byte message, above the {max} bytes any request we answer \
         needs; connection ended"
    )]
    AgentFrameTooLarge {
        /// The length it announced.
        len: u32,
        /// Our limit.
        max: usize,
    },

    /// An agent connection sent no complete message for too long; it was ended.
    #[error("an agent connection sent no complete message for {secs} s; connection ended")]
    AgentIdle {
        /// The deadline.
        secs: u64,
    },

    /// The client's sshd kept opening channels we did not ask for; the connection was ended.
    #[error("{peer} opened {count} channels we did not ask for (all refused); connection ended")]
    ChannelOpenFlood {
        /// The client's sshd.
        peer: Peer,
        /// Refused opens so far.
        count: usize,
    },

    /// A helper command on the client printed more than we keep.
    #[error("on the client, `{command}` printed more than {limit} bytes; stopped it. It began: {output}")]
    RemoteOutputTooLarge {
        /// The command (never contains secrets).
        command: String,
        /// Bytes kept per stream.
        limit: usize,
        /// The kept output, escaped.
        output: String,
    },

    /// borg ran longer than the run's maximum time; it was stopped and everything cleaned up.
    #[error(
        "borg on the client {} was still running after the maximum run time of {secs} s; it was \
         stopped and the run cleaned up",
        .peer.host
    )]
    MaxRuntime {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The limit.
        secs: u64,
    },

    /// A directory on the client cannot be used: a restore's target (checked before anything
    /// streams) or the one borg runs in (`pull --remote-dir`, checked before borg starts).
    #[error("cannot {purpose} {dir:?} on the client {}: {why}", .peer.host)]
    RemoteDirUnusable {
        /// The directory as given.
        dir: String,
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// What the client's shell found: missing, not a directory, not writable or searchable.
        why: String,
        /// What the directory was for.
        purpose: RemoteDirUse,
    },

    /// A restore ran longer than its maximum time; borg export-tar was stopped, tar on the client
    /// hung up on, and the connection closed.
    #[error(
        "the restore to {} was still running after the maximum run time of {secs} s; borg \
         export-tar was stopped and tar on the client hung up on (the directory may hold a partial restore)",
        .peer.host
    )]
    RestoreMaxRuntime {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The limit.
        secs: u64,
    },

    /// tar's channel closed without an exit status.
    #[error("tar on the client {} ended without reporting an exit status", .peer.host)]
    TarNoExitStatus {
        /// The client's sshd (messages name its host).
        peer: Peer,
    },

    /// The client's sshd refused to listen on our socket path.
    #[error("the ssh server {peer} refused to forward UNIX socket {path}: {cause}")]
    ForwardDenied {
        /// The client's sshd.
        peer: Peer,
        /// The socket path on the client.
        path: String,
        /// What the diagnosis found.
        cause: ForwardDenial,
    },

    /// borg's channel closed without an exit status or signal.
    #[error("borg on the client ended without reporting an exit status (channel closed by {})", .peer.host)]
    NoExitStatus {
        /// The client's sshd (messages name its host).
        peer: Peer,
    },

    /// The run was cancelled (Ctrl-C / SIGTERM).
    #[error("interrupted; borg on the client was stopped and the socket directory removed")]
    Interrupted,

    /// A task of ours ended abnormally (it panicked or was cancelled): a bug, not the input's or
    /// the client's fault.
    #[error("internal error: {task} ended abnormally")]
    BackgroundTask {
        /// What the task was doing, e.g. `reading the relay to install`.
        task: &'static str,
        /// How it ended.
        source: tokio::task::JoinError,
    },

    /// The copy of why our russh handler ended the connection that russh hands back (it keeps
    /// only the text); the typed reason is kept aside and returned instead, so this one reaching a
    /// caller is a bug.
    #[error("{0}")]
    HandlerEnded(String),

    /// Local I/O failed (writing borg's output, reading a file).
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// Why.
        source: std::io::Error,
    },

    /// A public key file cannot be used for an authorized_keys entry (missing, a private key,
    /// several lines, an unknown key type).
    #[error("cannot use public key file {path:?}: {why}")]
    PublicKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and the fix.
        why: String,
    },

    /// A value cannot be part of an authorized_keys entry (NUL, line break, not UTF-8).
    #[error("the {what} {value:?} cannot be part of an authorized_keys entry: {why}")]
    ForcedCommandInvalid {
        /// Which value.
        what: EntryPart,
        /// The value, lossily as text.
        value: String,
        /// Why not.
        why: &'static str,
    },

    /// Reading or writing an authorized_keys file, its lock file or its directory failed.
    #[error("cannot {action} {path:?}")]
    AuthorizedKeysIo {
        /// What we were doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The authorized_keys file is not safe to edit (a symbolic link, not a regular file, writable
    /// by group or others, in a directory anyone may write to).
    #[error("refusing to edit authorized_keys file {path:?}: {why}")]
    AuthorizedKeysUnsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong, and the fix.
        why: String,
    },

    /// The key already has an entry with other options; it is never widened or narrowed silently.
    #[error(
        "{path:?} line {line} already has an entry for this key with other options ({existing}); \
         sshd uses the first entry for a key, and an existing entry is never widened or narrowed \
         silently: edit or remove that line yourself, then run again"
    )]
    AuthorizedKeysConflict {
        /// The file.
        path: PathBuf,
        /// 1-based line of the existing entry.
        line: usize,
        /// Its options.
        existing: String,
    },

    /// `borg serve` could not be started or relayed.
    #[error(transparent)]
    Serve(#[from] borg_pull_core::Error),

    /// The client's sshd accepted the TCP connection and closed it before key exchange finished:
    /// what OpenSSH >= 9.8 does to a source address it penalises (PerSourcePenalties) and any
    /// sshd does past MaxStartups.
    #[error(
        "{peer}: the client's sshd closed the connection {stage}, before key exchange; \
         OpenSSH >= 9.8 does this to a source address under PerSourcePenalties (after failed logins) \
         or with MaxStartups; wait for the penalty to expire or add this server to \
         PerSourcePenaltyExemptList in the client's sshd_config"
    )]
    ClosedBeforeKex {
        /// The client's sshd.
        peer: Peer,
        /// How far the connection got.
        stage: KexStage,
    },

    /// The agent and TCP methods: the client's ssh could not log in to the server's sshd, or what
    /// that sshd ran for the agent key was not `borg serve`; named from the client's ssh log (and
    /// borg's last words), not from borg's guess.
    #[error("borg on the client {} cannot reach borg serve: its ssh to the server {server} {cause}{}", .peer.host, said_text(.said))]
    ClientSsh {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The server's sshd as the client's ssh was told to reach it: `USER@HOST port PORT`.
        server: String,
        /// What went wrong.
        cause: ClientSshCause,
        /// The client's ssh log, escaped, lines joined with ` | ` (empty when it logged nothing).
        said: String,
    },

    /// The client's sshd offers none of the ciphers we do: the one forced with `--cipher` /
    /// `cipher =`, or (auto) none of our whole list.
    #[error(
        "{peer}: the client's sshd does not offer {}{} (it offers: {theirs}); {}",
        if choice.is_forced() { "the cipher " } else { "any cipher we offer: " },
        if choice.is_forced() { format!("{ours} (forced with --cipher {choice} / cipher = \"{choice}\")") } else { ours.clone() },
        if choice.is_forced() {
            "use the cipher auto (the default), or add it to Ciphers in the client's sshd_config"
        } else {
            "add aes128-gcm@openssh.com or chacha20-poly1305@openssh.com to Ciphers in the client's sshd_config"
        }
    )]
    CipherNotOffered {
        /// The client's sshd.
        peer: Peer,
        /// What was asked for.
        choice: crate::ssh::cipher::CipherChoice,
        /// The ciphers we offered, comma-separated.
        ours: String,
        /// The ciphers the sshd offered, comma-separated, escaped and cut at
        /// [`crate::limits::CIPHER_LIST_SHOWN`] characters.
        theirs: String,
    },

    /// `pull --via sftp`: the client's sshd refused the `sftp` subsystem.
    #[error(
        "{peer} refused the sftp subsystem: set `Subsystem sftp internal-sftp` in its sshd_config, \
         and for a restricted key `restrict,command=\"internal-sftp -R\"` in its authorized_keys line"
    )]
    SftpSubsystemRefused {
        /// The client's sshd.
        peer: Peer,
    },

    /// `pull --via sftp`: the client's SFTP server failed a request of ours, broke the protocol
    /// or one of our bounds.
    #[error("{peer}: {what}")]
    Sftp {
        /// The client's sshd.
        peer: Peer,
        /// What we were doing, e.g. `reading the client's accounts over SFTP`.
        what: &'static str,
        /// What the SFTP client saw.
        source: borg_pull_sftp::Error,
    },

    /// `pull --via sftp`: the client's tree cannot be mounted here (FUSE missing, mount point
    /// unusable, a stale mount that will not go).
    #[error("cannot mount the tree of the client {} here", .peer.host)]
    SftpMount {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// What the mount said.
        source: borg_pull_mount::Error,
    },

    /// `pull --via sftp`: the client's `/etc/passwd` or `/etc/group` is longer than we read.
    #[error(
        "the client {}'s {path} is longer than {limit} bytes; not read (a hostile or broken SFTP \
         server; run without root to store numeric owners only)",
        .peer.host
    )]
    SftpAccountsTooBig {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The file on the client.
        path: &'static str,
        /// The bound.
        limit: usize,
    },

    /// `pull --via sftp`: this server's borg create ran past the run's maximum time; it was
    /// stopped and the mount removed.
    #[error(
        "borg create over the sftp mount of the client {} was still running after the maximum run \
         time of {secs} s; it was stopped and the mount removed",
        .peer.host
    )]
    SftpMaxRuntime {
        /// The client's sshd (messages name its host).
        peer: Peer,
        /// The limit.
        secs: u64,
    },
}

/// How far a connection the client's sshd closed before key exchange got (for
/// [`Error::ClosedBeforeKex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexStage {
    /// Nothing at all arrived.
    NoBanner,
    /// Text arrived but no SSH banner: OpenSSH >= 9.8 writes "Not allowed at this time" to a
    /// penalised source or past MaxStartups. The text is the peer's, escaped and shortened.
    Refused(String),
    /// The SSH banner arrived, key exchange did not finish.
    AfterBanner,
}

impl std::fmt::Display for KexStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KexStage::NoBanner => f.write_str("without sending its SSH banner"),
            KexStage::Refused(said) => write!(f, "without sending its SSH banner (it said \"{said}\")"),
            KexStage::AfterBanner => f.write_str("right after its SSH banner"),
        }
    }
}

/// Why the client's ssh to the server failed ([`Error::ClientSsh`]); each names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSshCause {
    /// The server's sshd offered another host key than the one we pinned.
    HostKey,
    /// The server's sshd refused the agent key.
    Auth,
    /// No connection to the server's sshd (refused, unreachable, timed out, unknown name).
    Connect,
    /// Logged in, but what ran did not speak borg's protocol.
    NotBorgServe,
}

impl std::fmt::Display for ClientSshCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientSshCause::HostKey => {
                "refused the server's host key: it differs from the public host key we gave the \
                 client's ssh to pin (give the key of the sshd at that address, e.g. its \
                 /etc/ssh/ssh_host_ed25519_key.pub, or check that nothing else answers there)"
            }
            ClientSshCause::Auth => {
                "was refused the agent key (permission denied): the key is not in that user's \
                 authorized_keys on the server, or the account is locked (write the entry with \
                 borg-pull-server authorize --install, or use an ephemeral key)"
            }
            ClientSshCause::Connect => {
                "could not connect: nothing listens at that address and port, or it cannot be \
                 reached from where the connection starts (the client for the agent method, this \
                 server for the TCP method); check the server's sshd address"
            }
            ClientSshCause::NotBorgServe => {
                "logged in, but what the server's sshd ran for the agent key does not speak borg's \
                 protocol: the key's forced command in authorized_keys on the server is not borg \
                 serve (write the entry with borg-pull-server authorize), or borg serve cannot start \
                 there"
            }
        })
    }
}

fn said_text(said: &str) -> String {
    if said.is_empty() {
        String::new()
    } else {
        format!("; the client's ssh said: {said}")
    }
}

impl From<russh::Error> for Error {
    fn from(source: russh::Error) -> Self {
        Error::Ssh {
            context: "session",
            source,
        }
    }
}

/// Whether the agent holds more keys than were offered.
fn left_out(agent_keys: usize, agent_keys_held: u32) -> bool {
    usize::try_from(agent_keys_held).is_ok_and(|held| held > agent_keys)
}

/// What kind of failure an [`Error`] is: what a binary needs to pick its exit code and a person
/// needs to know where the fix lies.
///
/// Deliberately not `#[non_exhaustive]`: a new kind is a breaking change, so every binary's
/// exhaustive mapping to exit codes stops compiling until it gives the kind a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An option or argument is unusable as given.
    Usage,
    /// A bug of ours: a task ended abnormally.
    Internal,
    /// The SSH conversation failed in a way no other kind names (a protocol error, a request
    /// refused without a known cause, a channel that closed without an exit status).
    Protocol,
    /// Serving borg on this server failed mid-way, or this server lacks what it needs (no HOME for
    /// the default known_hosts file).
    Server,
    /// The run was interrupted (SIGINT/SIGTERM).
    Interrupted,
    /// The borg program on this server cannot be found or started.
    BorgUnavailable,
    /// The operating system refused a local operation (a file written or read on this server,
    /// authorized_keys edited for an ephemeral key).
    Os,
    /// The authorized_keys file already has an entry for the key with other options.
    AuthorizedKeysConflict,
    /// Host key verification failed, or known_hosts cannot be read or written.
    HostKey,
    /// The identity cannot be used, or the client's sshd refused it.
    Auth,
    /// The repository passphrase could not be obtained.
    Passphrase,
    /// No connection to the client or a jump host (or a jump host cannot reach the next host).
    Connect,
    /// The client is not set up for the job: a refused forward, a missing program or directory,
    /// a borg of another version, a cipher it does not offer, a helper that failed there.
    ClientSetup,
    /// The connection to the client was lost.
    ConnectionLost,
    /// The client broke a bound we set (no answer in time, oversized packets, floods, endless
    /// output).
    ClientMisbehaved,
    /// borg (or a restore's stream) ran past the maximum run time.
    MaxRuntime,
    /// The client's sshd closed the connection before key exchange (penalties, MaxStartups).
    RefusedBeforeKex,
    /// The agent and TCP methods: the server's sshd ran something other than borg serve for the
    /// agent key.
    NotBorgServe,
    /// `pull --via sftp`: the client's tree cannot be mounted on this server (FUSE missing, an
    /// unusable mount point, a stale mount that will not go).
    Mount,
}

impl Error {
    /// The kind of this error. An exhaustive match: a new variant does not compile until it is
    /// classified here. A jump host's failure is of its cause's kind.
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::InvalidOption(_)
            | Error::NulInArgument(_)
            | Error::ServerHostKey { .. }
            | Error::PublicKeyFile { .. }
            | Error::ForcedCommandInvalid { .. } => K::Usage,
            Error::BackgroundTask { .. } | Error::HandlerEnded(_) => K::Internal,
            Error::Ssh { .. }
            | Error::RequestDenied { .. }
            | Error::AgentFrameTooLarge { .. }
            | Error::AgentIdle { .. }
            | Error::TarNoExitStatus { .. }
            | Error::NoExitStatus { .. } => K::Protocol,
            Error::NoKnownHostsFile => K::Server,
            Error::Serve(e) => match e.kind() {
                borg_pull_core::error::ErrorKind::Usage => K::Usage,
                borg_pull_core::error::ErrorKind::BorgUnavailable => K::BorgUnavailable,
                borg_pull_core::error::ErrorKind::SocketUnsafe
                | borg_pull_core::error::ErrorKind::SocketInUse
                | borg_pull_core::error::ErrorKind::Os
                | borg_pull_core::error::ErrorKind::Relay
                | borg_pull_core::error::ErrorKind::BorgFailed => K::Server,
            },
            Error::Interrupted => K::Interrupted,
            Error::Io { .. } | Error::AuthorizedKeysIo { .. } | Error::AuthorizedKeysUnsafe { .. } => K::Os,
            Error::AuthorizedKeysConflict { .. } => K::AuthorizedKeysConflict,
            Error::UnknownHostKey(_)
            | Error::HostKeyChanged(_)
            | Error::HostKeyTypeUnknown(_)
            | Error::HostKeyRevoked(_)
            | Error::HostCertificateUnsupported(_)
            | Error::KnownHostsIo { .. } => K::HostKey,
            Error::SecretFileTooOpen {
                kind: SecretKind::RepoPassphrase,
                ..
            }
            | Error::Passphrase(_) => K::Passphrase,
            Error::SecretFileTooOpen {
                kind: SecretKind::Identity | SecretKind::IdentityPassphrase,
                ..
            }
            | Error::Identity { .. }
            | Error::IdentityEncrypted { .. }
            | Error::NoIdentity { .. }
            | Error::AuthFailed { .. }
            | Error::AuthCutOff { .. } => K::Auth,
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::JumpConnect { .. } => K::Connect,
            Error::JumpHost { source, .. } => source.kind(),
            Error::ClientSsh { cause, .. } => match cause {
                ClientSshCause::HostKey => K::HostKey,
                ClientSshCause::Auth => K::Auth,
                ClientSshCause::Connect => K::Connect,
                ClientSshCause::NotBorgServe => K::NotBorgServe,
            },
            Error::ForwardDenied { .. }
            | Error::TcpForwardDenied { .. }
            | Error::RemoteDirUnusable { .. }
            | Error::BorgVersionMismatch { .. }
            | Error::BorgGenerationMismatch { .. }
            | Error::RelayInstall { .. }
            | Error::AgentNotForwarded { .. }
            | Error::RemoteProgramMissing { .. }
            | Error::RemoteHelper { .. }
            | Error::RemoteHelperTimeout { .. }
            | Error::CipherNotOffered { .. }
            | Error::SftpSubsystemRefused { .. } => K::ClientSetup,
            // A refusal (no such file, permission denied) is how the client is set up; anything
            // else broke the protocol or a bound.
            Error::Sftp { source, .. } if source.is_status() => K::ClientSetup,
            Error::Sftp { .. } | Error::SftpAccountsTooBig { .. } => K::ClientMisbehaved,
            Error::SftpMount { .. } => K::Mount,
            Error::ConnectionLost { .. } => K::ConnectionLost,
            Error::NoAnswer { .. }
            | Error::OversizedPacket { .. }
            | Error::ChannelOpenFlood { .. }
            | Error::RemoteOutputTooLarge { .. } => K::ClientMisbehaved,
            Error::MaxRuntime { .. } | Error::RestoreMaxRuntime { .. } | Error::SftpMaxRuntime { .. } => {
                K::MaxRuntime
            }
            Error::ClosedBeforeKex { .. } => K::RefusedBeforeKex,
        }
    }

    /// The sshd this error is about, where it names one (a jump host's failure: the jump host).
    pub fn peer(&self) -> Option<&Peer> {
        match self {
            Error::Connect { peer, .. }
            | Error::ConnectTimeout { peer, .. }
            | Error::AuthFailed { peer, .. }
            | Error::AuthCutOff { peer, .. }
            | Error::JumpHost { peer, .. }
            | Error::JumpConnect { peer, .. }
            | Error::ConnectionLost { peer, .. }
            | Error::RemoteProgramMissing { peer, .. }
            | Error::BorgVersionMismatch { peer, .. }
            | Error::BorgGenerationMismatch { peer, .. }
            | Error::AgentNotForwarded { peer }
            | Error::RelayInstall { peer, .. }
            | Error::TcpForwardDenied { peer }
            | Error::RequestDenied { peer, .. }
            | Error::NoAnswer { peer, .. }
            | Error::OversizedPacket { peer, .. }
            | Error::ChannelOpenFlood { peer, .. }
            | Error::MaxRuntime { peer, .. }
            | Error::RemoteDirUnusable { peer, .. }
            | Error::RestoreMaxRuntime { peer, .. }
            | Error::TarNoExitStatus { peer }
            | Error::ForwardDenied { peer, .. }
            | Error::NoExitStatus { peer }
            | Error::ClosedBeforeKex { peer, .. }
            | Error::ClientSsh { peer, .. }
            | Error::CipherNotOffered { peer, .. }
            | Error::SftpSubsystemRefused { peer }
            | Error::Sftp { peer, .. }
            | Error::SftpMount { peer, .. }
            | Error::SftpAccountsTooBig { peer, .. }
            | Error::SftpMaxRuntime { peer, .. } => Some(peer),
            Error::UnknownHostKey(p)
            | Error::HostKeyChanged(p)
            | Error::HostKeyTypeUnknown(p)
            | Error::HostKeyRevoked(p)
            | Error::HostCertificateUnsupported(p) => Some(&p.peer),
            _ => None,
        }
    }

    /// Whether the bound on keys offered per login ([`crate::limits::MAX_KEY_OFFERS`]) left some
    /// of the agent's keys out of a refused login: naming the key is the fix.
    pub fn agent_keys_left_out(&self) -> bool {
        match self {
            Error::AuthFailed {
                agent_keys,
                agent_keys_held,
                ..
            } => left_out(*agent_keys, *agent_keys_held),
            _ => false,
        }
    }

    /// Whether this is a host key verification failure (unknown, changed, revoked, certificate).
    pub fn is_host_key(&self) -> bool {
        matches!(
            self,
            Error::UnknownHostKey(_)
                | Error::HostKeyChanged(_)
                | Error::HostKeyTypeUnknown(_)
                | Error::HostKeyRevoked(_)
                | Error::HostCertificateUnsupported(_)
        )
    }
}

/// A program that pull runs on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteProgram {
    /// `borg-pull-relay`, borg's `BORG_RSH`.
    Relay,
    /// borg itself.
    Borg,
    /// The client's OpenSSH `ssh` (the agent and TCP methods).
    Ssh,
    /// `tar`, which unpacks a restore on the client (`restore-tar`).
    Tar,
}

impl std::fmt::Display for RemoteProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteProgram::Relay => "relay",
            RemoteProgram::Borg => "borg",
            RemoteProgram::Ssh => "ssh",
            RemoteProgram::Tar => "tar",
        })
    }
}

fn agent_offered_none(agent: &Option<PathBuf>) -> String {
    match agent {
        Some(socket) => format!(
            "the agent at {} offered no key (or could not be reached), and ",
            socket.display()
        ),
        None => String::new(),
    }
}

fn keys_offered(identity: &std::path::Path, agent: &Option<PathBuf>, agent_keys: usize) -> String {
    let file = format!("identity {identity:?}");
    let keys = if agent_keys == 1 { "key" } else { "keys" };
    match agent {
        Some(socket) if agent_keys > 0 => {
            let agent = format!("the {agent_keys} {keys} of the agent at {}", socket.display());
            if identity.as_os_str().is_empty() {
                agent
            } else {
                format!("{agent} and {file}")
            }
        }
        Some(socket) => format!("{file} (the agent at {} offered no key)", socket.display()),
        None => file,
    }
}

/// The bound on keys offered per login, when it left some of the agent's keys out.
fn keys_left_out(agent_keys: usize, agent_keys_held: u32) -> String {
    if !left_out(agent_keys, agent_keys_held) {
        return String::new();
    }
    format!(
        " The agent holds {agent_keys_held} keys, but at most {} keys are offered per login: sshd \
         disconnects at MaxAuthTries (6 by default) failed attempts and OpenSSH >= 9.8 then \
         penalises this server's address; name the key the client authorises instead",
        crate::limits::MAX_KEY_OFFERS
    )
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// What a secret file holds (for [`Error::SecretFileTooOpen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// An SSH private key.
    Identity,
    /// The passphrase of an SSH private key.
    IdentityPassphrase,
    /// The borg repository passphrase.
    RepoPassphrase,
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecretKind::Identity => "identity",
            SecretKind::IdentityPassphrase => "identity passphrase file",
            SecretKind::RepoPassphrase => "passphrase file",
        })
    }
}

/// A part of an authorized_keys entry (for [`Error::ForcedCommandInvalid`]): which flag or file
/// fixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPart {
    /// The borg program of the forced command.
    BorgProgram,
    /// One of the forced command's other arguments.
    Argument,
    /// The repository path the forced command restricts to.
    RepositoryPath,
    /// The key's comment.
    KeyComment,
    /// A whole line written by someone else.
    Line,
}

impl std::fmt::Display for EntryPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryPart::BorgProgram => "borg program",
            EntryPart::Argument => "argument",
            EntryPart::RepositoryPath => "repository path",
            EntryPart::KeyComment => "key comment",
            EntryPart::Line => "authorized_keys line",
        })
    }
}

/// What a directory on the client is for (for [`Error::RemoteDirUnusable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteDirUse {
    /// `restore-tar`: tar unpacks into it (it must be writable).
    Restore,
    /// `pull --remote-dir`: borg runs in it (it must be searchable).
    RunBorg,
}

impl std::fmt::Display for RemoteDirUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteDirUse::Restore => "restore into",
            RemoteDirUse::RunBorg => "run borg in",
        })
    }
}

/// A helper's exit for people: its code, or that none arrived (the channel closed without one).
fn exit_text(status: Option<u32>) -> String {
    match status {
        Some(code) => format!("exit code {code}"),
        None => "no exit code".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_failed(identity: &str, agent: Option<&str>, agent_keys: usize) -> String {
        Error::AuthFailed {
            user: "u".into(),
            peer: crate::error::Peer::new("h", 22),
            identity: identity.into(),
            agent: agent.map(PathBuf::from),
            agent_keys,
            agent_keys_held: agent_keys as u32,
        }
        .to_string()
    }

    #[test]
    fn auth_failures_say_which_keys_were_offered() {
        let file = auth_failed("/k", None, 0);
        assert!(
            file.contains("for identity \"/k\";") && !file.contains("agent"),
            "{file}"
        );
        let agent = auth_failed("", Some("/run/a.sock"), 3);
        assert!(
            agent.contains("for the 3 keys of the agent at /run/a.sock;"),
            "{agent}"
        );
        let both = auth_failed("/k", Some("/run/a.sock"), 1);
        assert!(
            both.contains("the 1 key of the agent at /run/a.sock and identity \"/k\""),
            "{both}"
        );
        let empty_agent = auth_failed("/k", Some("/run/a.sock"), 0);
        assert!(
            empty_agent.contains("(the agent at /run/a.sock offered no key)"),
            "{empty_agent}"
        );
        let none = Error::NoIdentity {
            tried: vec![PathBuf::from("/h/.ssh/id_ed25519")],
            agent: Some(PathBuf::from("/run/a.sock")),
        }
        .to_string();
        assert!(none.contains("the agent at /run/a.sock offered no key"), "{none}");
    }

    #[test]
    fn keys_left_out_by_the_bound_are_counted_and_explained() {
        let all = auth_failed("", Some("/run/a.sock"), 3);
        assert!(!all.contains("at most"), "{all}");
        let mut e = Error::AuthFailed {
            user: "u".into(),
            peer: crate::error::Peer::new("h", 22),
            identity: "/k".into(),
            agent: Some(PathBuf::from("/run/a.sock")),
            agent_keys: 4,
            agent_keys_held: 12,
        };
        let text = e.to_string();
        assert!(
            text.contains("the 4 keys of the agent at /run/a.sock and identity \"/k\"")
                && text.contains("The agent holds 12 keys, but at most 5 keys are offered per login")
                && text.contains("MaxAuthTries"),
            "{text}"
        );
        e = Error::AuthCutOff {
            user: "u".into(),
            peer: crate::error::Peer::new("h", 22),
            offered: 3,
            said: "Too many authentication failures".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "u@h port 22: the client's sshd ended the login after 3 refused keys \
                              (it said \"Too many authentication failures\"): sshd does this at MaxAuthTries"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_close_before_key_exchange_says_how_far_it_got_and_the_fix() {
        let closed = |stage| {
            Error::ClosedBeforeKex {
                peer: crate::error::Peer::new("client", 2222),
                stage,
            }
            .to_string()
        };
        let refused = closed(KexStage::Refused("Not allowed at this time".into()));
        assert!(
            refused.starts_with(
                "client port 2222: the client's sshd closed the connection without sending its SSH \
                 banner (it said \"Not allowed at this time\"), before key exchange; OpenSSH >= 9.8"
            ),
            "{refused}"
        );
        assert!(
            refused.ends_with("PerSourcePenaltyExemptList in the client's sshd_config"),
            "{refused}"
        );
        assert!(closed(KexStage::NoBanner)
            .contains("closed the connection without sending its SSH banner, before"));
        assert!(closed(KexStage::AfterBanner)
            .contains("closed the connection right after its SSH banner, before"));
    }

    fn peer() -> Peer {
        Peer::new("web1", 2222)
    }

    fn io() -> std::io::Error {
        std::io::Error::other("the io cause")
    }

    fn problem() -> Box<HostKeyProblem> {
        Box::new(HostKeyProblem {
            host_port: "[web1]:2222".into(),
            peer: peer(),
            ..HostKeyProblem::default()
        })
    }

    /// A task ended abnormally, as a `JoinError` is made: cancelled.
    fn cancelled() -> tokio::task::JoinError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.expect_err("aborted")
        })
    }

    /// One of every variant, with the kind the exit tables give it.
    fn every_variant() -> Vec<(Error, ErrorKind)> {
        use borg_pull_core::version::Generation;
        use ErrorKind as K;
        let p = || PathBuf::from("/x");
        let s = || String::from("x");
        let core = |e| Error::Serve(e);
        vec![
            (Error::InvalidOption(s()), K::Usage),
            (Error::NulInArgument(s()), K::Usage),
            (Error::ServerHostKey { path: p(), why: s() }, K::Usage),
            (Error::PublicKeyFile { path: p(), why: s() }, K::Usage),
            (
                Error::ForcedCommandInvalid {
                    what: EntryPart::BorgProgram,
                    value: s(),
                    why: "NUL",
                },
                K::Usage,
            ),
            (
                core(borg_pull_core::Error::RepoNotAbsolute { path: p() }),
                K::Usage,
            ),
            (
                Error::BackgroundTask {
                    task: "reading",
                    source: cancelled(),
                },
                K::Internal,
            ),
            (Error::HandlerEnded(s()), K::Internal),
            (
                Error::Ssh {
                    context: "exec",
                    source: russh::Error::Disconnect,
                },
                K::Protocol,
            ),
            (
                Error::RequestDenied {
                    peer: peer(),
                    request: "a forward",
                },
                K::Protocol,
            ),
            (Error::AgentFrameTooLarge { len: 1, max: 0 }, K::Protocol),
            (Error::AgentIdle { secs: 1 }, K::Protocol),
            (Error::TarNoExitStatus { peer: peer() }, K::Protocol),
            (Error::NoExitStatus { peer: peer() }, K::Protocol),
            (Error::NoKnownHostsFile, K::Server),
            (core(borg_pull_core::Error::ServeIo(io())), K::Server),
            (Error::Interrupted, K::Interrupted),
            (
                core(borg_pull_core::Error::BorgNotFound { program: p() }),
                K::BorgUnavailable,
            ),
            (
                Error::Io {
                    context: s(),
                    source: io(),
                },
                K::Os,
            ),
            (
                Error::AuthorizedKeysIo {
                    action: "read",
                    path: p(),
                    source: io(),
                },
                K::Os,
            ),
            (Error::AuthorizedKeysUnsafe { path: p(), why: s() }, K::Os),
            (
                Error::AuthorizedKeysConflict {
                    path: p(),
                    line: 1,
                    existing: s(),
                },
                K::AuthorizedKeysConflict,
            ),
            (Error::UnknownHostKey(problem()), K::HostKey),
            (Error::HostKeyChanged(problem()), K::HostKey),
            (Error::HostKeyTypeUnknown(problem()), K::HostKey),
            (Error::HostKeyRevoked(problem()), K::HostKey),
            (Error::HostCertificateUnsupported(problem()), K::HostKey),
            (
                Error::KnownHostsIo {
                    action: "read",
                    path: p(),
                    source: io(),
                },
                K::HostKey,
            ),
            (
                Error::ClientSsh {
                    peer: peer(),
                    server: s(),
                    cause: ClientSshCause::HostKey,
                    said: s(),
                },
                K::HostKey,
            ),
            (
                Error::Identity {
                    path: p(),
                    source: russh::keys::Error::CouldNotReadKey,
                },
                K::Auth,
            ),
            (Error::IdentityEncrypted { path: p() }, K::Auth),
            (
                Error::SecretFileTooOpen {
                    kind: SecretKind::Identity,
                    path: p(),
                    mode: 0o644,
                },
                K::Auth,
            ),
            (
                Error::SecretFileTooOpen {
                    kind: SecretKind::IdentityPassphrase,
                    path: p(),
                    mode: 0o644,
                },
                K::Auth,
            ),
            (
                Error::NoIdentity {
                    tried: vec![p()],
                    agent: None,
                },
                K::Auth,
            ),
            (
                Error::AuthFailed {
                    user: s(),
                    peer: peer(),
                    identity: p(),
                    agent: None,
                    agent_keys: 0,
                    agent_keys_held: 0,
                },
                K::Auth,
            ),
            (
                Error::AuthCutOff {
                    user: s(),
                    peer: peer(),
                    offered: 6,
                    said: s(),
                },
                K::Auth,
            ),
            (
                Error::ClientSsh {
                    peer: peer(),
                    server: s(),
                    cause: ClientSshCause::Auth,
                    said: s(),
                },
                K::Auth,
            ),
            (Error::Passphrase(s()), K::Passphrase),
            (
                Error::SecretFileTooOpen {
                    kind: SecretKind::RepoPassphrase,
                    path: p(),
                    mode: 0o644,
                },
                K::Passphrase,
            ),
            (
                Error::Connect {
                    peer: peer(),
                    source: io(),
                },
                K::Connect,
            ),
            (
                Error::ConnectTimeout {
                    peer: peer(),
                    secs: 1,
                },
                K::Connect,
            ),
            (
                Error::JumpConnect {
                    peer: peer(),
                    target: peer(),
                    reason: s(),
                },
                K::Connect,
            ),
            (
                Error::ClientSsh {
                    peer: peer(),
                    server: s(),
                    cause: ClientSshCause::Connect,
                    said: s(),
                },
                K::Connect,
            ),
            (
                Error::ForwardDenied {
                    peer: peer(),
                    path: s(),
                    cause: ForwardDenial::Forbidden,
                },
                K::ClientSetup,
            ),
            (Error::TcpForwardDenied { peer: peer() }, K::ClientSetup),
            (
                Error::RemoteDirUnusable {
                    dir: s(),
                    peer: peer(),
                    why: s(),
                    purpose: RemoteDirUse::RunBorg,
                },
                K::ClientSetup,
            ),
            (
                Error::BorgVersionMismatch {
                    peer: peer(),
                    program: s(),
                    client: s(),
                    client_major: 1,
                    server: s(),
                    server_major: 2,
                },
                K::ClientSetup,
            ),
            (
                Error::BorgGenerationMismatch {
                    peer: peer(),
                    program: s(),
                    client: s(),
                    client_generation: Generation::Borg2Segments,
                    server: s(),
                    server_generation: Generation::Borg2StoreUnrestricted,
                },
                K::ClientSetup,
            ),
            (
                Error::RelayInstall {
                    peer: peer(),
                    why: s(),
                },
                K::ClientSetup,
            ),
            (Error::AgentNotForwarded { peer: peer() }, K::ClientSetup),
            (
                Error::RemoteProgramMissing {
                    program: s(),
                    role: RemoteProgram::Borg,
                    peer: peer(),
                    why: s(),
                },
                K::ClientSetup,
            ),
            (
                Error::RemoteHelper {
                    command: s(),
                    status: Some(1),
                    output: s(),
                },
                K::ClientSetup,
            ),
            (
                Error::RemoteHelperTimeout {
                    command: s(),
                    secs: 1,
                },
                K::ClientSetup,
            ),
            (
                Error::CipherNotOffered {
                    peer: peer(),
                    choice: crate::ssh::cipher::CipherChoice::Aes256Gcm,
                    ours: s(),
                    theirs: s(),
                },
                K::ClientSetup,
            ),
            (
                Error::ConnectionLost {
                    peer: peer(),
                    context: "exec",
                },
                K::ConnectionLost,
            ),
            (
                Error::NoAnswer {
                    peer: peer(),
                    what: "exec",
                    secs: 1,
                },
                K::ClientMisbehaved,
            ),
            (
                Error::OversizedPacket {
                    peer: peer(),
                    len: 2,
                    max: 1,
                },
                K::ClientMisbehaved,
            ),
            (
                Error::ChannelOpenFlood {
                    peer: peer(),
                    count: 9,
                },
                K::ClientMisbehaved,
            ),
            (
                Error::RemoteOutputTooLarge {
                    command: s(),
                    limit: 1,
                    output: s(),
                },
                K::ClientMisbehaved,
            ),
            (
                Error::MaxRuntime {
                    peer: peer(),
                    secs: 1,
                },
                K::MaxRuntime,
            ),
            (
                Error::RestoreMaxRuntime {
                    peer: peer(),
                    secs: 1,
                },
                K::MaxRuntime,
            ),
            (
                Error::ClosedBeforeKex {
                    peer: peer(),
                    stage: KexStage::NoBanner,
                },
                K::RefusedBeforeKex,
            ),
            (
                Error::ClientSsh {
                    peer: peer(),
                    server: s(),
                    cause: ClientSshCause::NotBorgServe,
                    said: s(),
                },
                K::NotBorgServe,
            ),
            (Error::SftpSubsystemRefused { peer: peer() }, K::ClientSetup),
            (
                Error::Sftp {
                    peer: peer(),
                    what: "reading /etc/passwd",
                    source: borg_pull_sftp::Error::PermissionDenied {
                        request: borg_pull_sftp::Request {
                            op: borg_pull_sftp::Op::Open,
                            path: b"/etc/passwd".to_vec(),
                        },
                    },
                },
                K::ClientSetup,
            ),
            (
                Error::Sftp {
                    peer: peer(),
                    what: "reading /etc/passwd",
                    source: borg_pull_sftp::Error::Shutdown,
                },
                K::ClientMisbehaved,
            ),
            (
                Error::SftpAccountsTooBig {
                    peer: peer(),
                    path: "/etc/passwd",
                    limit: 1,
                },
                K::ClientMisbehaved,
            ),
            (
                Error::SftpMount {
                    peer: peer(),
                    source: borg_pull_mount::Error::NoFusermount,
                },
                K::Mount,
            ),
            (
                Error::SftpMaxRuntime {
                    peer: peer(),
                    secs: 1,
                },
                K::MaxRuntime,
            ),
            (
                Error::JumpHost {
                    peer: peer(),
                    source: Box::new(Error::AuthCutOff {
                        user: s(),
                        peer: peer(),
                        offered: 6,
                        said: s(),
                    }),
                },
                K::Auth,
            ),
        ]
    }

    macro_rules! kind_cases {
        ($($name:ident: $kind:ident,)*) => {$(
            #[test]
            fn $name() {
                let all = every_variant();
                let listed: Vec<&Error> =
                    all.iter().filter(|(_, k)| *k == ErrorKind::$kind).map(|(e, _)| e).collect();
                assert!(!listed.is_empty(), "no variant of kind {:?}", ErrorKind::$kind);
                for e in listed {
                    assert_eq!(e.kind(), ErrorKind::$kind, "{e:?}");
                }
            }
        )*};
    }

    kind_cases! {
        usage_errors_are_classified_usage: Usage,
        failed_tasks_are_classified_internal_not_usage: Internal,
        protocol_failures_are_classified_protocol: Protocol,
        failures_of_this_server_are_classified_server: Server,
        an_interruption_is_classified_interrupted: Interrupted,
        an_unusable_borg_here_is_classified_borg_unavailable: BorgUnavailable,
        refused_local_files_are_classified_os: Os,
        a_conflicting_entry_is_classified_as_such: AuthorizedKeysConflict,
        host_key_failures_are_classified_host_key: HostKey,
        login_failures_are_classified_auth: Auth,
        passphrase_failures_are_classified_passphrase: Passphrase,
        connection_failures_are_classified_connect: Connect,
        a_client_not_set_up_is_classified_client_setup: ClientSetup,
        a_lost_connection_is_classified_connection_lost: ConnectionLost,
        a_client_breaking_a_bound_is_classified_client_misbehaved: ClientMisbehaved,
        a_run_past_its_time_is_classified_max_runtime: MaxRuntime,
        a_close_before_key_exchange_is_classified_refused_before_kex: RefusedBeforeKex,
        a_forced_command_not_borg_serve_is_classified_not_borg_serve: NotBorgServe,
        an_sftp_tree_that_cannot_be_mounted_is_classified_mount: Mount,
    }

    #[test]
    fn no_message_repeats_its_source() {
        for (e, _) in every_variant() {
            let text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                let cause = source.to_string();
                assert!(!text.contains(&cause), "said twice: {text} / {cause}");
            }
        }
    }

    #[test]
    fn a_peer_is_shown_one_way_wherever_a_message_names_the_connection() {
        for (e, _) in every_variant() {
            // known_hosts' own name for the host (`[web1]:2222`) and ssh-keyscan's `-p` are
            // commands to copy, not the peer shown.
            let text = e.to_string().replace("[web1]:2222", "").replace("-p 2222", "");
            assert!(!text.contains("web1:2222"), "{text}");
            if text.contains("2222") {
                assert!(text.contains("web1 port 2222"), "{text}");
            }
        }
        assert_eq!(
            Error::JumpConnect {
                peer: peer(),
                target: Peer::new("db", 22),
                reason: "refused".into()
            }
            .peer()
            .map(ToString::to_string),
            Some("web1 port 2222".to_owned())
        );
    }
}
