//! What can go wrong in `pull --via sftp` beyond the SSH session itself (that is the tunnel's
//! [`crate::Error`]).

use std::path::PathBuf;

/// A failure of `pull --via sftp`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SftpPullError {
    /// An option or argument that makes no sense with `--via sftp`.
    #[error("--via sftp: {0}")]
    Usage(String),

    /// The client's sshd refused the `sftp` subsystem.
    #[error(
        "the ssh server {host} refused the sftp subsystem (set `Subsystem sftp internal-sftp` in its \
         sshd_config, and for a restricted key `command=\"internal-sftp -R\"` in its authorized_keys line)"
    )]
    SubsystemRefused {
        /// Host as given.
        host: String,
    },

    /// The client's SFTP server failed, broke the protocol or a bound.
    #[error(transparent)]
    Sftp(#[from] borg_pull_sftp::Error),

    /// The client's tree could not be mounted here (FUSE missing, mount point unusable, stale
    /// mount that will not go) or unmounted.
    #[error("--via sftp: {0}")]
    Mount(#[from] borg_pull_mount::Error),

    /// The client's `/etc/passwd` or `/etc/group` is longer than we read.
    #[error(
        "the client's {path} is longer than {limit} bytes; not read (a hostile or broken SFTP server; \
         use --numeric-ids)"
    )]
    AccountsTooBig {
        /// The file on the client.
        path: String,
        /// The bound.
        limit: usize,
    },

    /// A file or directory of ours on this server.
    #[error("{context}: {source}")]
    Local {
        /// What we were doing, naming the path.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },

    /// The borg program on this server could not be started.
    #[error("cannot run {program} on this server: {source} (install borg or give its path with --borg)")]
    SpawnBorg {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// borg ran longer than `--max-runtime`; it was stopped and the mount removed.
    #[error(
        "borg create over the sftp mount of {host} was still running after the maximum run time of \
         {secs} s; it was stopped and the mount removed"
    )]
    MaxRuntime {
        /// Host as given.
        host: String,
        /// The limit.
        secs: u64,
    },
}

impl SftpPullError {
    /// The kind of this failure; exhaustive, as [`crate::Error::kind`].
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            SftpPullError::Usage(_) => K::Usage,
            SftpPullError::SubsystemRefused { .. } => K::ClientSetup,
            SftpPullError::Sftp(e) if e.is_status() => K::ClientSetup,
            SftpPullError::Sftp(_) | SftpPullError::AccountsTooBig { .. } => K::ClientMisbehaved,
            SftpPullError::Mount(_) => K::SftpMount,
            SftpPullError::Local { .. } => K::Os,
            SftpPullError::SpawnBorg { .. } => K::BorgUnavailable,
            SftpPullError::MaxRuntime { .. } => K::MaxRuntime,
        }
    }
}
