//! Where an entry of the archive lands on the client: its name made into a path under the
//! restore's directory, or refused.
//!
//! borg export-tar writes relative names, but the archive's names come from the backed-up
//! client: untrusted. An absolute name or a `..` component could land outside the directory, so
//! they are refused (as GNU tar refuses `..`); `.` and empty components are dropped. A symlink
//! restored in this run cannot redirect a later entry because symlinks are created last
//! ([`super::writer`]).

use crate::limits::SFTP_RESTORE_PATH_MAX;

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// It starts with `/`.
    Absolute,
    /// It has a `..` component.
    DotDot,
    /// It holds a NUL byte (SFTP paths cannot).
    Nul,
    /// The path on the client would be longer than [`SFTP_RESTORE_PATH_MAX`].
    TooLong,
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unsafe::Absolute => "it is absolute",
            Unsafe::DotDot => "it has a `..` component",
            Unsafe::Nul => "it holds a NUL byte",
            Unsafe::TooLong => "the path would be too long",
        })
    }
}

/// The restore's directory on the client, as SFTP paths are built from it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The directory without trailing slashes (`/` stays `/`).
    dir: Vec<u8>,
}

impl Target {
    /// The directory as given (`--remote-dir`); relative paths start at the SFTP server's
    /// working directory (the login user's home).
    pub fn new(dir: &[u8]) -> Self {
        let mut dir = dir.to_vec();
        while dir.len() > 1 && dir.ends_with(b"/") {
            dir.pop();
        }
        Target { dir }
    }

    /// The directory itself.
    pub fn dir(&self) -> &[u8] {
        &self.dir
    }

    /// The path on the client of the archive's `name`: `None` for the directory itself (`.`,
    /// `./`), else the directory joined with the name's kept components.
    pub fn place(&self, name: &[u8]) -> Result<Option<Vec<u8>>, Unsafe> {
        if name.contains(&0) {
            return Err(Unsafe::Nul);
        }
        if name.starts_with(b"/") {
            return Err(Unsafe::Absolute);
        }
        let mut path = self.dir.clone();
        let mut any = false;
        for part in name.split(|&b| b == b'/') {
            match part {
                b"" | b"." => continue,
                b".." => return Err(Unsafe::DotDot),
                _ => {}
            }
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(part);
            any = true;
        }
        if path.len() > SFTP_RESTORE_PATH_MAX {
            return Err(Unsafe::TooLong);
        }
        Ok(any.then_some(path))
    }
}

/// The directory part of a path built by [`Target::place`] (it always has one).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &path[..i],
        None => b".",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_land_under_the_directory_or_are_refused() {
        let t = Target::new(b"/srv/restore//");
        assert_eq!(t.dir(), b"/srv/restore");
        assert_eq!(t.place(b"a/b").unwrap().unwrap(), b"/srv/restore/a/b");
        assert_eq!(t.place(b"./a//./b/").unwrap().unwrap(), b"/srv/restore/a/b");
        assert_eq!(t.place(b"./").unwrap(), None);
        assert_eq!(t.place(b"\xff\n").unwrap().unwrap(), b"/srv/restore/\xff\n");
        assert_eq!(t.place(b"/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(t.place(b"a/../../etc"), Err(Unsafe::DotDot));
        assert_eq!(t.place(b".."), Err(Unsafe::DotDot));
        assert_eq!(t.place(b"a\0b"), Err(Unsafe::Nul));
        assert_eq!(t.place(&vec![b'x'; SFTP_RESTORE_PATH_MAX]), Err(Unsafe::TooLong));
        let root = Target::new(b"/");
        assert_eq!(root.place(b"etc/x").unwrap().unwrap(), b"/etc/x");
        let rel = Target::new(b"restore");
        assert_eq!(rel.place(b"x").unwrap().unwrap(), b"restore/x");
        assert_eq!(parent(b"/etc/x"), b"/etc");
        assert_eq!(parent(b"/x"), b"/");
        assert_eq!(parent(b"restore/x"), b"restore");
    }
}
