//! Secret files (private keys, passphrase files), read with their type, owner and mode checked.
//!
//! A secret file is opened once, without following a symbolic link (to the file itself; linked
//! directories on the way are fine), and everything is checked on
//! the open file (`fstat`), never by path: that it is a regular file, that no other user may read
//! it (as OpenSSH requires of private keys), that it belongs to us or root, and that it is not
//! larger than a secret can be. The bytes read are the bytes checked, whatever happens to the
//! path meanwhile. What is read comes back in [`Zeroizing`] buffers, allocated once at their final
//! size so that no copy is left behind by a reallocation, and wiped when dropped.
//!
//! A passphrase file's line comes back as the crate's one in-memory secret type,
//! [`SecretString`] (wiped when dropped, redacted when formatted).
//!
//! ```no_run
//! use borg_pull_tunnel::local::secret_file::read_secret_line;
//! use borg_pull_tunnel::SecretKind;
//! # fn run() -> borg_pull_tunnel::Result<()> {
//! let passphrase = read_secret_line("/etc/borg/pass".as_ref(), SecretKind::RepoPassphrase)?;
//! assert_eq!(format!("{passphrase:?}"), "SecretString(<redacted>)");
//! # Ok(()) }
//! ```

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
pub(crate) use zeroize::Zeroizing;

use crate::error::SecretKind;
use crate::local::secret::SecretString;
use crate::{Error, Result};

/// The largest secret file read: far more than any private key (an RSA 16384 key is about 12 KiB)
/// or passphrase; a larger file is not what the user meant to give.
pub(crate) const MAX_SECRET_FILE_BYTES: usize = 1 << 20;

/// Reads the secret file `path` after checking the open file, see the [module](self) docs.
///
/// Errors: a symbolic link, anything but a regular file, a file others may read or write
/// ([`Error::SecretFileTooOpen`]), one owned by another user, one larger than
/// [`MAX_SECRET_FILE_BYTES`], and I/O errors, each naming the file, the problem and the fix. For
/// [`SecretKind::Identity`] they are [`Error::Identity`], for [`SecretKind::RepoPassphrase`]
/// [`Error::Passphrase`] and for [`SecretKind::IdentityPassphrase`] [`Error::Io`] (except
/// [`Error::SecretFileTooOpen`]).
pub(crate) fn read_secret_file(path: &Path, kind: SecretKind) -> Result<Zeroizing<Vec<u8>>> {
    read_opened(path, kind, |_| {})
}

/// The first line of the secret file `path` (checked as the [module](self) docs say), without its `\n` or
/// `\r\n`: a passphrase file. Anything after the first line is ignored; invalid UTF-8 is an error.
pub fn read_secret_line(path: &Path, kind: SecretKind) -> Result<SecretString> {
    let bytes = read_secret_file(path, kind)?;
    let line = match bytes.iter().position(|&b| b == b'\n') {
        Some(end) => bytes[..end].strip_suffix(b"\r").unwrap_or(&bytes[..end]),
        None => &bytes[..],
    };
    let text = std::str::from_utf8(line).map_err(|_| {
        refused(
            kind,
            path,
            std::io::ErrorKind::InvalidData,
            "its first line is not valid UTF-8 text".into(),
        )
    })?;
    // `to_owned` allocates exactly once, at the final size.
    Ok(SecretString::new(text.to_owned()))
}

/// [`read_secret_file`] with a hook run right after the file is opened (tests swap the file there).
fn read_opened(path: &Path, kind: SecretKind, after_open: impl FnOnce(&Path)) -> Result<Zeroizing<Vec<u8>>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    // NONBLOCK: opening a FIFO must not wait for a writer (it is refused below, as not a file).
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|errno| {
        let source = std::io::Error::from(errno);
        if errno == rustix::io::Errno::LOOP && path.is_symlink() {
            let target = std::fs::read_link(path)
                .map(|t| format!(" (it points to {t:?})"))
                .unwrap_or_default();
            return refused(
                kind,
                path,
                source.kind(),
                format!(
                    "it is a symbolic link{target}; secret files are not read through links (the file \
                     checked must be the file read): give the path of the file itself{}",
                    from_a_command(kind)
                ),
            );
        }
        refused(kind, path, source.kind(), source.to_string())
    })?;
    after_open(path);
    let mut file = std::fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| refused(kind, path, e.kind(), format!("cannot stat it: {e}")))?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(refused(
            kind,
            path,
            std::io::ErrorKind::InvalidInput,
            format!(
                "it is {what}; a secret must be in a regular file{}",
                from_a_command(kind)
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::SecretFileTooOpen {
            kind,
            path: path.to_owned(),
            mode,
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refused(
            kind,
            path,
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to us (uid {me}) or root, so that user can read and change \
                 it; fix: chown {me} {path:?}",
                meta.uid()
            ),
        ));
    }
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size > MAX_SECRET_FILE_BYTES {
        return Err(too_big(kind, path, meta.len()));
    }
    // One allocation at the final size plus one byte that tells whether the file grew.
    let mut buf = Zeroizing::new(vec![0u8; size + 1]);
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(refused(kind, path, e.kind(), format!("cannot read it: {e}"))),
        }
    }
    if filled > size {
        return Err(refused(
            kind,
            path,
            std::io::ErrorKind::InvalidData,
            "it grew while being read; is something writing to it?".into(),
        ));
    }
    buf.truncate(filled);
    Ok(buf)
}

