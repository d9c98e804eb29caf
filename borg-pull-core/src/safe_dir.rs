//! Opening a listener's socket directory so that nobody but root and us can swap it afterwards.
//!
//! Checking a directory's owner and mode is worth nothing if the directory (or any directory above
//! it) can be renamed away and replaced after the check: the socket would then appear wherever the
//! replacement points. So, like OpenSSH's `safe_path()`:
//!
//! - the socket directory's parent is resolved once (`realpath`), then opened from `/` downwards,
//!   one component at a time with `O_NOFOLLOW`, and each ancestor is checked *by its open file
//!   descriptor*: owned by root or by us, and not writable by group or others. A root- or
//!   us-owned directory with the sticky bit (like `/tmp`, mode 1777) is accepted too: in a sticky
//!   directory others may create entries but cannot rename or delete ours, and an entry they
//!   created first would be theirs, which the owner check below refuses;
//! - the socket directory itself is created (`mkdirat`, 0700) or opened relative to that parent
//!   descriptor with `O_NOFOLLOW`, so a symbolic link is refused rather than followed, and its
//!   owner and mode are checked on the opened descriptor, not by path again.
//!
//! Every later path operation (bind, unlink) goes through the resolved path, whose every component
//! only root or we can change.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tracing::info;

use crate::{Error, Result};

/// A verified socket directory: open, and where it really is.
#[derive(Debug)]
pub(crate) struct SocketDir {
    /// The directory, opened after its checks; later `*at` calls go through it.
    pub(crate) fd: OwnedFd,
    /// Its resolved path (no symbolic links), for the calls that need a path (bind, connect).
    pub(crate) real: PathBuf,
}

/// How every directory on the way is opened: never through a symbolic link.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens (creating it 0700 if missing) the socket directory `dir` and checks it and its ancestors.
pub(crate) fn open_socket_dir(dir: &Path) -> Result<SocketDir> {
    let euid = rustix::process::geteuid().as_raw();
    let io_err = |source| Error::SocketDirIo {
        dir: dir.to_owned(),
        source,
    };
    let (parent, name) = split(dir).map_err(io_err)?;
    let real_parent = match std::fs::canonicalize(&parent) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::SocketDirParentMissing {
                dir: dir.to_owned(),
                dir_display: dir.display().to_string(),
                parent,
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let parent_fd = open_ancestors(dir, &real_parent, euid)?;
    let created = create_if_missing(dir, &parent_fd, &name)?;
    let fd =
        rustix::fs::openat(&parent_fd, &name, DIR_FLAGS, Mode::empty()).map_err(|e| open_error(dir, e))?;
    if created {
        // The umask can only have narrowed 0700; make it exact anyway.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(|e| io_err(e.into()))?;
        info!(dir = %dir.display(), "created socket directory (mode 0700)");
    }
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
    check_dir(dir, st.st_mode, st.st_uid, euid)?;
    Ok(SocketDir {
        fd,
        real: real_parent.join(name),
    })
}

/// `dir` as an absolute parent and a final name (resolving a trailing `..` or `/` first).
fn split(dir: &Path) -> io::Result<(PathBuf, OsString)> {
    let abs = std::path::absolute(dir)?;
    if let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) {
        return Ok((parent.to_owned(), name.to_owned()));
    }
    let real = std::fs::canonicalize(&abs)?;
    match (real.parent(), real.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_owned(), name.to_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the root directory cannot hold a private socket",
        )),
    }
}

/// Opens `real_parent` from `/` down, checking every directory on the way by its descriptor.
fn open_ancestors(dir: &Path, real_parent: &Path, euid: u32) -> Result<OwnedFd> {
    let mut at = PathBuf::from("/");
    let mut fd = rustix::fs::open("/", DIR_FLAGS, Mode::empty()).map_err(|e| ancestor_io(dir, &at, e))?;
    check_ancestor(dir, &at, &fd, euid)?;
    for component in real_parent.components() {
        let Component::Normal(name) = component else {
            continue; // the root, already open; a canonical path has no `.` or `..`
        };
        at.push(name);
        fd = rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| ancestor_io(dir, &at, e))?;
        check_ancestor(dir, &at, &fd, euid)?;
    }
    Ok(fd)
}

fn ancestor_io(dir: &Path, ancestor: &Path, e: Errno) -> Error {
    Error::SocketDirIo {
        dir: dir.to_owned(),
        source: io::Error::new(
            io::Error::from(e).kind(),
            format!("opening {}: {e}", ancestor.display()),
        ),
    }
}

