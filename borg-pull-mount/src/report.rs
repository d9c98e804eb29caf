//! What went wrong during a mount's life that borg cannot see: bounds hit, deadlines passed.

use std::sync::Mutex;
use std::time::Duration;

/// One problem, with the remote path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The remote path (bytes: Unix names need not be UTF-8).
    pub path: Vec<u8>,
    /// What happened.
    pub kind: ProblemKind,
}

/// What happened to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Reads stopped at `bound` bytes (the listed size plus the slack, or the absolute cap) while
    /// the file still had data: it grows or never ends.
    FileExceedsBound {
        /// Bytes served.
        bound: u64,
    },
    /// A directory listing had more entries than allowed; the directory reads as an error.
    DirectoryTooLarge {
        /// Entries the listing had.
        entries: usize,
        /// The bound.
        bound: usize,
    },
    /// The inode table is full; the directory reads as an error.
    TooManyInodes {
        /// The bound.
        bound: usize,
    },
    /// A directory lies deeper than allowed; it reads as an error.
    TooDeep {
        /// The bound.
        bound: usize,
    },
    /// A symlink's target is longer than allowed; it reads as an error.
    LinkTooLong {
        /// The target's length.
        len: usize,
        /// The bound.
        bound: usize,
    },
    /// A remote call passed its deadline; the FUSE call failed with EIO.
    Deadline {
        /// Which call.
        operation: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// A file gave short reads too often (a trickling server); the read failed with EIO.
    TrickleRead,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = String::from_utf8_lossy(&self.path);
        match &self.kind {
            ProblemKind::FileExceedsBound { bound } => {
                write!(f, "{path}: still growing after {bound} bytes; read stopped there")
            }
            ProblemKind::DirectoryTooLarge { entries, bound } => {
                write!(
                    f,
                    "{path}: {entries} entries, more than the bound of {bound}; not listed"
                )
            }
            ProblemKind::TooManyInodes { bound } => {
                write!(
                    f,
                    "{path}: the mount already knows {bound} entries (its bound); not listed"
                )
            }
            ProblemKind::TooDeep { bound } => write!(f, "{path}: deeper than {bound} levels; not listed"),
            ProblemKind::LinkTooLong { len, bound } => {
                write!(f, "{path}: symlink target of {len} bytes, more than {bound}")
            }
            ProblemKind::Deadline { operation, after } => {
                write!(f, "{path}: {operation} got no answer within {after:?}")
            }
            ProblemKind::TrickleRead => write!(f, "{path}: the server answered reads a few bytes at a time"),
        }
    }
}

/// The problems of one mount, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The first problems, in order.
    pub problems: Vec<Problem>,
    /// How many more were not kept.
    pub dropped: u64,
}

#[derive(Debug)]
pub(crate) struct Reporter {
    report: Mutex<Report>,
    max: usize,
}

impl Reporter {
    pub(crate) fn new(max: usize) -> Self {
        Reporter {
            report: Mutex::new(Report::default()),
            max,
        }
    }

    pub(crate) fn add(&self, path: Vec<u8>, kind: ProblemKind) {
        let problem = Problem { path, kind };
        tracing::warn!(%problem, "mount");
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if report.problems.len() < self.max {
            report.problems.push(problem);
        } else {
            report.dropped += 1;
        }
    }

    pub(crate) fn snapshot(&self) -> Report {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
