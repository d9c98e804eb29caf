//! Why a mount could not start or stop.

use std::path::PathBuf;

/// A failed [`crate::Mount::start`] or [`crate::Mount::stop`]. A message never repeats its
/// cause: the cause is the error's `source()`, printed after it by whoever prints the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `start` was called outside a tokio runtime.
    #[error("the mount needs a tokio runtime to serve requests on (call Mount::start inside one)")]
    NoRuntime,
    /// Running as root, but the kernel's FUSE device is missing.
    #[error("cannot mount: /dev/fuse cannot be opened (load the fuse module: modprobe fuse)")]
    NoDevFuse {
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// Not root, and Debian's `fusermount3` (package fuse3) is not on PATH.
    #[error("cannot mount as a non-root user: fusermount3 is not on PATH (install Debian's fuse3)")]
    NoFusermount,
    /// Not root, and /dev/fuse is not open to this user: fusermount3 opens it with the user's
    /// rights (the device's mode decides who may mount FUSE).
    #[error(
        "cannot mount as a non-root user: /dev/fuse is not open to this user (Debian's udev makes \
         it 0666: install udev or chmod 0666 /dev/fuse, or run as root)"
    )]
    NoDevFuseAccess {
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The mount point is not a directory we can use.
    #[error("mount point {path}: {reason} ({fix})")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// What to do.
        fix: &'static str,
    },
    /// A stale mount (its process killed) is at the mount point and could not be removed.
    #[error("stale mount at {path} could not be removed (run fusermount3 -u -z {path} or umount -l as root)", path = .path.display())]
    StaleMount {
        /// The mount point.
        path: PathBuf,
        /// The unmount's error.
        source: std::io::Error,
    },
    /// The remote root could not be read.
    #[error("remote directory {path} cannot be read (check the path and the SFTP user's rights)")]
    RemoteRoot {
        /// The remote path, lossily decoded.
        path: String,
        /// The remote side's error.
        source: crate::remote::Error,
    },
    /// The remote root is not a directory.
    #[error("remote path {path} is not a directory (name the directory to back up)")]
    RemoteRootNotDirectory {
        /// The remote path, lossily decoded.
        path: String,
    },
    /// The remote root did not answer within the request deadline.
    #[error("remote directory {path}: no answer within {after:?} (is the client reachable?)")]
    RemoteRootDeadline {
        /// The remote path, lossily decoded.
        path: String,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The kernel refused the mount.
    #[error("cannot mount at {path}", path = .path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The mount's error.
        source: std::io::Error,
    },
    /// The unmount failed.
    #[error("cannot unmount {path} (run fusermount3 -u -z {path} or umount -l as root)", path = .path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The unmount's error.
        source: std::io::Error,
    },
}
