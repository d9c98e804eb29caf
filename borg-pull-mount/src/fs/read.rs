//! Open files: reads in chunks of `read_chunk` bytes on a fixed grid, with a window of chunks
//! requested ahead of a sequential reader (bounded per file and across files), and a bound on how
//! far a file is read whatever it keeps sending.
//!
//! What a file costs: up to its listed size a kernel read is served in full and read ahead; the
//! answer that ends short exactly at the listed size is the end the listing promised, so the
//! reader's last read (at the end) is answered here: a file smaller than a chunk is one READ.
//!
//! Two ways in. Without opens (FUSE_NO_OPEN_SUPPORT, the default) reads come by inode through
//! the page cache, and the kernel reads no further than the listed size: a file that grew is cut
//! there (reported when the chunk holding its end shows more). With opens (direct I/O) every read
//! reaches us, and a file that grew is read on past its listed size, one chunk per kernel read,
//! up to its bound.
//!
//! Nothing is sized from what the remote side says: a chunk's buffer is at most `read_chunk`
//! bytes, a kernel read's answer at most what the kernel asked for, the number of chunks read
//! ahead is bounded per file (`read_ahead_window`) and across files (`read_ahead_total`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use fuser::Errno;
use tokio::sync::{watch, OnceCell, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::{Core, State};
use crate::remote::ReadData;
use crate::report::ProblemKind;
use crate::source::Source;

/// A chunk's bytes: fewer than the chunk's length where the file ends.
pub(crate) type ChunkResult = Result<Arc<Vec<u8>>, Errno>;

enum ChunkState {
    Pending(JoinHandle<ChunkResult>),
    /// The first chunk, read ahead of borg by another task ([`super::ahead`]).
    ReadAhead(watch::Receiver<Option<ChunkResult>>),
    Ready(Arc<Vec<u8>>),
}

struct Chunk {
    state: ChunkState,
    /// Read-ahead memory this chunk holds (none for a chunk a reader asked for).
    _permit: Option<OwnedSemaphorePermit>,
}

impl ChunkState {
    /// Stops a chunk no reader will wait for.
    fn abandon(self) {
        if let ChunkState::Pending(task) = self {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Window {
    /// Chunks by offset (multiples of the chunk size).
    chunks: BTreeMap<u64, Chunk>,
    /// End of the last read: a read starting here is sequential.
    sequential_end: u64,
    /// Chunks up to here have been requested ahead (a multiple of the chunk size).
    ahead_to: u64,
}

/// Where a file ends is not known yet.
const END_UNKNOWN: u64 = u64::MAX;

pub(crate) struct OpenFile<S: Source> {
    /// The mount, to close the remote handle when the file's last holder lets go (not kept
    /// alive by its files: the mount's state holds them).
    core: Weak<Core<S>>,
    path: Vec<u8>,
    /// The remote handle, opened by the first read (or the failure to open it, kept); closed
    /// when the file is dropped.
    handle: OnceCell<Result<S::Handle, Errno>>,
    /// The size the listing reported: read ahead up to it, beyond it only on demand.
    listed: u64,
    /// Bytes served at most: the listed size plus the slack, or the absolute cap.
    bound: u64,
    /// Where the file ends, once an answer showed it ([`END_UNKNOWN`] until then).
    end: AtomicU64,
    window: Mutex<Window>,
    /// Read without an open (page cache): the kernel reads no further than the listed size, so
    /// that is where a file that grew is cut (and reported).
    cut_at_listed: bool,
    bound_reported: AtomicBool,
    /// The server answered a chunk with too many short reads: the file is given up.
    trickled: AtomicBool,
}

impl<S: Source> Core<S> {
    /// Opens a file without asking the remote side: borg (1.2) opens every file, unchanged ones
    /// too, and checks its files cache against fstat before reading. The remote open happens at
    /// the first read, so an unchanged file costs no round trip.
    ///
    /// A file read ahead of borg starts with that first chunk.
    pub(super) fn open_file(self: &Arc<Self>, ino: u64) -> Result<u64, Errno> {
        let mut state = self.lock();
        let file = self.file_for_reader(&state, ino)?;
        let fh = state.next_fh;
        state.next_fh += 1;
        state.files.insert(fh, file);
        Ok(fh)
    }

    /// The file a read without an open is for (the kernel sends no OPEN or RELEASE once the
    /// open answered ENOSYS): kept by inode while it is read, the oldest let go beyond the bound.
    pub(super) fn file_by_inode(self: &Arc<Self>, ino: u64) -> Result<Arc<OpenFile<S>>, Errno> {
        let mut state = self.lock();
        if let Some(file) = state.by_inode.get(&ino) {
            return Ok(file.clone());
        }
        let file = self.file_for_reader(&state, ino)?;
        state.by_inode.insert(ino, file.clone());
        state.by_inode_order.push_back(ino);
        while state.by_inode_order.len() > self.limits.files_reading.max(1) {
            if let Some(oldest) = state.by_inode_order.pop_front() {
                // Its remote handle is closed as the last read holding it ends.
                state.by_inode.remove(&oldest);
            }
        }
        Ok(file)
    }

    /// The inode's file is read to its end: let it go (the remote handle closes with it).
    pub(super) fn done_by_inode(&self, ino: u64, file: &Arc<OpenFile<S>>) {
        let mut state = self.lock();
        if state
            .by_inode
            .get(&ino)
            .is_some_and(|kept| Arc::ptr_eq(kept, file))
        {
            state.by_inode.remove(&ino);
            state.by_inode_order.retain(|kept| *kept != ino);
        }
    }

    /// A file for a reader; one read ahead of borg starts with that first chunk.
    fn file_for_reader(self: &Arc<Self>, state: &State<S>, ino: u64) -> Result<Arc<OpenFile<S>>, Errno> {
        let file = self.new_open_file(state, ino)?;
        let attrs = state.inodes.get(ino).ok_or(Errno::ENOENT)?.attrs;
        if let Some(first_chunk) = state
            .ahead
            .iter()
            .find_map(|ahead| ahead.first_chunk_for(ino, &attrs))
        {
            let mut window = file.lock();
            window.chunks.insert(
                0,
                Chunk {
                    state: ChunkState::ReadAhead(first_chunk),
                    _permit: None,
                },
            );
            window.ahead_to = u64::from(self.limits.read_chunk);
        }
        Ok(Arc::new(file))
    }

    /// A file as its listing describes it, not opened remotely yet.
    pub(super) fn new_open_file(self: &Arc<Self>, state: &State<S>, ino: u64) -> Result<OpenFile<S>, Errno> {
        let node = state.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let listed = node.attrs.size.unwrap_or(0);
        let path = state.inodes.path(ino).ok_or(Errno::ENOENT)?;
        let bound = listed
            .saturating_add(self.limits.growth_slack)
            .min(self.limits.file_cap);
        Ok(OpenFile {
            core: Arc::downgrade(self),
            path,
            handle: OnceCell::new(),
            listed,
            bound,
            end: AtomicU64::new(END_UNKNOWN),
            window: Mutex::new(Window::default()),
            cut_at_listed: self.no_open.load(Ordering::Relaxed),
            bound_reported: AtomicBool::new(false),
            trickled: AtomicBool::new(false),
        })
    }
}

impl<S: Source> OpenFile<S> {
    /// The remote handle, opened once by whichever read comes first.
    async fn handle(&self, core: &Core<S>) -> Result<&S::Handle, Errno> {
        let deadline = core.limits.request_deadline;
        let open = core.call("open", &self.path, deadline, core.source.open_read(&self.path));
        self.handle
            .get_or_init(|| open)
            .await
            .as_ref()
            .map_err(|errno| *errno)
    }

    /// Reads the first chunk (for reading the file ahead of borg).
    pub(super) async fn read_first_chunk(&self, core: &Core<S>) -> ChunkResult {
        let (start, end) = self.chunk_at(0, u64::from(core.limits.read_chunk));
        self.read_full(core, start, end - start).await
    }

    /// Whether a read at `offset` of `size` bytes, answered `read`, took the file to its end
    /// for a reader without an open: short of what was asked, or at its listed size.
    pub(super) fn read_to_end(&self, offset: u64, size: u32, read: &Result<Vec<u8>, Errno>) -> bool {
        match read {
            Ok(data) => {
                let len = data.len() as u64;
                len < u64::from(size) || offset.saturating_add(len) >= self.listed
            }
            Err(_) => false,
        }
    }

    fn found_end(&self, at: u64) {
        self.end.fetch_min(at, Ordering::Relaxed);
    }

    /// Reads `[start, start + len)` (`len` at most one chunk), asking again after short answers
    /// (bounded). A file that trickled once fails every later read at once.
    async fn read_full(&self, core: &Core<S>, start: u64, len: u64) -> ChunkResult {
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let deadline = core.limits.request_deadline;
        for _ in 0..crate::limits::MAX_SHORT_READS {
            if self.trickled.load(Ordering::Relaxed) {
                return Err(Errno::EIO);
            }
            let have = data.len() as u64;
            if have >= len {
                return Ok(Arc::new(data));
            }
            let want = u32::try_from(len - have).unwrap_or(u32::MAX);
            let read = core.source.read(self.handle(core).await?, start + have, want);
            match core.call("read", &self.path, deadline, read).await? {
                ReadData::Bytes(bytes) if !bytes.is_empty() => {
                    // More than asked for is a broken peer: keep only what was asked.
                    let take = bytes.len().min(usize::try_from(len - have).unwrap_or(usize::MAX));
                    data.extend_from_slice(&bytes[..take]);
                    let at = start + data.len() as u64;
                    // Short, and ending where the listing said the file ends: that is the end
                    // (no second READ to hear EOF; a small file costs one READ).
                    if at == self.listed && (data.len() as u64) < len {
                        self.found_end(at);
                        return Ok(Arc::new(data));
                    }
                }
                ReadData::Bytes(_) | ReadData::Eof => {
                    self.found_end(start + have);
                    return Ok(Arc::new(data));
                }
            }
        }
        if (data.len() as u64) < len {
            if !self.trickled.swap(true, Ordering::Relaxed) {
                core.reporter.add(self.path.clone(), ProblemKind::TrickleRead);
            }
            return Err(Errno::EIO);
        }
        Ok(Arc::new(data))
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk holding `offset` (below the bound): `[start, end)` on the grid of `chunk`-sized
    /// chunks, cut at the bound. Never empty.
    fn chunk_at(&self, offset: u64, chunk: u64) -> (u64, u64) {
        debug_assert!(
            offset < self.bound,
            "no chunk at {offset}: the bound is {}",
            self.bound
        );
        let start = offset / chunk * chunk;
        (start, start.saturating_add(chunk).min(self.bound))
    }

    fn spawn_chunk(self: &Arc<Self>, core: &Arc<Core<S>>, start: u64) -> JoinHandle<ChunkResult> {
        let (start, end) = self.chunk_at(start, u64::from(core.limits.read_chunk));
        let len = end.saturating_sub(start);
        let (core, file) = (core.clone(), self.clone());
        let cancel = core.cancel.clone();
        core.runtime.clone().spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(Errno::EIO),
                result = file.read_full(&core, start, len) => result,
            }
        })
    }

    /// Requests the chunks up to `until` not yet requested, within the listed size, while
    /// read-ahead memory lasts.
    fn schedule_ahead(self: &Arc<Self>, core: &Arc<Core<S>>, window: &mut Window, until: u64) {
        let chunk = u64::from(core.limits.read_chunk);
        // Past the listed size only what is asked is read: a file that grew may be endless.
        let until = until
            .min(self.listed)
            .min(self.bound)
            .min(self.end.load(Ordering::Relaxed));
        let most = core.limits.read_ahead_window / chunk + 1;
        let mut start = window.ahead_to;
        for _ in 0..most {
            if start >= until {
                break;
            }
            let Ok(permit) = core.read_ahead_bytes.clone().try_acquire_owned() else {
                break;
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = window.chunks.entry(start) {
                let task = self.spawn_chunk(core, start);
                slot.insert(Chunk {
                    state: ChunkState::Pending(task),
                    _permit: Some(permit),
                });
            }
            start += chunk;
        }
        window.ahead_to = window.ahead_to.max(start);
    }

    pub(super) async fn read(
        self: &Arc<Self>,
        core: &Arc<Core<S>>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        if offset >= self.end.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        if offset >= self.bound {
            self.check_bound(core).await;
            return Ok(Vec::new());
        }
        let chunk = u64::from(core.limits.read_chunk);
        // Up to the listed size a read is served in full; past it (a file that grew), one chunk
        // per read, so that an endless file is asked for no more than the reader takes.
        let stop = match offset < self.listed {
            true => self.listed,
            false => self.chunk_at(offset, chunk).1,
        };
        let end = offset
            .saturating_add(u64::from(size))
            .min(stop)
            .min(self.bound)
            .min(self.end.load(Ordering::Relaxed));
        if end <= offset {
            return Ok(Vec::new());
        }
        let first = self.chunk_at(offset, chunk).0;
        // offset < end <= bound: at least one chunk, at most the kernel's read size / chunk + 2.
        let count = (end - first).div_ceil(chunk);
        let mut needed = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        {
            let mut window = self.lock();
            let reach = core.limits.read_ahead_window;
            // The kernel may send the parts of one large read out of order: only a jump out of the
            // window counts as a seek.
            let seek = offset > window.ahead_to.max(window.sequential_end)
                || offset.saturating_add(reach) < window.sequential_end;
            if seek {
                // What was read ahead is not what will be read.
                for (_, old) in std::mem::take(&mut window.chunks) {
                    old.state.abandon();
                }
                window.ahead_to = first;
                window.sequential_end = end;
            } else {
                window.sequential_end = window.sequential_end.max(end);
            }
            // Chunks a window behind the reader are done with.
            let keep = window.chunks.split_off(&first.saturating_sub(reach));
            for (_, old) in std::mem::replace(&mut window.chunks, keep) {
                old.state.abandon();
            }
            for index in 0..count {
                let start = first + index * chunk;
                let state = match window.chunks.remove(&start) {
                    Some(found) => found.state,
                    None => ChunkState::Pending(self.spawn_chunk(core, start)),
                };
                needed.push((start, state));
            }
            window.ahead_to = window.ahead_to.max(first + count * chunk);
            self.schedule_ahead(core, &mut window, end.saturating_add(reach));
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        let mut needed = needed.into_iter();
        while let Some((start, state)) = needed.next() {
            let got = match state {
                ChunkState::Ready(data) => Ok(data),
                ChunkState::Pending(task) => task.await.unwrap_or(Err(Errno::EIO)),
                ChunkState::ReadAhead(first_chunk) => wait_for(first_chunk).await,
            };
            let data = match got {
                Ok(data) => data,
                Err(errno) => {
                    // The chunks after a failed one are not waited for.
                    needed.for_each(|(_, rest)| rest.abandon());
                    return Err(errno);
                }
            };
            let from = usize::try_from(offset.saturating_sub(start))
                .unwrap_or(usize::MAX)
                .min(data.len());
            let to = usize::try_from(end - start).unwrap_or(usize::MAX).min(data.len());
            out.extend_from_slice(&data[from..to]);
            let ends_here = (data.len() as u64) < self.chunk_at(start, chunk).1 - start;
            let chunk_end = start + data.len() as u64;
            if self.cut_at_listed
                && chunk_end > self.listed
                && !self.bound_reported.swap(true, Ordering::Relaxed)
            {
                // The chunk holding the listed end went on: the file grew, and the kernel
                // reads it no further than the listed size.
                core.reporter.add(
                    self.path.clone(),
                    ProblemKind::FileExceedsBound { bound: self.listed },
                );
            }
            if needed.len() == 0 && to < data.len() {
                // The reader will want the rest of this chunk next.
                self.lock().chunks.insert(
                    start,
                    Chunk {
                        state: ChunkState::Ready(data),
                        _permit: None,
                    },
                );
            }
            if ends_here {
                // Known here too when another task read the chunk (a file read ahead).
                self.found_end(chunk_end);
                // The file ends in this chunk: the chunks after it were asked for in vain.
                needed.for_each(|(_, rest)| rest.abandon());
                break;
            }
        }
        if offset + out.len() as u64 == self.bound {
            self.check_bound(core).await;
        }
        Ok(out)
    }

    /// At the bound: whether the file goes on past it (then it is reported, once). The remote
    /// side is asked by a task: a read may run on the FUSE thread ([`Core::answer`]), which must
    /// never wait inside a source.
    async fn check_bound(self: &Arc<Self>, core: &Arc<Core<S>>) {
        if self.bound_reported.load(Ordering::Relaxed) {
            return;
        }
        let (file, task_core) = (self.clone(), core.clone());
        let probe = core
            .runtime
            .spawn(async move { file.probe_past_bound(&task_core).await });
        // The task has let go of the file once it is done, before the reader hears back.
        let _ = probe.await;
    }

    async fn probe_past_bound(&self, core: &Core<S>) {
        let deadline = core.limits.request_deadline;
        let Ok(handle) = self.handle(core).await else {
            return;
        };
        let probe = core.source.read(handle, self.bound, 1);
        if let Ok(ReadData::Bytes(bytes)) = core.call("read", &self.path, deadline, probe).await {
            if !bytes.is_empty() && !self.bound_reported.swap(true, Ordering::Relaxed) {
                core.reporter.add(
                    self.path.clone(),
                    ProblemKind::FileExceedsBound { bound: self.bound },
                );
            }
        }
    }

    /// A reader is done with the file: what is still being read for it stops; the remote
    /// handle closes as the last holder lets go (see the `Drop`).
    pub(super) async fn close(self: Arc<Self>) {
        let chunks = std::mem::take(&mut self.lock().chunks);
        for (_, chunk) in chunks {
            if let ChunkState::Pending(task) = chunk.state {
                task.abort();
                // Aborted tasks end at once; their copies of the file go with them.
                let _ = task.await;
            }
        }
    }
}

impl<S: Source> Drop for OpenFile<S> {
    /// Closes the remote handle, if it was opened, by a task: the last holder may be the FUSE
    /// thread ([`Core::answer`]), which must never wait inside a source. Once the mount stops,
    /// the handles are closed with the session instead.
    fn drop(&mut self) {
        // Never opened (nobody read it) or failed to open: nothing to close.
        let Some(Ok(handle)) = self.handle.take() else {
            return;
        };
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let path = std::mem::take(&mut self.path);
        let task_core = core.clone();
        core.spawn(async move {
            let deadline = task_core.limits.request_deadline;
            let close = task_core.source.close(handle);
            if let Err(errno) = task_core.call("close", &path, deadline, close).await {
                tracing::debug!(?errno, "remote close failed");
            }
        });
    }
}

/// Waits for a chunk read ahead; a task that ended without an answer (the mount is stopping)
/// fails the read.
async fn wait_for(mut first_chunk: watch::Receiver<Option<ChunkResult>>) -> ChunkResult {
    match first_chunk.wait_for(Option::is_some).await {
        Ok(chunk) => chunk.clone().unwrap_or(Err(fuser::Errno::EIO)),
        Err(_ended) => Err(fuser::Errno::EIO),
    }
}
