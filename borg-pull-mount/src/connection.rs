//! The kernel's side of one mount, for the last resort: aborting it.
//!
//! A request the kernel has handed to us waits, in the caller's thread, until we answer it; a
//! killed caller then waits uninterruptibly. A mount whose answers stop (its FUSE thread gone, a
//! request task that never yields) would leave every caller there forever, and a caller in our own
//! process would keep the process alive with all its memory. Writing to the connection's `abort`
//! file in /sys/fs/fuse/connections (the kernel's fusectl) ends every such request with ENOTCONN.
//!
//! The connection's number there is its mount's device number, and the kernel hands a freed
//! number to the next mount at once. So the connection holds a handle on the mount's root (an
//! O_PATH descriptor: no FUSE open, no request): while it is held, the mount cannot be freed and
//! the number is ours. Once it is let go, nothing is aborted any more.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the kernel lists FUSE connections (fusectl; mounted by systemd at boot).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// One mount's connection: its number while the root handle is held.
#[derive(Debug, Default)]
pub(crate) struct Connection {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
enum Held {
    /// Not mounted (yet, or the mount failed).
    #[default]
    NotMounted,
    /// Mounted, but its root could not be opened: nothing can be aborted.
    Unknown,
    /// The mount's root, holding the number.
    Root { _root: OwnedFd, number: u32 },
    /// Let go: the number may be another mount's now.
    Released,
}

impl Connection {
    /// Takes hold of the mount at `mountpoint` (just mounted) and notes its number.
    pub(crate) fn attach(&self, mountpoint: &Path) {
        use rustix::fs::{fstat, major, minor, open, Mode, OFlags};
        let opened = open(
            mountpoint,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|root| Ok((fstat(&root)?, root)));
        match opened {
            Ok((stat, root)) => {
                // The kernel names a connection by its device number in its own encoding
                // (major << 20 | minor); FUSE mounts have anonymous devices, major 0.
                let number = (major(stat.st_dev) << 20) | minor(stat.st_dev);
                *self.lock() = Held::Root { _root: root, number };
            }
            Err(error) => {
                tracing::warn!(mountpoint = %mountpoint.display(), %error,
                    "cannot hold the mount's root: a stuck request could not be aborted");
                *self.lock() = Held::Unknown;
            }
        }
    }

    /// Whether the mount was made (a session that ends before has nothing to clean up).
    pub(crate) fn was_mounted(&self) -> bool {
        !matches!(*self.lock(), Held::NotMounted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(number: u32) -> PathBuf {
        Path::new(FUSECTL).join(number.to_string())
    }

    /// Requests the kernel still waits on an answer for; `None` if that cannot be known.
    pub(crate) fn waiting(&self) -> Option<u64> {
        let Held::Root { number, .. } = *self.lock() else {
            return None;
        };
        let text = std::fs::read_to_string(Self::dir(number).join("waiting")).ok()?;
        text.trim().parse().ok()
    }

    /// Ends every request of this connection with ENOTCONN, and the connection with them.
    /// Does nothing once let go (the number may be another mount's).
    pub(crate) fn abort(&self) {
        let held = self.lock();
        let Held::Root { number, .. } = *held else {
            return;
        };
        let file = Self::dir(number).join("abort");
        match std::fs::write(&file, b"1") {
            Ok(()) => tracing::warn!(connection = number, "FUSE connection aborted"),
            Err(error) => tracing::warn!(file = %file.display(), %error,
                "cannot abort the FUSE connection (is fusectl mounted on /sys/fs/fuse/connections?)"),
        }
        drop(held);
    }

    /// Lets go of the mount's root: a detached mount can then end.
    pub(crate) fn release(&self) {
        *self.lock() = Held::Released;
    }
}
