//! The remote side's types: borg-pull-sftp's, as the contract fixes them.

pub use borg_pull_sftp::{Attrs, Client, DirEntry, Error, FileType, Handle, ReadData};

use crate::source::Source;

impl Source for Client {
    type Handle = Handle;

    async fn lstat(&self, path: &[u8]) -> Result<Attrs, Error> {
        Client::lstat(self, path).await
    }

    async fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, Error> {
        Client::read_dir(self, path).await
    }

    async fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, Error> {
        Client::read_link(self, path).await
    }

    async fn open_read(&self, path: &[u8]) -> Result<Handle, Error> {
        Client::open_read(self, path).await
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<ReadData, Error> {
        Client::read(self, handle, offset, len).await
    }

    async fn close(&self, handle: Handle) -> Result<(), Error> {
        Client::close(self, handle).await
    }
}
