//! A mount's life: the mount point made private, a stale mount (a killed run's) removed, the
//! kernel mount, and the (lazy) unmount on `stop` or drop.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::error::Error;
use crate::fs::{Core, Fs, SessionEnd};
use crate::fusermount;
use crate::limits::{Limits, UNMOUNT_GRACE, UNMOUNT_WAIT};
use crate::remote::FileType;
use crate::report::{Report, Reporter};
use crate::source::Source;

/// How a mount is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MountOptions {
    /// The remote directory shown at the mount point (bytes: any Unix path).
    pub remote_root: Vec<u8>,
    /// The bounds and deadlines.
    pub limits: Limits,
    /// The source name `mount` and /proc/mounts show, e.g. `user@host:/`.
    pub fs_name: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            remote_root: b"/".to_vec(),
            limits: Limits::default(),
            fs_name: "borg-pull".into(),
        }
    }
}

impl MountOptions {
    /// Options for serving `remote_root`, every bound at its default.
    pub fn new(remote_root: impl Into<Vec<u8>>) -> Self {
        MountOptions {
            remote_root: remote_root.into(),
            ..MountOptions::default()
        }
    }

    /// Replaces the bounds (tests shrink them).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// How this process mounts and unmounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privilege {
    /// mount(2)/umount2(2) on /dev/fuse.
    Root,
    /// Debian's setuid `fusermount3`.
    User,
}

/// A mounted remote tree; unmounted by [`Mount::stop`] or when dropped.
pub struct Mount {
    mountpoint: PathBuf,
    privilege: Privilege,
    session: Option<BackgroundSession>,
    reporter: Arc<Reporter>,
    cancel: CancellationToken,
    connection: Arc<Connection>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

impl Mount {
    /// Mounts `source`'s `options.remote_root` read-only at `mountpoint` (created 0700 if missing,
    /// made 0700 if not). A stale mount there is removed first.
    ///
    /// # Errors
    /// What is missing to mount (the FUSE device, fusermount3), a mount point that is not a
    /// directory, a remote root that cannot be read, or the kernel's refusal.
    pub async fn start<S: Source>(
        source: S,
        mountpoint: impl AsRef<Path>,
        options: MountOptions,
    ) -> Result<Mount, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mountpoint = mountpoint.as_ref().to_path_buf();
        let privilege = privilege()?;
        prepare_mountpoint(&mountpoint, privilege)?;

        let root = options.remote_root.clone();
        let shown = String::from_utf8_lossy(&root).into_owned();
        let deadline = options.limits.request_deadline;
        let root_attrs = match tokio::time::timeout(deadline, source.lstat(&root)).await {
            Err(_elapsed) => {
                return Err(Error::RemoteRootDeadline {
                    path: shown,
                    after: deadline,
                })
            }
            Ok(Err(source)) => return Err(Error::RemoteRoot { path: shown, source }),
            Ok(Ok(attrs)) => attrs,
        };
        if root_attrs.file_type() != FileType::Directory {
            return Err(Error::RemoteRootNotDirectory { path: shown });
        }

