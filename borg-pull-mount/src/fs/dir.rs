//! Directory listings: one READDIR sweep per directory, shared by every waiter, kept for the cache
//! TTL; and the prefetch walker that lists subdirectories before borg gets to them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use fuser::{Errno, FileAttr};
use tokio::sync::OnceCell;

use super::{attr, Core};
use crate::remote::FileType;
use crate::report::ProblemKind;
use crate::source::Source;

/// One sweep of a directory.
#[derive(Debug)]
pub(crate) struct Listing {
    /// Which sweep (a node is an entry of this listing when its `seen_in` is this id).
    pub(crate) id: u64,
    pub(crate) children: Vec<u64>,
    /// The children that are directories, for the prefetch walker.
    subdirs: Vec<u64>,
    /// The children that are regular files, in listing order (borg's), for reading files ahead.
    pub(crate) files: Vec<u64>,
    /// Where each of `files` is in it.
    file_positions: HashMap<u64, usize>,
}

impl Listing {
    /// Where the regular file `ino` is among [`Listing::files`].
    pub(crate) fn file_position(&self, ino: u64) -> Option<usize> {
        self.file_positions.get(&ino).copied()
    }
}

type ListingResult = Result<Arc<Listing>, Errno>;

/// A directory's listing: being fetched (waiters share the cell) or fetched at `started`.
pub(crate) struct DirSlot {
    cell: Arc<OnceCell<ListingResult>>,
    started: Instant,
}

impl DirSlot {
    /// The listing, once fetched (whether still fresh or not).
    pub(crate) fn listed(&self) -> Option<Arc<Listing>> {
        self.cell.get()?.as_ref().ok().cloned()
    }
}

/// What the caches say about a name, without asking the remote side.
pub(crate) enum Cached {
    Found(FileAttr),
    Absent,
    Unknown,
}

impl<S: Source> Core<S> {
    /// The answer to `lookup(parent, name)` if the parent's fresh listing has it.
    pub(super) fn cached_entry(&self, parent: u64, name: &[u8]) -> Cached {
        let state = self.lock();
        let Some(slot) = state.dirs.get(&parent) else {
            return Cached::Unknown;
        };
        let Some(Ok(listing)) = slot.cell.get() else {
            return Cached::Unknown;
        };
        if !self.fresh(slot.started) {
            return Cached::Unknown;
        }
        let listing = listing.clone();
        drop(state);
        match self.entry_in(&listing, parent, name) {
            Some(attr) => Cached::Found(attr),
            None => Cached::Absent,
        }
    }

    pub(super) fn entry_in(&self, listing: &Listing, parent: u64, name: &[u8]) -> Option<FileAttr> {
        let state = self.lock();
        let ino = state.inodes.child(parent, name)?;
        let node = state.inodes.get(ino)?;
        (node.seen_in == listing.id).then(|| attr::file_attr(ino, &node.attrs))
    }

    /// The directory's listing: cached if fresh, else fetched once for all who ask meanwhile.
    pub(super) async fn listing(self: &Arc<Self>, ino: u64) -> ListingResult {
        let cell = {
            let mut state = self.lock();
            let reuse = state.dirs.get(&ino).filter(|slot| match slot.cell.get() {
                None => true,
                Some(Ok(_)) => self.fresh(slot.started),
                // A failure is not kept: the next call asks again.
                Some(Err(_)) => false,
            });
            match reuse {
                Some(slot) => slot.cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    state.dirs.insert(
                        ino,
                        DirSlot {
                            cell: cell.clone(),
                            started: Instant::now(),
                        },
                    );
                    cell
                }
            }
        };
        cell.get_or_init(|| self.fetch_listing(ino)).await.clone()
    }

    async fn fetch_listing(&self, ino: u64) -> ListingResult {
        let (path, depth) = {
            let state = self.lock();
            let node = state.inodes.get(ino).ok_or(Errno::ENOENT)?;
            (state.inodes.path(ino).ok_or(Errno::ENOENT)?, node.depth)
        };
        if depth >= self.limits.max_depth {
            self.reporter.add(
                path,
                ProblemKind::TooDeep {
                    bound: self.limits.max_depth,
                },
            );
            return Err(Errno::EIO);
        }
        let deadline = self.limits.listing_deadline;
        let entries = self
            .call("read_dir", &path, deadline, self.source.read_dir(&path))
            .await?;
        let bound = self.limits.max_dir_entries;
        if entries.len() > bound {
            self.reporter.add(
                path,
                ProblemKind::DirectoryTooLarge {
                    entries: entries.len(),
                    bound,
                },
            );
            return Err(Errno::EIO);
        }
        let id = self.listing_ids.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut children = Vec::with_capacity(entries.len());
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        let mut state = self.lock();
        for entry in entries {
            let kind = entry.attrs.file_type();
            let Ok(child) = state.inodes.upsert(ino, &entry.name, entry.attrs, id, now) else {
                drop(state);
                self.reporter.add(
                    path,
                    ProblemKind::TooManyInodes {
                        bound: self.limits.max_inodes,
                    },
                );
                return Err(Errno::EIO);
            };
            children.push(child);
            match kind {
                FileType::Directory => subdirs.push(child),
                FileType::Regular => files.push(child),
                _ => {}
            }
        }
        let file_positions = files.iter().enumerate().map(|(at, &ino)| (ino, at)).collect();
        Ok(Arc::new(Listing {
            id,
            children,
            subdirs,
            files,
            file_positions,
        }))
    }

    /// Lists the subdirectories of `listing` ahead of borg, `depth` levels down, within the
    /// walker's bounds (listings in flight, entries per run, directories queued).
    pub(super) fn prefetch_below(self: &Arc<Self>, listing: &Listing, depth: usize) {
        if depth == 0 {
            return;
        }
        for &dir in &listing.subdirs {
            if self.prefetch_entries.load(Ordering::Relaxed) >= self.limits.prefetch_max_entries {
                return;
            }
            if self.lock().dirs.contains_key(&dir) {
                continue;
            }
            let queued = self.prefetch_queued.fetch_add(1, Ordering::Relaxed);
            if queued >= self.limits.prefetch_max_queued {
                self.prefetch_queued.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let core = self.clone();
            self.spawn(async move {
                let permit = core.prefetch_slots.acquire().await;
                core.prefetch_queued.fetch_sub(1, Ordering::Relaxed);
                if permit.is_err()
                    || core.prefetch_entries.load(Ordering::Relaxed) >= core.limits.prefetch_max_entries
                {
                    return;
                }
                if let Ok(listing) = core.listing(dir).await {
                    drop(permit);
                    core.prefetch_entries
                        .fetch_add(listing.children.len(), Ordering::Relaxed);
                    core.prefetch_below(&listing, depth - 1);
                }
            });
        }
    }
}