fn check_ancestor(dir: &Path, ancestor: &Path, fd: &OwnedFd, euid: u32) -> Result<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| ancestor_io(dir, ancestor, e))?;
    ancestor_problem(st.st_mode, st.st_uid, euid).map_or(Ok(()), |problem| {
        Err(Error::SocketDirAncestorUnsafe {
            dir: dir.to_owned(),
            ancestor: ancestor.to_owned(),
            owner: st.st_uid,
            mode: st.st_mode & 0o7777,
            uid: euid,
            problem,
        })
    })
}

/// Why a directory above the socket directory would let someone else swap it, if it would.
pub(crate) fn ancestor_problem(mode: u32, owner: u32, euid: u32) -> Option<&'static str> {
    const STICKY: u32 = 0o1000;
    if owner != 0 && owner != euid {
        return Some("belongs to another user");
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Some("is writable by group or others and not sticky");
    }
    None
}

/// Creates `name` (0700) in `parent` unless something is there; `true` if we created it.
fn create_if_missing(dir: &Path, parent: &OwnedFd, name: &OsStr) -> Result<bool> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => Ok(false),
            FileType::Symlink => Err(Error::SocketDirSymlink { dir: dir.to_owned() }),
            _ => Err(Error::SocketDirNotDirectory { dir: dir.to_owned() }),
        },
        Err(Errno::NOENT) => match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(true),
            // Someone else created it meanwhile: the checks on the opened directory decide.
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(Error::SocketDirIo {
                dir: dir.to_owned(),
                source: e.into(),
            }),
        },
        Err(e) => Err(Error::SocketDirIo {
            dir: dir.to_owned(),
            source: e.into(),
        }),
    }
}

fn open_error(dir: &Path, e: Errno) -> Error {
    match e {
        // O_NOFOLLOW on a symbolic link (swapped in after our look).
        Errno::LOOP => Error::SocketDirSymlink { dir: dir.to_owned() },
        Errno::NOTDIR => Error::SocketDirNotDirectory { dir: dir.to_owned() },
        e => Error::SocketDirIo {
            dir: dir.to_owned(),
            source: e.into(),
        },
    }
}

/// The socket directory's own checks: a directory of ours that only we can write to.
pub(crate) fn check_dir(dir: &Path, raw_mode: u32, owner: u32, euid: u32) -> Result<()> {
    if FileType::from_raw_mode(raw_mode) != FileType::Directory {
        return Err(Error::SocketDirNotDirectory { dir: dir.to_owned() });
    }
    if owner != euid {
        return Err(Error::SocketDirNotOwned {
            dir: dir.to_owned(),
            dir_display: dir.display().to_string(),
            owner,
            uid: euid,
        });
    }
    let mode = raw_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::SocketDirInsecure {
            dir: dir.to_owned(),
            dir_display: dir.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_root_or_us_not_writable_by_others_or_sticky() {
        let (me, other) = (1000, 1001);
        assert_eq!(ancestor_problem(0o40755, 0, me), None);
        assert_eq!(ancestor_problem(0o40700, me, me), None);
        assert_eq!(ancestor_problem(0o41777, 0, me), None, "/tmp");
        assert!(ancestor_problem(0o40755, other, me).is_some(), "another user's");
        assert!(
            ancestor_problem(0o41777, other, me).is_some(),
            "another user's, sticky"
        );
        assert!(ancestor_problem(0o40775, me, me).is_some(), "group-writable");
        assert!(
            ancestor_problem(0o40777, 0, me).is_some(),
            "world-writable, not sticky"
        );
    }

    #[test]
    fn socket_dir_must_be_ours_and_private() {
        let dir = Path::new("/d");
        assert!(check_dir(dir, 0o40700, 7, 7).is_ok());
        assert!(check_dir(dir, 0o40755, 7, 7).is_ok());
        assert!(matches!(
            check_dir(dir, 0o40700, 8, 7),
            Err(Error::SocketDirNotOwned { .. })
        ));
        assert!(matches!(
            check_dir(dir, 0o40770, 7, 7),
            Err(Error::SocketDirInsecure { .. })
        ));
        assert!(matches!(
            check_dir(dir, 0o100600, 7, 7),
            Err(Error::SocketDirNotDirectory { .. })
        ));
    }
}
