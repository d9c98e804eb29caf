//! What can end `restore-tar --via sftp` beyond the SSH session itself (that is the tunnel's
//! [`crate::Error`]; a missing or read-only directory is [`crate::Error::RemoteDirUnusable`], as
//! for the tar way).

use super::tar_reader::TarError;
use super::writer::Fatal;

/// A failure of `restore-tar --via sftp`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SftpRestoreError {
    /// An option that makes no sense with `--via sftp`.
    #[error("restore-tar --via sftp: {0}")]
    Usage(String),

    /// The client's sshd refused the `sftp` subsystem.
    #[error(
        "the ssh server {host} refused the sftp subsystem (set `Subsystem sftp internal-sftp` in its \
         sshd_config, and for a restricted key `command=\"internal-sftp\"` in its authorized_keys line)"
    )]
    SubsystemRefused {
        /// Host as given.
        host: String,
    },

    /// The client's SFTP server ended the session, broke the protocol or a bound, or let a
    /// request go past its deadline; the restore stopped there.
    #[error("{0}; the restore stopped (the directory may hold a partial restore)")]
    Sftp(#[from] borg_pull_sftp::Error),

    /// borg export-tar's output is not a tar we can read.
    #[error("{0}; the restore stopped (the directory may hold a partial restore)")]
    Tar(#[from] TarError),

    /// The archive needs more deferred work than a restore keeps in memory.
    #[error("{0}")]
    TooMany(Fatal),

    /// The restore ran longer than `--max-runtime`.
    #[error(
        "the restore to {host} over sftp was still running after the maximum run time of {secs} s; \
         borg export-tar was stopped and the SFTP session closed (the directory may hold a partial restore)"
    )]
    MaxRuntime {
        /// Host as given.
        host: String,
        /// The limit.
        secs: u64,
    },
}

impl From<Fatal> for SftpRestoreError {
    fn from(e: Fatal) -> Self {
        match e {
            Fatal::Tar(e) => SftpRestoreError::Tar(e),
            Fatal::Sftp(e) => SftpRestoreError::Sftp(e),
            too_many @ Fatal::TooMany { .. } => SftpRestoreError::TooMany(too_many),
        }
    }
}

impl SftpRestoreError {
    /// The kind of this failure; exhaustive, as [`crate::Error::kind`].
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        use borg_pull_sftp::Error as S;
        match self {
            SftpRestoreError::Usage(_) | SftpRestoreError::TooMany(_) => K::Usage,
            SftpRestoreError::SubsystemRefused { .. } => K::ClientSetup,
            SftpRestoreError::Sftp(e) if e.is_status() => K::ClientSetup,
            SftpRestoreError::Sftp(S::Closed { .. }) => K::ConnectionLost,
            SftpRestoreError::Sftp(S::Shutdown) => K::Internal,
            SftpRestoreError::Sftp(_) => K::ClientMisbehaved,
            SftpRestoreError::Tar(_) => K::Server,
            SftpRestoreError::MaxRuntime { .. } => K::MaxRuntime,
        }
    }
}

impl From<SftpRestoreError> for crate::Error {
    fn from(e: SftpRestoreError) -> Self {
        crate::Error::SftpRestore(Box::new(e))
    }
}