        let reporter = Arc::new(Reporter::new(options.limits.max_reported));
        let cancel = CancellationToken::new();
        let core = Core::new(
            source,
            options.limits,
            root,
            root_attrs,
            reporter.clone(),
            runtime,
            cancel.clone(),
        );
        let user_options = fusermount_options(&options.fs_name);
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(options.fs_name),
            MountOption::Subtype("borg-pull".into()),
            MountOption::RO,
            MountOption::NoExec,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoAtime,
        ];
        // Only the mounting user sees the tree (no allow_other).
        config.acl = SessionACL::Owner;
        let connection = Arc::new(Connection::default());
        let end = SessionEnd {
            cancel: cancel.clone(),
            connection: connection.clone(),
        };
        let (at, held) = (mountpoint.clone(), connection.clone());
        let session = tokio::task::spawn_blocking(move || {
            let fs = Fs { core, _end: end };
            let session = match privilege {
                Privilege::Root => fuser::spawn_mount(fs, &at, &config)?,
                Privilege::User => {
                    let device = fusermount::mount(&at, &user_options)?;
                    // Mounted: a failed handshake must not leave the mount behind.
                    fuser::Session::from_fd(fs, device, SessionACL::Owner, config)
                        .and_then(fuser::Session::spawn)
                        .inspect_err(|_| {
                            if let Err(error) = fusermount::unmount(&at) {
                                tracing::warn!(%error, "cannot unmount after a failed start");
                            }
                        })?
                }
            };
            held.attach(&at);
            Ok(session)
        })
        .await
        .map_err(|join| Error::Mount {
            path: mountpoint.clone(),
            source: std::io::Error::other(join),
        })?
        .map_err(|source| Error::Mount {
            path: mountpoint.clone(),
            source,
        })?;
        tracing::debug!(mountpoint = %mountpoint.display(), "mounted");
        Ok(Mount {
            mountpoint,
            privilege,
            session: Some(session),
            reporter,
            cancel,
            connection,
        })
    }

    /// Where the tree is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What hit a bound or a deadline so far (files read only to a bound, directories not
    /// listed, calls that got no answer).
    pub fn report(&self) -> Report {
        self.reporter.snapshot()
    }

    /// Unmounts (lazily if something still has a file open) and stops every request task.
    ///
    /// # Errors
    /// The unmount's failure; the mount may then still be there.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // The FUSE thread ended before we asked: nobody reads the kernel's requests any more.
        let died = session.guard.is_finished();
        // Every request task ends; the replies they held answer EIO as they drop.
        self.cancel.cancel();
        let detached = detach(&self.mountpoint, self.privilege);
        // No caller may be left waiting in the kernel for an answer that will never come: what is
        // still unanswered after the grace (or everything, if the thread is gone) is aborted.
        if died || !self.answered_within(UNMOUNT_GRACE) {
            self.connection.abort();
        }
        // The detached mount can end now (unless a reader still holds a file in it).
        self.connection.release();
        // The FUSE thread ends when the kernel drops the connection; the session is dropped only
        // after that, so its own unmount finds nothing to do and never touches a newer mount at
        // the same path.
        if crate::wait::wait_until(UNMOUNT_WAIT, || session.guard.is_finished()) {
            if let Err(error) = session.join() {
                tracing::debug!(%error, "FUSE session ended with an error");
            }
        } else {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "mount busy; detached");
            let joined = std::thread::Builder::new()
                .name("borg-pull-umount".into())
                .spawn(move || drop(session.join()));
            if let Err(error) = joined {
                tracing::warn!(%error, "cannot wait for the FUSE thread; it ends with the process");
            }
        }
        detached.map_err(|source| Error::Unmount {
            path: self.mountpoint.clone(),
            source,
        })
    }

    /// Whether the kernel has no request of this mount left waiting for an answer within
    /// `grace`. Without fusectl it cannot be known, nor anything aborted: then true.
    fn answered_within(&self, grace: std::time::Duration) -> bool {
        crate::wait::wait_until(grace, || {
            self.connection.waiting().is_none_or(|waiting| waiting == 0)
        })
    }
}

/// The `-o` options of a non-root mount: the root mount's, in the syntax fusermount3 takes from a
/// user (it adds fd, rootmode, user_id and group_id itself; no allow_other: only this user sees
/// the tree). A comma or backslash in the name is escaped, as fusermount3 unescapes it.
fn fusermount_options(fs_name: &str) -> String {
    let mut name = String::with_capacity(fs_name.len());
    for c in fs_name.chars() {
        if matches!(c, ',' | '\\') {
            name.push('\\');
        }
        name.push(c);
    }
    format!("ro,nosuid,nodev,noexec,noatime,fsname={name},subtype=borg-pull")
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "unmount on drop");
        }
    }
}

fn privilege() -> Result<Privilege, Error> {
    if rustix::process::geteuid().is_root() {
        std::fs::OpenOptions::new()
            .read(true)
            .open("/dev/fuse")
            .map_err(|source| Error::NoDevFuse { source })?;
        Ok(Privilege::Root)
    } else if on_path("fusermount3") {
        // fusermount3 opens the device with our rights: where it is 0600 it would fail, later
        // and less clearly.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|source| Error::NoDevFuseAccess { source })?;
        Ok(Privilege::User)
    } else {
        Err(Error::NoFusermount)
    }
}

fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Makes `path` a private directory to mount on, removing a stale mount (ENOTCONN: its process
/// was killed) first.
fn prepare_mountpoint(path: &Path, privilege: Privilege) -> Result<(), Error> {
    let not_connected = rustix::io::Errno::NOTCONN.raw_os_error();
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.raw_os_error() == Some(not_connected) => {
            tracing::info!(mountpoint = %path.display(), "removing a stale mount");
            detach(path, privilege).map_err(|source| Error::StaleMount {
                path: path.into(),
                source,
            })?;
            std::fs::symlink_metadata(path)
        }
        other => other,
    };
    let bad = |reason: String, fix| Error::MountPoint {
        path: path.into(),
        reason,
        fix,
    };
    match meta {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into(), "remove it or choose another path")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(|e| bad(format!("cannot create it: {e}"), "create its parent directory"))?;
        }
        Err(e) => return Err(bad(e.to_string(), "check the path")),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        bad(
            format!("cannot make it 0700: {e}"),
            "the mount point must belong to this user",
        )
    })
}

/// A lazy unmount: the mount disappears from the tree now; a reader still inside keeps it alive
/// until it lets go.
fn detach(path: &Path, privilege: Privilege) -> std::io::Result<()> {
    match privilege {
        Privilege::Root => match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
            // Already gone (e.g. unmounted by hand).
            Err(rustix::io::Errno::INVAL) => Ok(()),
            other => other.map_err(std::io::Error::from),
        },
        Privilege::User => fusermount::unmount(path),
    }
}
