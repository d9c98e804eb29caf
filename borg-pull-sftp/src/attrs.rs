//! File attributes as SFTP v3 carries them (ATTRS, draft-02 section 5).

use crate::error::Violation;
use crate::wire::{attr, Fields, Packet};

/// What SFTP v3 says about a file: each field only if the server sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Size in bytes.
    pub size: Option<u64>,
    /// Numeric owner (sent together with `gid`).
    pub uid: Option<u32>,
    /// Numeric group (sent together with `uid`).
    pub gid: Option<u32>,
    /// `st_mode`: the file type bits (S_IFMT) and the permission bits.
    pub permissions: Option<u32>,
    /// Access time, seconds since the epoch (sent together with `mtime`).
    pub atime: Option<u32>,
    /// Modification time, seconds since the epoch (sent together with `atime`).
    pub mtime: Option<u32>,
}

/// The kind of file, from the S_IFMT bits of [`Attrs::permissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A UNIX socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// No permissions sent, or type bits that are none of the above.
    Unknown,
}

const S_IFMT: u32 = 0o170000;

impl Attrs {
    /// The file type from the S_IFMT bits.
    pub fn file_type(&self) -> FileType {
        match self.permissions.map(|p| p & S_IFMT) {
            Some(0o100000) => FileType::Regular,
            Some(0o040000) => FileType::Directory,
            Some(0o120000) => FileType::Symlink,
            Some(0o010000) => FileType::Fifo,
            Some(0o140000) => FileType::Socket,
            Some(0o020000) => FileType::CharDevice,
            Some(0o060000) => FileType::BlockDevice,
            _ => FileType::Unknown,
        }
    }

    /// The permission bits (mode without the file type), if sent.
    pub fn mode(&self) -> Option<u32> {
        self.permissions.map(|p| p & 0o7777)
    }

    pub(crate) fn decode(f: &mut Fields<'_>) -> Result<Attrs, Violation> {
        let flags = f.u32("attribute flags")?;
        if flags & !attr::KNOWN != 0 {
            return Err(Violation::UnknownAttrFlags { flags });
        }
        let mut a = Attrs::default();
        if flags & attr::SIZE != 0 {
            a.size = Some(f.u64("size")?);
        }
        if flags & attr::UIDGID != 0 {
            a.uid = Some(f.u32("uid")?);
            a.gid = Some(f.u32("gid")?);
        }
        if flags & attr::PERMISSIONS != 0 {
            a.permissions = Some(f.u32("permissions")?);
        }
        if flags & attr::ACMODTIME != 0 {
            a.atime = Some(f.u32("atime")?);
            a.mtime = Some(f.u32("mtime")?);
        }
        if flags & attr::EXTENDED != 0 {
            let count = f.u32("extended attribute count")?;
            // Each pair takes at least 8 bytes of the (bounded) packet, so this ends.
            for _ in 0..count {
                f.string("extended attribute type")?;
                f.string("extended attribute data")?;
            }
        }
        Ok(a)
    }

    /// Encodes what is set; uid/gid and atime/mtime go as pairs, so a half-set pair is not sent.
    pub(crate) fn encode(&self, p: &mut Packet) {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= attr::SIZE;
        }
        if self.uid.is_some() && self.gid.is_some() {
            flags |= attr::UIDGID;
        }
        if self.permissions.is_some() {
            flags |= attr::PERMISSIONS;
        }
        if self.atime.is_some() && self.mtime.is_some() {
            flags |= attr::ACMODTIME;
        }
        p.u32(flags);
        if let Some(size) = self.size {
            p.u64(size);
        }
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            p.u32(uid).u32(gid);
        }
        if let Some(perm) = self.permissions {
            p.u32(perm);
        }
        if let (Some(at), Some(mt)) = (self.atime, self.mtime) {
            p.u32(at).u32(mt);
        }
    }
}

/// One directory entry: a validated name (no '/', no NUL, not "." or "..") and its attributes
/// (as lstat: OpenSSH's READDIR does not follow symlinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, bytes as on the server.
    pub name: Vec<u8>,
    /// Its attributes.
    pub attrs: Attrs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fxp;

    #[test]
    fn attrs_round_trip_through_the_wire_format() {
        let a = Attrs {
            size: Some(1 << 40),
            uid: Some(1000),
            gid: Some(100),
            permissions: Some(0o100644),
            atime: Some(1),
            mtime: Some(2),
        };
        let mut p = Packet::new(fxp::ATTRS, 1, 0);
        a.encode(&mut p);
        let bytes = p.finish();
        let mut f = Fields::new(&bytes[9..], fxp::ATTRS);
        assert_eq!(Attrs::decode(&mut f), Ok(a));
        assert!(f.is_empty());
        assert_eq!(a.file_type(), FileType::Regular);
        assert_eq!(a.mode(), Some(0o644));
    }

    #[test]
    fn unknown_attribute_flags_are_a_violation() {
        let body = 0x10u32.to_be_bytes();
        let mut f = Fields::new(&body, fxp::ATTRS);
        assert_eq!(
            Attrs::decode(&mut f),
            Err(Violation::UnknownAttrFlags { flags: 0x10 })
        );
    }
}
