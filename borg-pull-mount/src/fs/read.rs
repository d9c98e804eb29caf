//! Open files: reads in chunks of `read_chunk` bytes, with a window of chunks requested ahead of
//! a sequential reader (bounded per file and across files), and a bound on how far a file is
//! read whatever it keeps sending.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fuser::Errno;
use tokio::sync::{OnceCell, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::Core;
use crate::remote::ReadData;
use crate::report::ProblemKind;
use crate::source::Source;

type ChunkResult = Result<Arc<Vec<u8>>, Errno>;

enum ChunkState {
    Pending(JoinHandle<ChunkResult>),
    Ready(Arc<Vec<u8>>),
}

struct Chunk {
    state: ChunkState,
    /// Read-ahead memory this chunk holds (none for a chunk a reader asked for).
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Window {
    /// Chunks by offset (multiples of the chunk size).
    chunks: BTreeMap<u64, Chunk>,
    /// End of the last read: a read starting here is sequential.
    sequential_end: u64,
    /// Chunks up to here have been requested ahead.
    ahead_to: u64,
}

pub(crate) struct OpenFile<H> {
    path: Vec<u8>,
    /// The remote handle, opened by the first read (or the failure to open it, kept).
    handle: OnceCell<Result<H, Errno>>,
    /// The size the listing reported: read ahead up to it (and one probe past it for EOF),
    /// beyond it only on demand.
    listed: u64,
    /// Bytes served at most: the listed size plus the slack, or the absolute cap.
    bound: u64,
    window: Mutex<Window>,
    bound_reported: AtomicBool,
    /// The server answered a chunk with too many short reads: the file is given up.
    trickled: AtomicBool,
}

impl<S: Source> Core<S> {
    /// Opens a file without asking the remote side: borg (1.2) opens every file, unchanged ones
    /// too, and checks its files cache against fstat before reading. The remote open happens at
    /// the first read, so an unchanged file costs no round trip.
    pub(super) fn open_file(&self, ino: u64) -> Result<u64, Errno> {
        let mut state = self.lock();
        let node = state.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let listed = node.attrs.size.unwrap_or(0);
        let path = state.inodes.path(ino).ok_or(Errno::ENOENT)?;
        let bound = listed
            .saturating_add(self.limits.growth_slack)
            .min(self.limits.file_cap);
        let file = Arc::new(OpenFile {
            path,
            handle: OnceCell::new(),
            listed,
            bound,
            window: Mutex::new(Window::default()),
            bound_reported: AtomicBool::new(false),
            trickled: AtomicBool::new(false),
        });
        let fh = state.next_fh;
        state.next_fh += 1;
        state.files.insert(fh, file);
        Ok(fh)
    }
}

impl<H: Send + Sync + 'static> OpenFile<H> {
    /// The remote handle, opened once by whichever read comes first.
    async fn handle<S: Source<Handle = H>>(&self, core: &Core<S>) -> Result<&H, Errno> {
        let deadline = core.limits.request_deadline;
        let open = core.call("open", &self.path, deadline, core.source.open_read(&self.path));
        self.handle
            .get_or_init(|| open)
            .await
            .as_ref()
            .map_err(|errno| *errno)
    }

    /// Reads `[start, start + len)`, asking again after short answers (bounded). A file that
    /// trickled once fails every later read at once.
    async fn read_full<S: Source<Handle = H>>(&self, core: &Core<S>, start: u64, len: u64) -> ChunkResult {
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
                }
                ReadData::Bytes(_) | ReadData::Eof => return Ok(Arc::new(data)),
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

    /// The chunk holding `offset`: `[start, end)` on the grid of `chunk`-sized chunks, with a
    /// boundary at the listed size too, so that the listed bytes come in full answers and the
    /// chunk after them is the (cheap) read that finds the end of the file.
    fn chunk_at(&self, offset: u64, chunk: u64) -> (u64, u64) {
        let aligned = offset / chunk * chunk;
        let next = aligned.saturating_add(chunk);
        let (start, end) = match self.listed {
            listed if listed > aligned && listed < next && offset < listed => (aligned, listed),
            listed if listed > aligned && listed < next => (listed, next),
            _ => (aligned, next),
        };
        (start, end.min(self.bound))
    }

    fn spawn_chunk<S: Source<Handle = H>>(
        self: &Arc<Self>,
        core: &Arc<Core<S>>,
        start: u64,
    ) -> JoinHandle<ChunkResult> {
        let (start, end) = self.chunk_at(start, u64::from(core.limits.read_chunk));
        let len = end - start;
        let (core, file) = (core.clone(), self.clone());
        let cancel = core.cancel.clone();
        core.runtime.clone().spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => Err(Errno::EIO),
                result = file.read_full(&core, start, len) => result,
            }
        })
    }

    /// Requests the chunks up to `until` not yet requested, while read-ahead memory lasts.
    fn schedule_ahead<S: Source<Handle = H>>(
        self: &Arc<Self>,
        core: &Arc<Core<S>>,
        window: &mut Window,
        until: u64,
    ) {
        let chunk = u64::from(core.limits.read_chunk);
        // Past the listed size (plus the chunk that finds the end) only what is asked is read.
        let until = until.min(self.chunk_at(self.listed, chunk).1);
        let mut start = window.ahead_to;
        while start < until {
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
            start = self.chunk_at(start, chunk).1;
        }
        window.ahead_to = window.ahead_to.max(start);
    }

    pub(super) async fn read<S: Source<Handle = H>>(
        self: &Arc<Self>,
        core: &Arc<Core<S>>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        if offset >= self.bound {
            self.check_bound(core).await;
            return Ok(Vec::new());
        }
        let chunk = u64::from(core.limits.read_chunk);
        // A read stops at the listed size; past it, one chunk per read: a file that grew is
        // read on, and the usual end costs only the probe read ahead with the last data.
        let stop = match offset < self.listed {
            true => self.listed,
            false => self.chunk_at(offset, chunk).1,
        };
        let end = offset.saturating_add(u64::from(size)).min(stop);
        let first = self.chunk_at(offset, chunk).0;
        let mut needed = Vec::new();
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
                    if let ChunkState::Pending(task) = old.state {
                        task.abort();
                    }
                }
                window.ahead_to = first;
                window.sequential_end = end;
            } else {
                window.sequential_end = window.sequential_end.max(end);
            }
            // Chunks a window behind the reader are done with.
            let keep = window.chunks.split_off(&first.saturating_sub(reach));
            for (_, old) in std::mem::replace(&mut window.chunks, keep) {
                if let ChunkState::Pending(task) = old.state {
                    task.abort();
                }
            }
            let mut start = first;
            while start < end {
                let state = match window.chunks.remove(&start) {
                    Some(found) => found.state,
                    None => ChunkState::Pending(self.spawn_chunk(core, start)),
                };
                needed.push((start, state));
                start = self.chunk_at(start, chunk).1;
            }
            window.ahead_to = window.ahead_to.max(start);
            self.schedule_ahead(core, &mut window, end.saturating_add(reach));
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        let count = needed.len();
        for (index, (start, state)) in needed.into_iter().enumerate() {
            let data = match state {
                ChunkState::Ready(data) => data,
                ChunkState::Pending(task) => task.await.map_err(|_| Errno::EIO)??,
            };
            let from = usize::try_from(offset.saturating_sub(start))
                .unwrap_or(usize::MAX)
                .min(data.len());
            let to = usize::try_from(end - start).unwrap_or(usize::MAX).min(data.len());
            out.extend_from_slice(&data[from..to]);
            let (_, chunk_end) = self.chunk_at(start, chunk);
            let short = (data.len() as u64) < chunk_end - start;
            if index + 1 == count && (to < data.len()) {
                // The reader will want the rest of this chunk next.
                self.lock().chunks.insert(
                    start,
                    Chunk {
                        state: ChunkState::Ready(data),
                        _permit: None,
                    },
                );
            }
            if short {
                break;
            }
        }
        if offset + out.len() as u64 == self.bound {
            self.check_bound(core).await;
        }
        Ok(out)
    }

    /// At the bound: whether the file goes on past it (then it is reported, once).
    async fn check_bound<S: Source<Handle = H>>(&self, core: &Core<S>) {
        if self.bound_reported.load(Ordering::Relaxed) {
            return;
        }
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

    pub(super) async fn close<S: Source<Handle = H>>(self: Arc<Self>, core: &Core<S>) {
        let chunks = std::mem::take(&mut self.lock().chunks);
        for (_, chunk) in chunks {
            if let ChunkState::Pending(task) = chunk.state {
                task.abort();
                // Aborted tasks end at once; their copies of the handle go with them.
                let _ = task.await;
            }
        }
        let started = Instant::now();
        let Ok(file) = Arc::try_unwrap(self) else {
            tracing::debug!("file still in use at release; remote handle closed with the session");
            return;
        };
        // Never opened (borg only checked its files cache) or failed to open: nothing to close.
        let Some(Ok(handle)) = file.handle.into_inner() else {
            return;
        };
        let deadline = core.limits.request_deadline;
        if let Err(errno) = core
            .call("close", &file.path, deadline, core.source.close(handle))
            .await
        {
            tracing::debug!(?errno, elapsed = ?started.elapsed(), "remote close failed");
        }
    }
}
