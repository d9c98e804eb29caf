//! The FUSE file system: each kernel request is answered from the caches at once when it can be,
//! otherwise by a task on the tokio runtime that replies when the remote side has answered, so
//! the FUSE thread never waits for the network.

mod ahead;
mod attr;
mod dir;
mod read;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier,
    RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle as Runtime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::inodes::{Inodes, ROOT};
use crate::limits::Limits;
use crate::remote::{self, Attrs};
use crate::report::{ProblemKind, Reporter};
use crate::source::Source;

use ahead::AheadFile;
use dir::{DirSlot, Listing};
use read::OpenFile;

pub(crate) struct State<S: Source> {
    inodes: Inodes,
    dirs: HashMap<u64, DirSlot>,
    dir_handles: HashMap<u64, Arc<Listing>>,
    files: HashMap<u64, Arc<OpenFile<S>>>,
    /// Files read without an open, by inode (see [`Core::file_by_inode`]), oldest first in
    /// `by_inode_order`.
    by_inode: HashMap<u64, Arc<OpenFile<S>>>,
    by_inode_order: VecDeque<u64>,
    /// Files read ahead of borg, in listing order (at most `files_ahead`).
    ahead: VecDeque<AheadFile>,
    next_fh: u64,
}

/// Everything the request tasks share.
pub(crate) struct Core<S: Source> {
    source: S,
    limits: Limits,
    state: Mutex<State<S>>,
    /// The kernel sends no OPEN or RELEASE for files (FUSE_NO_OPEN_SUPPORT): reads come by inode.
    no_open: AtomicBool,
    reporter: Arc<Reporter>,
    runtime: Runtime,
    cancel: CancellationToken,
    prefetch_slots: Semaphore,
    prefetch_entries: AtomicUsize,
    prefetch_queued: AtomicUsize,
    read_ahead_bytes: Arc<Semaphore>,
    listing_ids: AtomicU64,
}

impl<S: Source> Core<S> {
    pub(crate) fn new(
        source: S,
        limits: Limits,
        root_path: Vec<u8>,
        root_attrs: Attrs,
        reporter: Arc<Reporter>,
        runtime: Runtime,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let read_ahead_permits = usize::try_from(limits.read_ahead_total / u64::from(limits.read_chunk))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Core {
            state: Mutex::new(State {
                inodes: Inodes::new(root_path, root_attrs, limits.max_inodes),
                dirs: HashMap::new(),
                dir_handles: HashMap::new(),
                files: HashMap::new(),
                by_inode: HashMap::new(),
                by_inode_order: VecDeque::new(),
                ahead: VecDeque::new(),
                next_fh: 1,
            }),
            prefetch_slots: Semaphore::new(limits.prefetch_concurrent.max(1)),
            read_ahead_bytes: Arc::new(Semaphore::new(read_ahead_permits)),
            source,
            limits,
            reporter,
            runtime,
            cancel,
            no_open: AtomicBool::new(false),
            prefetch_entries: AtomicUsize::new(0),
            prefetch_queued: AtomicUsize::new(0),
            listing_ids: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // A panicking request task must not take the whole mount down with a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.limits.cache_ttl
    }

    fn path(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.lock().inodes.path(ino).ok_or(Errno::ENOENT)
    }

    /// Runs `work` as a task that ends when the mount stops (its reply, dropped, answers EIO).
    /// Once stopped, a new request's work is dropped before it starts.
    fn spawn(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(self.until_stopped(work));
    }

    /// Runs `work` here until it would wait, then as a task (see [`Core::spawn`]). For a request
    /// that is mostly answered at once (a read of data already read ahead, a release): handing
    /// it to a task costs thread wake-ups, on a small file as much time as the read itself.
    fn answer(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        let mut work = Box::pin(self.until_stopped(work));
        // Inside the runtime's context, so that what `work` starts (timers, tasks) has its runtime.
        let _context = self.runtime.enter();
        let mut here = std::task::Context::from_waker(std::task::Waker::noop());
        if work.as_mut().poll(&mut here).is_pending() {
            // Polled again by the runtime, with the runtime's waker: what it waits for is asked
            // again and wakes the task, not the no-op waker of this first poll.
            self.runtime.spawn(work);
        }
    }

    fn until_stopped(
        &self,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let cancel = self.cancel.clone();
        async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = work => {}
            }
        }
    }

    /// One remote call under its deadline; a passed deadline is reported.
    async fn call<T>(
        &self,
        operation: &'static str,
        path: &[u8],
        deadline: Duration,
        call: impl Future<Output = Result<T, remote::Error>>,
    ) -> Result<T, Errno> {
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::debug!(path = %String::from_utf8_lossy(path), operation, %error, "remote error");
                Err(Errno::from_i32(error.to_errno()))
            }
            Err(_elapsed) => {
                self.reporter.add(
                    path.to_vec(),
                    ProblemKind::Deadline {
                        operation,
                        after: deadline,
                    },
                );
                Err(Errno::EIO)
            }
        }
    }

    fn node_attr(&self, ino: u64) -> Option<(fuser::FileAttr, bool)> {
        let state = self.lock();
        let node = state.inodes.get(ino)?;
        Some((attr::file_attr(ino, &node.attrs), self.fresh(node.fetched)))
    }

    async fn refresh_attr(&self, ino: u64) -> Result<fuser::FileAttr, Errno> {
        let path = self.path(ino)?;
        let deadline = self.limits.request_deadline;
        let attrs = self
            .call("lstat", &path, deadline, self.source.lstat(&path))
            .await?;
        let attr = attr::file_attr(ino, &attrs);
        self.lock().inodes.set_attrs(ino, attrs, Instant::now());
        Ok(attr)
    }

    async fn read_link(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let path = self.path(ino)?;
        let deadline = self.limits.request_deadline;
        let target = self
            .call("readlink", &path, deadline, self.source.read_link(&path))
            .await?;
        if target.len() > self.limits.max_link_len {
            let kind = ProblemKind::LinkTooLong {
                len: target.len(),
                bound: self.limits.max_link_len,
            };
            self.reporter.add(path, kind);
            return Err(Errno::EIO);
        }
        Ok(target)
    }
}

