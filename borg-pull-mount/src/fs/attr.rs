//! SFTP attributes as the kernel sees them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType as Kind, INodeNo};

use crate::remote::{Attrs, FileType};

pub(crate) fn kind(attrs: &Attrs) -> Kind {
    match attrs.file_type() {
        FileType::Directory => Kind::Directory,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::NamedPipe,
        FileType::Socket => Kind::Socket,
        FileType::CharDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        // A name without type bits is served as a file: reading it is bounded like any other.
        FileType::Regular | FileType::Unknown => Kind::RegularFile,
    }
}

fn time(seconds: Option<u32>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(seconds.unwrap_or(0)))
}

/// SFTP carries no ctime, no inode numbers, no link counts, no device numbers: ctime is the
/// mtime, every file has one link (so borg sees no hard links), devices have rdev 0.
pub(crate) fn file_attr(ino: u64, attrs: &Attrs) -> FileAttr {
    let size = attrs.size.unwrap_or(0);
    let kind = kind(attrs);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(attrs.atime),
        mtime: time(attrs.mtime),
        ctime: time(attrs.mtime),
        crtime: time(attrs.mtime),
        kind,
        perm: (attrs.permissions.unwrap_or(0) & 0o7777) as u16,
        nlink: if kind == Kind::Directory { 2 } else { 1 },
        uid: attrs.uid.unwrap_or(0),
        gid: attrs.gid.unwrap_or(0),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
