//! The one error type of borg-pull-core.
//!
//! Every message names the object (socket path, directory, program), the cause and the likely fix,
//! because these lines end up in front of a sysadmin as borg's `Remote: ...` output or in a journal.

use std::path::PathBuf;

/// Result alias for borg-pull-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in borg-pull-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `borg` (or the configured borg program) could not be started.
    #[error("cannot start {program:?} serve: {source} (is borgbackup installed?)")]
    SpawnBorg {
        /// The program we tried to run.
        program: PathBuf,
        /// Why exec failed.
        source: std::io::Error,
    },
    /// `borg --version` could not be run.
    #[error("cannot run {program:?} --version: {source} (is borgbackup installed?)")]
    SpawnBorgVersion {
        /// The program we tried to run.
        program: PathBuf,
        /// Why exec failed.
        source: std::io::Error,
    },
    /// `borg --version` did not print a borg 1.x or 2.x version.
    #[error("{program:?} --version did not print a borg 1.x or 2.x version (got {output:?}); is it borg?")]
    BorgVersionUnknown {
        /// The program.
        program: PathBuf,
        /// What it printed (escaped, cut).
        output: String,
    },
    /// Creating the repository locally (`--init`) failed.
    #[error("{program:?} could not create the repository {repo:?} ({status}): {output}")]
    InitFailed {
        /// The borg program.
        program: PathBuf,
        /// The repository.
        repo: PathBuf,
        /// How borg exited.
        status: std::process::ExitStatus,
        /// What borg printed (escaped, cut).
        output: String,
    },
    /// A setting that the server's borg version has no flag for.
    #[error("borg {version} serve has no {flag} (it exists in borg 1.x and 2.0.0b1-b9 only)")]
    UnsupportedByBorg {
        /// The server borg's version.
        version: crate::version::BorgVersion,
        /// The flag, e.g. `--storage-quota`.
        flag: &'static str,
    },
    /// The server's borg is a 2.0 beta whose serve cannot refuse deletes (2.0.0b10-b16: borgstore
    /// repositories, `--append-only` not implemented, no permissions yet).
    #[error(
        "borg {version} serve cannot refuse deletes (in borg 2.0.0b10-b16 --append-only does nothing \
         and there are no permissions yet), so a client could delete the repository: use borg \
         2.0.0b17 or later (or 2.0.0b9 and earlier) on both ends, or allow deletes explicitly"
    )]
    CannotRefuseDeletes {
        /// The server borg's version.
        version: crate::version::BorgVersion,
    },
    /// The repository path handed to the server is unusable as a restriction.
    #[error(
        "repository path {path:?} must be absolute (borg serve --restrict-to-repo compares absolute paths)"
    )]
    RepoNotAbsolute {
        /// The path as given.
        path: PathBuf,
    },
    /// A storage quota borg would not accept (or would read differently).
    #[error("storage quota {value:?} is invalid: {reason}")]
    StorageQuotaInvalid {
        /// The quota as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// I/O on a `borg serve` child's pipes failed.
    #[error("relaying to borg serve failed: {0}")]
    ServeIo(#[source] std::io::Error),
    /// The socket path cannot be a UNIX socket address (no file name, or too long for `sun_path`).
    #[error("socket path {path:?} is unusable: {reason}")]
    SocketPathInvalid {
        /// The path as given.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
    /// The socket's directory is missing and so is the directory that should hold it.
    #[error(
        "cannot create socket directory {dir:?}: its parent {parent:?} does not exist (create it first; \
         under /run, which is emptied at boot, add a tmpfiles.d line such as `d {dir_display} 0700 USER USER -` \
         or use RuntimeDirectory= in the systemd unit)"
    )]
    SocketDirParentMissing {
        /// The socket's directory.
        dir: PathBuf,
        /// `dir` as plain text, for the suggested tmpfiles.d line.
        dir_display: String,
        /// Its missing parent.
        parent: PathBuf,
    },
    /// Creating, inspecting or fixing the socket's directory failed.
    #[error(
        "cannot prepare socket directory {dir:?}: {source} (this process's user must be able to \
         create it and read its attributes)"
    )]
    SocketDirIo {
        /// The socket's directory.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The socket's parent path exists but is not a directory.
    #[error("socket directory {dir:?} is not a directory (choose a socket path inside a directory)")]
    SocketDirNotDirectory {
        /// The offending path.
        dir: PathBuf,
    },
    /// The socket's directory is a symbolic link, which could be repointed after our checks.
    #[error(
        "socket directory {dir:?} is a symbolic link; refusing to follow it (use the directory it points to)"
    )]
    SocketDirSymlink {
        /// The socket's directory as given.
        dir: PathBuf,
    },
    /// A directory above the socket's directory would let another user swap it (OpenSSH's
    /// `safe_path` rule: every ancestor owned by root or us and not writable by others, unless sticky).
    #[error(
        "socket directory {dir:?} is not safe: {ancestor:?} above it {problem} (owner uid {owner}, \
         mode {mode:04o}), so another user could replace the directory; every directory above the \
         socket must belong to root or uid {uid} and not be writable by group or others (unless sticky, like /tmp)"
    )]
    SocketDirAncestorUnsafe {
        /// The socket's directory as given.
        dir: PathBuf,
        /// The offending directory above it (resolved path).
        ancestor: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// Our effective uid.
        uid: u32,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Group or others may write to the socket's directory, so they could replace the socket.
    #[error(
        "socket directory {dir:?} is writable by group or others (mode {mode:04o}), so another user could \
         replace the socket; run `chmod 700 {dir_display}`"
    )]
    SocketDirInsecure {
        /// The socket's directory.
        dir: PathBuf,
        /// `dir` as plain text, for the suggested command.
        dir_display: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket's directory belongs to another user, who could replace the socket.
    #[error(
        "socket directory {dir:?} belongs to uid {owner}, not to uid {uid} of this process \
         (run `chown {uid} {dir_display}`, or pick a directory of your own)"
    )]
    SocketDirNotOwned {
        /// The socket's directory.
        dir: PathBuf,
        /// `dir` as plain text, for the suggested command.
        dir_display: String,
        /// The directory's owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// Another process is listening on the socket: never take it over.
    #[error(
        "socket {path:?} is in use: another listener answers on it or holds its lock file (stop that \
         listener first)"
    )]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the socket path: never delete it.
    #[error("cannot listen on {path:?}: a {kind} is in the way (move it away)")]
    SocketPathOccupied {
        /// The socket path.
        path: PathBuf,
        /// What is there ("regular file", "directory", ...).
        kind: &'static str,
    },
    /// An existing socket file could not be probed or removed.
    #[error("cannot check or remove existing socket {path:?}: {source} (remove it by hand if it is stale)")]
    StaleSocket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Binding the socket or setting its mode failed.
    #[error("cannot listen on socket {path:?}: {source} (its directory must belong to this process's user)")]
    SocketBind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `LISTEN_FDS` was set but the inherited file descriptor is not a UNIX stream listener.
    #[error(
        "systemd passed a socket (LISTEN_FDS) that this server cannot accept connections on: \
         {source} (the .socket unit needs ListenStream=/path/to.sock and Accept=no)"
    )]
    SystemdSocket {
        /// Why the inherited descriptor was rejected.
        source: std::io::Error,
    },
    /// The borg program is not on `PATH` or not executable.
    #[error("cannot find borg program {program:?} (is borgbackup installed?)")]
    BorgNotFound {
        /// The program as configured.
        program: PathBuf,
    },
    /// The argv borg appended to `BORG_RSH` is one ssh itself would refuse.
    #[error("cannot parse the ssh arguments given to borg-pull-relay at {arg:?}: {reason} (check BORG_RSH)")]
    RshArgs {
        /// The offending argument.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing exists at the relay's socket path.
    #[error(
        "cannot connect to {path:?}: no such socket (is borg-pull-server listening / was the ssh forward set up?)"
    )]
    SocketMissing {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket or a directory on its path is not accessible to this user.
    #[error(
        "cannot connect to {path:?}: permission denied (the socket's directory must be searchable and \
         the socket writable by this user: check owner and mode with `ls -ld` on both)"
    )]
    SocketPermission {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket file exists but no process accepts connections on it.
    #[error(
        "cannot connect to {path:?}: connection refused (stale socket nobody listens on: remove it or \
         restart the listener)"
    )]
    SocketRefused {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists but is not a UNIX socket.
    #[error("cannot connect to {path:?}: not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Any other failure to connect to the relay's socket.
    #[error("cannot connect to {path:?}: {source}")]
    SocketConnect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Copying bytes in one direction of a relay failed mid-stream.
    #[error("relaying {direction} failed: {source} (did borg, borg serve or the ssh forward exit early?)")]
    Relay {
        /// Which way the bytes were flowing, e.g. `stdin -> /run/borg/x.sock`.
        direction: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The relay could not take over this process's stdin/stdout.
    #[error("cannot set up stdin/stdout for relaying: {0}")]
    RelayStdio(#[source] std::io::Error),
}
