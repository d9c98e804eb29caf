//! The remote side's types, as fixed by the SFTP contract (notes/s5/contract-sftp.md).
//!
//! Stand-ins until borg-pull-sftp lands: then this file becomes `pub use borg_pull_sftp::{..}`.

/// Attributes as SFTP v3 carries them: every field optional, times in whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Size in bytes.
    pub size: Option<u64>,
    /// Numeric owner on the remote side.
    pub uid: Option<u32>,
    /// Numeric group on the remote side.
    pub gid: Option<u32>,
    /// Mode bits including the `S_IFMT` file type bits.
    pub permissions: Option<u32>,
    /// Access time, seconds since the epoch.
    pub atime: Option<u32>,
    /// Modification time, seconds since the epoch.
    pub mtime: Option<u32>,
}

/// The kind of a remote file, from the `S_IFMT` bits of `permissions`.
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
    /// No or unknown `S_IFMT` bits.
    Unknown,
}

impl Attrs {
    /// The file type the mode bits name.
    pub fn file_type(&self) -> FileType {
        match self.permissions.map(|p| p & 0o170000) {
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
}

/// One entry of a directory listing; the name is validated by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name: no `/`, no NUL, never `.` or `..`.
    pub name: Vec<u8>,
    /// The attributes the listing carried.
    pub attrs: Attrs,
}

/// An open remote file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle(pub Vec<u8>);

/// What one read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Up to the requested length; fewer bytes do not mean the end of the file.
    Bytes(Vec<u8>),
    /// The offset is at or past the end of the file.
    Eof,
}

/// A failed remote operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The remote side has no such file.
    #[error("no such file")]
    NoSuchFile,
    /// The remote side refused access.
    #[error("permission denied")]
    PermissionDenied,
    /// Any other failure, with the remote side's message.
    #[error("failure: {message}")]
    Failure {
        /// What the remote side said.
        message: String,
    },
}

impl Error {
    /// The errno a FUSE reply carries for this error.
    pub fn to_errno(&self) -> i32 {
        match self {
            Error::NoSuchFile => libc_errno::ENOENT,
            Error::PermissionDenied => libc_errno::EACCES,
            Error::Failure { .. } => libc_errno::EIO,
        }
    }
}

mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EIO: i32 = 5;
}
