//! The one error type of borg-pull-core.
//!
//! Every message names the object (socket path, directory, program), the cause and the likely fix,
//! because these lines end up in front of a sysadmin as borg's `Remote: ...` output or in a journal.
//!
//! Each cause is said once: a variant either names it in its message or hands it out as
//! [`std::error::Error::source`], never both; [`Chain`] prints a whole chain on one line.
//! [`Error::kind`] classifies every variant, so a binary maps kinds, not variants, to exit codes.

use std::path::PathBuf;

/// Result alias for borg-pull-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in borg-pull-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `borg` (or the configured borg program) could not be started.
    #[error("cannot start {program:?} serve (is borgbackup installed?)")]
    SpawnBorg {
        /// The program we tried to run.
        program: PathBuf,
        /// Why exec failed.
        source: std::io::Error,
    },
    /// `borg --version` could not be run.
    #[error("cannot run {program:?} --version (is borgbackup installed?)")]
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
    /// I/O on a `borg serve` child's pipes failed, or what the client sent was refused before it
    /// reached borg (its text says why, so it is named in the message, not handed out as a source).
    #[error("relaying to borg serve failed: {0}")]
    ServeIo(std::io::Error),
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
        "cannot prepare socket directory {dir:?} (this process's user must be able to create it and \
         read its attributes)"
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
    #[error("cannot check or remove existing socket {path:?} (remove it by hand if it is stale)")]
    StaleSocket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Binding the socket or setting its mode failed.
    #[error("cannot listen on socket {path:?} (its directory must belong to this process's user)")]
    SocketBind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `LISTEN_FDS` was set but the inherited file descriptor is not a UNIX stream listener.
    #[error(
        "systemd passed a socket (LISTEN_FDS) that this server cannot accept connections on (the \
         .socket unit needs ListenStream=/path/to.sock and Accept=no)"
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
    #[error("cannot connect to {path:?}")]
    SocketConnect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Copying bytes in one direction of a relay failed mid-stream.
    #[error("relaying {direction} failed (did borg, borg serve or the ssh forward exit early?)")]
    Relay {
        /// Which way the bytes were flowing, e.g. `stdin -> /run/borg/x.sock`.
        direction: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The relay could not take over this process's stdin/stdout.
    #[error("cannot set up stdin/stdout for relaying: {0}")]
    RelayStdio(std::io::Error),
}

/// What kind of failure an [`Error`] is: what a binary needs to pick its exit code and a person
/// needs to know where the fix lies.
///
/// Deliberately not `#[non_exhaustive]`: a new kind is a breaking change, so every binary's
/// exhaustive mapping to exit codes stops compiling until it gives the kind a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A setting is unusable as given (repository path, quota, socket path, a flag the server's
    /// borg lacks): the caller's input is wrong.
    Usage,
    /// The borg program on this server cannot be found, started or recognised.
    BorgUnavailable,
    /// The listener's socket cannot be created safely (its directory, or something in the way).
    SocketUnsafe,
    /// Another listener serves the socket.
    SocketInUse,
    /// The operating system refused binding the socket or the one systemd passed.
    Os,
    /// Reaching the listener's socket or moving bytes to and from borg failed, or borg's argv for
    /// the relay was unusable.
    Relay,
    /// borg ran and failed (creating the repository).
    BorgFailed,
}

impl Error {
    /// The kind of this error. An exhaustive match: a new variant does not compile until it is
    /// classified here.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::RepoNotAbsolute { .. }
            | Error::SocketPathInvalid { .. }
            | Error::StorageQuotaInvalid { .. }
            | Error::UnsupportedByBorg { .. }
            | Error::CannotRefuseDeletes { .. } => ErrorKind::Usage,
            Error::BorgNotFound { .. }
            | Error::SpawnBorg { .. }
            | Error::SpawnBorgVersion { .. }
            | Error::BorgVersionUnknown { .. } => ErrorKind::BorgUnavailable,
            Error::SocketDirParentMissing { .. }
            | Error::SocketDirIo { .. }
            | Error::SocketDirNotDirectory { .. }
            | Error::SocketDirInsecure { .. }
            | Error::SocketDirNotOwned { .. }
            | Error::SocketDirSymlink { .. }
            | Error::SocketDirAncestorUnsafe { .. }
            | Error::SocketPathOccupied { .. }
            | Error::StaleSocket { .. } => ErrorKind::SocketUnsafe,
            Error::SocketInUse { .. } => ErrorKind::SocketInUse,
            Error::SocketBind { .. } | Error::SystemdSocket { .. } => ErrorKind::Os,
            Error::ServeIo(_)
            | Error::RshArgs { .. }
            | Error::SocketMissing { .. }
            | Error::SocketPermission { .. }
            | Error::SocketRefused { .. }
            | Error::NotASocket { .. }
            | Error::SocketConnect { .. }
            | Error::Relay { .. }
            | Error::RelayStdio(_) => ErrorKind::Relay,
            Error::InitFailed { .. } => ErrorKind::BorgFailed,
        }
    }
}