/// For passphrases, where to put one that comes from a command (`<(pass show x)` is a link to a
/// pipe, refused as both).
fn from_a_command(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Identity => "",
        SecretKind::IdentityPassphrase => {
            " (a passphrase from a command can be given in BORG_PULL_IDENTITY_PASSPHRASE instead)"
        }
        SecretKind::RepoPassphrase => {
            " (a passphrase from a command can be given with BORG_PASSCOMMAND instead)"
        }
    }
}

fn too_big(kind: SecretKind, path: &Path, len: u64) -> Error {
    refused(
        kind,
        path,
        std::io::ErrorKind::InvalidData,
        format!(
            "it is {len} bytes, more than a secret file may be ({MAX_SECRET_FILE_BYTES} bytes): is it the \
             right file?"
        ),
    )
}

/// The error for a secret file that cannot be used, in the variant callers already map for `kind`.
fn refused(kind: SecretKind, path: &Path, io_kind: std::io::ErrorKind, reason: String) -> Error {
    match kind {
        SecretKind::Identity => Error::Identity {
            path: path.to_owned(),
            source: russh::keys::Error::IO(std::io::Error::new(io_kind, reason)),
        },
        SecretKind::RepoPassphrase => {
            Error::Passphrase(format!("cannot use passphrase file {path:?}: {reason}"))
        }
        SecretKind::IdentityPassphrase => Error::Io {
            context: format!("cannot use identity passphrase file {path:?}"),
            source: std::io::Error::new(io_kind, reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, content: &[u8], mode: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    const KINDS: [SecretKind; 3] = [
        SecretKind::Identity,
        SecretKind::IdentityPassphrase,
        SecretKind::RepoPassphrase,
    ];

    #[test]
    fn reads_a_private_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for mode in [0o600, 0o400, 0o700] {
            write(&path, b"s3cret\nsecond line\n", mode);
            for kind in KINDS {
                assert_eq!(
                    &read_secret_file(&path, kind).unwrap()[..],
                    b"s3cret\nsecond line\n"
                );
            }
        }
        write(&path, b"", 0o600);
        assert!(read_secret_file(&path, SecretKind::Identity).unwrap().is_empty());
    }

    #[test]
    fn symlinks_are_refused_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        write(&real, b"pw\n", 0o600);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for kind in KINDS {
            let err = read_secret_file(&link, kind).unwrap_err();
            let text = borg_pull_core::error::Chain(&err).to_string();
            assert!(
                text.contains("symbolic link") && text.contains("link\""),
                "{text}"
            );
            assert!(
                text.contains("give the path of the file itself") && text.contains("real\""),
                "{text}"
            );
        }
        assert!(matches!(
            read_secret_file(&link, SecretKind::Identity),
            Err(Error::Identity { .. })
        ));
        assert!(matches!(
            read_secret_file(&link, SecretKind::RepoPassphrase),
            Err(Error::Passphrase(_))
        ));
        assert!(matches!(
            read_secret_file(&link, SecretKind::IdentityPassphrase),
            Err(Error::Io { .. })
        ));
        // A dangling link is a link too.
        std::fs::remove_file(&real).unwrap();
        assert!(read_secret_file(&link, SecretKind::RepoPassphrase)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn files_others_can_read_are_refused_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o610, 0o601] {
            write(&path, b"pw", mode);
            for kind in KINDS {
                let err = read_secret_file(&path, kind).unwrap_err();
                assert!(
                    matches!(&err, Error::SecretFileTooOpen { mode: m, kind: k, .. } if *m == mode && *k == kind),
                    "{err}"
                );
                assert!(
                    err.to_string().contains(&format!("{mode:04o}")) && err.to_string().contains("chmod 600")
                );
            }
        }
    }

    #[test]
    fn fifos_directories_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (&sub, "a directory"),
            (Path::new("/dev/null"), "a device"),
        ] {
            for kind in KINDS {
                let err = read_secret_file(path, kind).unwrap_err();
                assert!(
                    borg_pull_core::error::Chain(&err).to_string().contains(what),
                    "{err}"
                );
                assert!(
                    borg_pull_core::error::Chain(&err)
                        .to_string()
                        .contains("regular file"),
                    "{err}"
                );
            }
        }
    }

    /// `--passphrase-file <(pass show borg)` gives `/dev/fd/63`, a link to a pipe: refused, with
    /// the way to pass a passphrase from a command.
    #[test]
    fn pipes_as_from_process_substitution_are_refused_with_the_alternative() {
        let (read, _write) = rustix::pipe::pipe().unwrap();
        let path = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&read)
        ));
        let err = read_secret_file(&path, SecretKind::RepoPassphrase).unwrap_err();
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("BORG_PASSCOMMAND"),
            "{err}"
        );
        let err = read_secret_file(&path, SecretKind::IdentityPassphrase).unwrap_err();
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("BORG_PULL_IDENTITY_PASSPHRASE"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_are_reported_as_such() {
        let err = read_secret_file(Path::new("/nonexistent/key"), SecretKind::Identity).unwrap_err();
        assert!(matches!(&err, Error::Identity { .. }), "{err}");
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("/nonexistent/key")
                && borg_pull_core::error::Chain(&err)
                    .to_string()
                    .contains("No such file"),
            "{err}"
        );
    }

    #[test]
    fn larger_files_than_a_secret_can_be_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        write(&path, &vec![b'x'; MAX_SECRET_FILE_BYTES], 0o600);
        assert_eq!(
            read_secret_file(&path, SecretKind::Identity).unwrap().len(),
            MAX_SECRET_FILE_BYTES
        );
        write(&path, &vec![b'x'; MAX_SECRET_FILE_BYTES + 1], 0o600);
        let err = read_secret_file(&path, SecretKind::RepoPassphrase).unwrap_err();
        assert!(
            err.to_string().contains("more than a secret file may be"),
            "{err}"
        );
    }

    #[test]
    fn files_of_other_users_are_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: only root can give a file away");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("theirs");
        write(&path, b"pw", 0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = read_secret_file(&path, SecretKind::RepoPassphrase).unwrap_err();
        assert!(
            err.to_string().contains("belongs to uid 65534") && err.to_string().contains("chown"),
            "{err}"
        );
        // Root's own files are fine (a root-owned key read by root, or /etc files as root).
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        assert_eq!(
            &read_secret_file(&path, SecretKind::RepoPassphrase).unwrap()[..],
            b"pw"
        );
    }

    /// The file checked is the file read: a file swapped in after the open is neither read nor
    /// checked (it cannot make a refused file pass, nor change what is read).
    #[test]
    fn the_open_file_is_checked_and_read_whatever_happens_to_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let other = dir.path().join("other");

        // Private at open, then replaced by a readable file with other content: the original is read.
        write(&path, b"original", 0o600);
        let swap = |path: &Path| {
            write(&other, b"swapped in", 0o644);
            std::fs::rename(&other, path).unwrap();
        };
        let bytes = read_opened(&path, SecretKind::RepoPassphrase, swap).unwrap();
        assert_eq!(&bytes[..], b"original");
        assert_eq!(std::fs::read(&path).unwrap(), b"swapped in");

        // Readable by others at open, then replaced by a private file: still refused.
        write(&path, b"leaked", 0o644);
        let swap = |path: &Path| {
            write(&other, b"private", 0o600);
            std::fs::rename(&other, path).unwrap();
        };
        let err = read_opened(&path, SecretKind::Identity, swap).unwrap_err();
        assert!(
            matches!(err, Error::SecretFileTooOpen { mode: 0o644, .. }),
            "{err}"
        );

        // Made private by chmod after the open: the open file's current mode is what counts.
        write(&path, b"now private", 0o644);
        let chmod =
            |path: &Path| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            &read_opened(&path, SecretKind::Identity, chmod).unwrap()[..],
            b"now private"
        );

        // Replaced by a symlink after the open: the file opened is read.
        write(&path, b"the file", 0o600);
        let to_link = |path: &Path| {
            write(&other, b"link target", 0o600);
            std::fs::remove_file(path).unwrap();
            std::os::unix::fs::symlink(&other, path).unwrap();
        };
        assert_eq!(
            &read_opened(&path, SecretKind::Identity, to_link).unwrap()[..],
            b"the file"
        );
    }

    #[test]
    fn a_file_grown_after_the_open_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write(&path, b"pw", 0o600);
        // Grows between the open and the fstat: the size checked is the new one, read fully.
        let grow = |path: &Path| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .unwrap()
                .write_all(b"more")
                .unwrap();
        };
        assert_eq!(
            &read_opened(&path, SecretKind::Identity, grow).unwrap()[..],
            b"pwmore"
        );
    }

    #[test]
    fn secret_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        for (content, line) in [
            (&b"pw\n"[..], "pw"),
            (b"pw\r\n", "pw"),
            (b"pw", "pw"),
            (b"p w'd \"x\"\nsecond\n", "p w'd \"x\""),
            (b"", ""),
            (b"\n", ""),
            (b"pw\r", "pw\r"),
            (b"\xc3\xa4\xc3\xb6\n", "\u{e4}\u{f6}"),
            (b"pw\n\xff", "pw"),
        ] {
            write(&path, content, 0o600);
            for kind in KINDS {
                assert_eq!(
                    read_secret_line(&path, kind).unwrap().as_str(),
                    line,
                    "{content:?}"
                );
            }
        }
        write(&path, b"\xffpw\n", 0o600);
        let err = read_secret_line(&path, SecretKind::RepoPassphrase).unwrap_err();
        assert!(
            matches!(&err, Error::Passphrase(m) if m.contains("not valid UTF-8")),
            "{err}"
        );
        write(&path, b"pw\n", 0o640);
        assert!(matches!(
            read_secret_line(&path, SecretKind::IdentityPassphrase),
            Err(Error::SecretFileTooOpen { mode: 0o640, .. })
        ));
    }
}