/// The `fuser` face of [`Core`], and what ends with its session.
pub(crate) struct Fs<S: Source> {
    pub(crate) core: Arc<Core<S>>,
    /// Dropped with the session, however it ends.
    pub(crate) _end: SessionEnd,
}

/// Cleans up after a FUSE session however it ends (unmounted, its thread's error or panic): the
/// fuser session drops the file system as its thread ends.
pub(crate) struct SessionEnd {
    pub(crate) cancel: CancellationToken,
    pub(crate) connection: Arc<Connection>,
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        // A stop cancels first and then ends the session; a failed mount had no session to end;
        // anything else ended it under us.
        if self.cancel.is_cancelled() || !self.connection.was_mounted() {
            return;
        }
        tracing::warn!("the FUSE session ended while mounted; its requests are answered with errors");
        // The request tasks end, and the replies they held answer EIO as they drop; what the
        // kernel still waits for (nobody reads the connection now) ends with the connection.
        self.cancel.cancel();
        self.connection.abort();
    }
}

impl<S: Source> Fs<S> {
    fn ttl(&self) -> Duration {
        self.core.limits.cache_ttl
    }
}

impl<S: Source> Filesystem for Fs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is an optimisation the kernel may lack: ask for the ones it has.
        // READDIRPLUS: a listing carries the attributes, so borg's stats cost no lookups;
        // PARALLEL_DIROPS: lookups in one directory need not queue behind each other;
        // ASYNC_DIO: a large direct read is sent as several requests at once.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::debug!(?missing, "kernel lacks a FUSE capability");
            }
        }
        // NO_OPEN_SUPPORT: the first open answers ENOSYS and the kernel sends no OPEN or RELEASE
        // again: a small file is one READ instead of an OPEN, two READs and a RELEASE, each a
        // round trip through the kernel and two thread switches. Reads then go through the page
        // cache and stop at the listed size (see `OpenFile`); a kernel without it keeps opens.
        if self.core.limits.no_open {
            match config.add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT) {
                Ok(()) => self.core.no_open.store(true, Ordering::Relaxed),
                Err(missing) => tracing::debug!(?missing, "kernel lacks a FUSE capability"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let core = &self.core;
        let name = name.as_bytes().to_vec();
        let ttl = self.ttl();
        match core.cached_entry(parent.0, &name) {
            dir::Cached::Found(attr) => reply.entry(&ttl, &attr, Generation(0)),
            dir::Cached::Absent => reply.error(Errno::ENOENT),
            dir::Cached::Unknown => {
                let task_core = core.clone();
                core.spawn(async move {
                    match task_core.listing(parent.0).await {
                        Ok(listing) => match task_core.entry_in(&listing, parent.0, &name) {
                            Some(attr) => reply.entry(&ttl, &attr, Generation(0)),
                            None => reply.error(Errno::ENOENT),
                        },
                        Err(errno) => reply.error(errno),
                    }
                });
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = &self.core;
        let ttl = self.ttl();
        match core.node_attr(ino.0) {
            None => reply.error(Errno::ENOENT),
            Some((attr, true)) => reply.attr(&ttl, &attr),
            Some((_, false)) => {
                let task_core = core.clone();
                core.spawn(async move {
                    match task_core.refresh_attr(ino.0).await {
                        Ok(attr) => reply.attr(&ttl, &attr),
                        Err(errno) => reply.error(errno),
                    }
                });
            }
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        self.core.spawn(async move {
            match core.read_link(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        self.core.spawn(async move {
            match core.listing(ino.0).await {
                Ok(listing) => {
                    core.prefetch_below(&listing, core.limits.prefetch_depth);
                    let mut state = core.lock();
                    let fh = state.next_fh;
                    state.next_fh += 1;
                    state.dir_handles.insert(fh, listing);
                    drop(state);
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.core.lock();
        let Some(listing) = state.dir_handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let parent = state.inodes.get(ino.0).map_or(ROOT, |node| node.parent);
        let Ok(start) = usize::try_from(offset) else {
            return reply.ok();
        };
        for index in start..listing.children.len() + 2 {
            let full = match index {
                0 => reply.add(ino, 1, fuser::FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), 2, fuser::FileType::Directory, ".."),
                _ => {
                    let child = listing.children[index - 2];
                    let Some(node) = state.inodes.get(child) else {
                        continue;
                    };
                    let name = OsStr::from_bytes(&node.name);
                    reply.add(INodeNo(child), index as u64 + 1, attr::kind(&node.attrs), name)
                }
            };
            if full {
                break;
            }
        }
        drop(state);
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl();
        let state = self.core.lock();
        let Some(listing) = state.dir_handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Ok(start) = usize::try_from(offset) else {
            return reply.ok();
        };
        let Some(this) = state.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let this_attr = attr::file_attr(ino.0, &this.attrs);
        for index in start..listing.children.len() + 2 {
            let full = match index {
                // The kernel skips "." and ".." of a READDIRPLUS reply when it links entries.
                0 => reply.add(ino, 1, ".", &ttl, &this_attr, Generation(0)),
                1 => reply.add(INodeNo(this.parent), 2, "..", &ttl, &this_attr, Generation(0)),
                _ => {
                    let child = listing.children[index - 2];
                    let Some(node) = state.inodes.get(child) else {
                        continue;
                    };
                    let attr = attr::file_attr(child, &node.attrs);
                    let name = OsStr::from_bytes(&node.name);
                    reply.add(INodeNo(child), index as u64 + 1, name, &ttl, &attr, Generation(0))
                }
            };
            if full {
                break;
            }
        }
        drop(state);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.lock().dir_handles.remove(&fh.0);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc_acc_mode() != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.core.no_open.load(Ordering::Relaxed) {
            // Not an error: the kernel takes it as "no opens needed" (and the mount is
            // read-only, so it refuses opens for writing itself).
            return reply.error(Errno::ENOSYS);
        }
        match self.core.open_file(ino.0) {
            // Direct I/O: every read reaches us, so the bound on a growing file holds whatever
            // size the kernel cached, and nothing is cached twice (borg reads each file once).
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // No open (the kernel's 0): the file is kept by inode.
        let by_inode = fh.0 == 0;
        let file = match by_inode {
            true => self.core.file_by_inode(ino.0),
            false => self.core.lock().files.get(&fh.0).cloned().ok_or(Errno::EBADF),
        };
        let file = match file {
            Ok(file) => file,
            Err(errno) => return reply.error(errno),
        };
        if offset == 0 {
            self.core.read_files_after(ino.0);
        }
        let core = self.core.clone();
        self.core.answer(async move {
            let read = file.read(&core, offset, size).await;
            if by_inode && file.read_to_end(offset, size, &read) {
                core.done_by_inode(ino.0, &file);
            }
            // Let go of the file before the reader hears back: its release may follow at once.
            drop(file);
            match read {
                Ok(data) => reply.data(&data),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let file = self.core.lock().files.remove(&fh.0);
        // The remote close is not waited for: borg's next open need not pay its round trip.
        if let Some(file) = file {
            self.core.answer(file.close());
        }
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever written. ENOSYS: the kernel remembers it for the connection and stops
        // sending a FLUSH with every close (one call into the daemon per file borg opens).
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // SFTP v3 has no statfs (only an OpenSSH extension); borg does not ask for it.
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    // SFTP carries no xattrs or ACLs. ENOSYS: the kernel remembers it for the connection and
    // answers every later call itself (EOPNOTSUPP, as a file system without xattrs does), so
    // probes cost neither a round trip nor a call into the daemon.

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }

    // What the mount does not do, answered at once and quietly (fuser's defaults log a warning
    // per call: borg asks for every file's flags). The kernel refuses writes to a read-only mount
    // itself; these answers back it up.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // FS_IOC_GETFLAGS (borg's file flags) and the rest: SFTP carries no flags. ENOTTY is what a
        // file system without the ioctl answers; borg then records no flags.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // ENOSYS: the kernel stops asking and seeks by itself (SEEK_DATA/SEEK_HOLE see no holes).
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and treats files as always ready, as for a local file.
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        // Not asked for (no FUSE_POSIX_LOCKS): the kernel keeps locks locally.
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Nothing is ever written: nothing to sync.
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Both ends are on this mount (the kernel asks only then): the target is read-only.
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}

/// `O_WRONLY | O_RDWR`: an open for writing.
fn libc_acc_mode() -> i32 {
    0o1 | 0o2
}