/// An error and its causes on one line, `outer: inner: innermost`: how a message is printed
/// where only one line fits (a log line, a report field). A cause a message already names is not
/// handed out as a source, so nothing is said twice.
///
/// ```
/// use borg_pull_core::error::{Chain, Error};
/// let e = Error::SocketConnect {
///     path: "/run/x.sock".into(),
///     source: std::io::Error::other("boom"),
/// };
/// assert_eq!(Chain(&e).to_string(), "cannot connect to \"/run/x.sock\": boom");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        // Bounded by the chain's length, which our own types keep short; a cycle is impossible
        // (each level owns the next).
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io() -> std::io::Error {
        std::io::Error::other("the io cause")
    }

    fn version() -> crate::version::BorgVersion {
        crate::version::BorgVersion::parse("borg 2.0.0b12").expect("a borg version")
    }

    /// One of every variant, with the kind the exit tables give it.
    fn every_variant() -> Vec<(Error, ErrorKind)> {
        let p = || PathBuf::from("/x");
        use ErrorKind as K;
        vec![
            (
                Error::SpawnBorg {
                    program: p(),
                    source: io(),
                },
                K::BorgUnavailable,
            ),
            (
                Error::SpawnBorgVersion {
                    program: p(),
                    source: io(),
                },
                K::BorgUnavailable,
            ),
            (
                Error::BorgVersionUnknown {
                    program: p(),
                    output: "x".into(),
                },
                K::BorgUnavailable,
            ),
            (Error::BorgNotFound { program: p() }, K::BorgUnavailable),
            (
                Error::InitFailed {
                    program: p(),
                    repo: p(),
                    status: std::os::unix::process::ExitStatusExt::from_raw(2 << 8),
                    output: "x".into(),
                },
                K::BorgFailed,
            ),
            (
                Error::UnsupportedByBorg {
                    version: version(),
                    flag: "--storage-quota",
                },
                K::Usage,
            ),
            (Error::CannotRefuseDeletes { version: version() }, K::Usage),
            (Error::RepoNotAbsolute { path: p() }, K::Usage),
            (
                Error::StorageQuotaInvalid {
                    value: "1".into(),
                    reason: "small",
                },
                K::Usage,
            ),
            (
                Error::SocketPathInvalid {
                    path: p(),
                    reason: "long",
                },
                K::Usage,
            ),
            (Error::ServeIo(io()), K::Relay),
            (
                Error::SocketDirParentMissing {
                    dir: p(),
                    dir_display: "/x".into(),
                    parent: p(),
                },
                K::SocketUnsafe,
            ),
            (
                Error::SocketDirIo {
                    dir: p(),
                    source: io(),
                },
                K::SocketUnsafe,
            ),
            (Error::SocketDirNotDirectory { dir: p() }, K::SocketUnsafe),
            (Error::SocketDirSymlink { dir: p() }, K::SocketUnsafe),
            (
                Error::SocketDirAncestorUnsafe {
                    dir: p(),
                    ancestor: p(),
                    owner: 1,
                    mode: 0o777,
                    uid: 0,
                    problem: "is writable",
                },
                K::SocketUnsafe,
            ),
            (
                Error::SocketDirInsecure {
                    dir: p(),
                    dir_display: "/x".into(),
                    mode: 0o777,
                },
                K::SocketUnsafe,
            ),
            (
                Error::SocketDirNotOwned {
                    dir: p(),
                    dir_display: "/x".into(),
                    owner: 1,
                    uid: 0,
                },
                K::SocketUnsafe,
            ),
            (
                Error::SocketPathOccupied {
                    path: p(),
                    kind: "directory",
                },
                K::SocketUnsafe,
            ),
            (
                Error::StaleSocket {
                    path: p(),
                    source: io(),
                },
                K::SocketUnsafe,
            ),
            (Error::SocketInUse { path: p() }, K::SocketInUse),
            (
                Error::SocketBind {
                    path: p(),
                    source: io(),
                },
                K::Os,
            ),
            (Error::SystemdSocket { source: io() }, K::Os),
            (
                Error::RshArgs {
                    arg: "-x".into(),
                    reason: "no".into(),
                },
                K::Relay,
            ),
            (Error::SocketMissing { path: p() }, K::Relay),
            (Error::SocketPermission { path: p() }, K::Relay),
            (Error::SocketRefused { path: p() }, K::Relay),
            (Error::NotASocket { path: p() }, K::Relay),
            (
                Error::SocketConnect {
                    path: p(),
                    source: io(),
                },
                K::Relay,
            ),
            (
                Error::Relay {
                    direction: "a -> b".into(),
                    source: io(),
                },
                K::Relay,
            ),
            (Error::RelayStdio(io()), K::Relay),
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
        an_unusable_borg_is_classified_borg_unavailable: BorgUnavailable,
        unsafe_socket_places_are_classified_socket_unsafe: SocketUnsafe,
        a_socket_in_use_is_classified_socket_in_use: SocketInUse,
        refusals_of_the_os_are_classified_os: Os,
        relay_failures_are_classified_relay: Relay,
        a_failed_borg_is_classified_borg_failed: BorgFailed,
    }

    #[test]
    fn no_message_repeats_its_source() {
        for (e, _) in every_variant() {
            let text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                assert!(!text.contains(&source.to_string()), "said twice: {text}");
            }
            assert!(
                !text.contains("the io cause") || std::error::Error::source(&e).is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        let e = Error::SocketBind {
            path: PathBuf::from("/run/x.sock"),
            source: io(),
        };
        let text = Chain(&e).to_string();
        assert_eq!(text.matches("the io cause").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot listen on socket \"/run/x.sock\""),
            "{text}"
        );
        let wrapped = Error::ServeIo(io());
        assert!(std::error::Error::source(&wrapped).is_none());
        assert_eq!(
            Chain(&wrapped).to_string(),
            "relaying to borg serve failed: the io cause"
        );
    }
}
