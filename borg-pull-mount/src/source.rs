//! What the mount reads from: the remote tree, one async call per SFTP request.

use std::future::Future;

use borg_pull_sftp::{Attrs, DirEntry, Error, ReadData};

/// A remote tree the mount serves. Implemented by borg-pull-sftp's `Client`; tests implement
/// hostile ones. Many calls may be outstanding at once; the mount puts a deadline on each.
pub trait Source: Send + Sync + 'static {
    /// An open remote file (borg-pull-sftp's `Handle`; tests' sources have their own).
    type Handle: Send + Sync + 'static;

    /// Attributes of `path` itself (a symlink is not followed).
    fn lstat(&self, path: &[u8]) -> impl Future<Output = Result<Attrs, Error>> + Send;
    /// Every entry of the directory `path` with its attributes (`.` and `..` left out).
    fn read_dir(&self, path: &[u8]) -> impl Future<Output = Result<Vec<DirEntry>, Error>> + Send;
    /// The target of the symlink `path`.
    fn read_link(&self, path: &[u8]) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
    /// Opens `path` for reading.
    fn open_read(&self, path: &[u8]) -> impl Future<Output = Result<Self::Handle, Error>> + Send;
    /// Reads up to `len` bytes at `offset`.
    fn read(
        &self,
        handle: &Self::Handle,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<ReadData, Error>> + Send;
    /// Closes a handle from [`Source::open_read`].
    fn close(&self, handle: Self::Handle) -> impl Future<Output = Result<(), Error>> + Send;
}
