//! Files replaced atomically: a reader (node_exporter, `status`) sees the old or the new
//! contents, never a half-written file, even across a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of concurrent writers in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `contents`, mode exactly `mode` (whatever the umask): written to a
/// temporary file in the same directory (a name starting with `.` and not ending in the target's
/// extension, so node_exporter's `*.prom` glob never reads it), flushed to disk, renamed over
/// `path`, then the directory is synced so the rename survives a crash. On failure the temporary
/// file is removed and `path` is left as it was.
pub(crate) fn write_atomically(path: &Path, mode: u32, contents: &[u8]) -> io::Result<()> {
    let temp = temp_path(path)?;
    let result = write_then_rename(&temp, path, mode, contents);
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// An exclusive `flock` on `path` (created mode 0600, never through a symlink), held while the
/// returned file is open; waited for at most `wait`. For read-modify-write of a file replaced by
/// [`write_atomically`]: the rename makes each write whole, the lock keeps two writers from each
/// replacing the file with their own stale copy.
pub(crate) fn lock_exclusive(path: &Path, wait: std::time::Duration) -> io::Result<File> {
    use rustix::fs::{flock, FlockOperation};
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    let start = std::time::Instant::now();
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && start.elapsed() < wait => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot lock {}: {e}", path.display()),
                ))
            }
        }
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(temp))
}

fn write_then_rename(temp: &Path, path: &Path, mode: u32, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(temp)?;
    // The umask may have taken bits away (0644 under umask 077 is 0600).
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn replaces_with_exact_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.prom");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, 0o644, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        write_atomically(&path, 0o600, b"newer").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.prom"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("x.prom");
        assert!(write_atomically(&path, 0o644, b"new").is_err());
        assert!(write_atomically(Path::new("/"), 0o644, b"new").is_err());
    }
}
