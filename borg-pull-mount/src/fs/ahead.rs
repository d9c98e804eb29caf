//! Files read ahead of borg. borg reads one file at a time, in the order of its directory's
//! listing (it sorts by inode number, and the mount numbers new entries in listing order), and a
//! small file costs two round trips (OPEN, then READ) it would wait for one file after another.
//! So when borg reads a file from its start, the next `files_ahead` regular files of the listing
//! are opened, their first chunk read and their handle closed, each by its own task; borg's open
//! of one of them finds its first chunk on the way or there.
//!
//! Bounded: at most `files_ahead` files are ahead, each holding one chunk of the read-ahead memory
//! (none is started when it is used up); files borg has passed are dropped at its next read. A
//! file is only taken while its listed size and mtime are those it was read with.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};

use super::read::ChunkResult;
use super::Core;
use crate::remote::Attrs;
use crate::source::Source;

/// One file read ahead of borg.
pub(crate) struct AheadFile {
    ino: u64,
    /// The listing it is a file of, and its place among that listing's files.
    listing: u64,
    position: usize,
    /// The attributes it was read with.
    attrs: Attrs,
    /// Its first chunk, once read (`None` until then).
    first_chunk: watch::Receiver<Option<ChunkResult>>,
    _permit: OwnedSemaphorePermit,
}

impl AheadFile {
    /// The first chunk for a file with `attrs`, if this one was read with the same size and mtime.
    pub(super) fn first_chunk_for(
        &self,
        ino: u64,
        attrs: &Attrs,
    ) -> Option<watch::Receiver<Option<ChunkResult>>> {
        (self.ino == ino && self.attrs.size == attrs.size && self.attrs.mtime == attrs.mtime)
            .then(|| self.first_chunk.clone())
    }
}

impl<S: Source> Core<S> {
    /// borg reads `ino` from its start: reads the files after it in its listing ahead, and drops
    /// those before it.
    pub(super) fn read_files_after(self: &Arc<Self>, ino: u64) {
        let want = self.limits.files_ahead;
        if want == 0 {
            return;
        }
        let mut state = self.lock();
        let Some(node) = state.inodes.get(ino) else {
            return;
        };
        let (parent, seen_in) = (node.parent, node.seen_in);
        let Some(listing) = state
            .dirs
            .get(&parent)
            .and_then(|slot| slot.listed())
            .filter(|listing| listing.id == seen_in)
        else {
            return;
        };
        let Some(at) = listing.file_position(ino) else {
            return;
        };
        // borg is past everything before `at` (and has `at` open: its open took the chunk).
        state
            .ahead
            .retain(|file| file.listing == listing.id && file.position > at);
        let from = state.ahead.back().map_or(at + 1, |last| last.position + 1);
        let until = at.saturating_add(1).saturating_add(want).min(listing.files.len());
        for position in from..until {
            let child = listing.files[position];
            let Ok(permit) = self.read_ahead_bytes.clone().try_acquire_owned() else {
                break;
            };
            let Some(attrs) = state.inodes.get(child).map(|node| node.attrs) else {
                continue;
            };
            let Ok(file) = self.new_open_file(&state, child).map(Arc::new) else {
                continue;
            };
            let (sender, first_chunk) = watch::channel(None);
            state.ahead.push_back(AheadFile {
                ino: child,
                listing: listing.id,
                position,
                attrs,
                first_chunk,
                _permit: permit,
            });
            let core = self.clone();
            self.spawn(async move {
                let first = file.read_first_chunk(&core).await;
                sender.send_replace(Some(first));
                // The handle is not kept (closed as `file` drops): most files ahead are small
                // and now read whole; the rest of a larger one is read through borg's own open.
                drop(file);
            });
        }
    }
}
