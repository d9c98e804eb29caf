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
    /// `borg` (or the program given with `--borg`) could not be started.
    #[error("cannot start {program:?} serve: {source} (is borgbackup installed? pass --borg PATH)")]
    SpawnBorg {
        /// The program we tried to run.
        program: PathBuf,
        /// Why exec failed.
        source: std::io::Error,
    },
    /// The repository path handed to the server is unusable as a restriction.
    #[error(
        "repository path {path:?} must be absolute (borg serve --restrict-to-repo compares absolute paths)"
    )]
    RepoNotAbsolute {
        /// The path as given.
        path: PathBuf,
    },
    /// I/O on a `borg serve` child's pipes failed.
    #[error("relaying to borg serve failed: {0}")]
    ServeIo(#[source] std::io::Error),
}
