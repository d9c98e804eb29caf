//! The session's machinery: the table of outstanding requests, the reader task that validates
//! every reply before it reaches a caller, and the writer task that batches requests.
//!
//! Both tasks hold only the [`Session`]; the [`crate::Client`] owns them through it: its last
//! clone's Drop (or `shutdown`) ends the session, which cancels `stop`, which ends both tasks.

mod handshake;
mod link;
mod reader;
mod reply;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::attrs::Attrs;
use crate::client::DirEntry;
use crate::error::{Bound, Error, Op, Request, Violation};
use crate::limits::Limits;
use crate::wire::fx;

pub(crate) use handshake::handshake;
pub(crate) use link::{Link, Submitted};

/// What a request accepts as its reply (besides a STATUS with an error, which every request
/// accepts).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// STATUS OK.
    Status,
    /// HANDLE.
    Handle,
    /// ATTRS.
    Attrs,
    /// DATA of at most `requested` bytes, or STATUS EOF.
    Data { requested: u32 },
    /// NAME with directory entries, or STATUS EOF.
    Entries,
    /// NAME with exactly one name (READLINK, REALPATH).
    OneName,
    /// EXTENDED_REPLY.
    Extended,
}

/// A validated reply.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok,
    Eof,
    Handle(Vec<u8>),
    Attrs(Attrs),
    Data(Vec<u8>),
    /// Directory entries ("." and ".." dropped) and how many the server sent (them included).
    Entries {
        entries: Vec<DirEntry>,
        sent: u32,
    },
    Name(Vec<u8>),
    Extended(Vec<u8>),
}

/// Why one request failed, before the caller adds which request it was.
#[derive(Debug)]
pub(crate) enum Fail {
    Status {
        code: u32,
        message: String,
    },
    BadName {
        name: Vec<u8>,
        reason: &'static str,
    },
    TooBig {
        bound: Bound,
        limit: u64,
    },
    /// The session ended; every request gets this same error.
    Session(Error),
}

impl Fail {
    pub(crate) fn into_error(self, op: Op, path: &[u8]) -> Error {
        let request = Request::new(op, path);
        match self {
            Fail::Status { code, message } => match code {
                fx::NO_SUCH_FILE => Error::NoSuchFile { request },
                fx::PERMISSION_DENIED => Error::PermissionDenied { request },
                fx::FAILURE => Error::Failure { request, message },
                fx::OP_UNSUPPORTED => Error::Unsupported { request },
                code => Error::Status {
                    request,
                    code,
                    message,
                },
            },
            Fail::BadName { name, reason } => Error::BadName {
                request,
                name,
                reason,
            },
            Fail::TooBig { bound, limit } => Error::TooBig {
                request,
                bound,
                limit,
            },
            Fail::Session(e) => e,
        }
    }
}

type Waiter = oneshot::Sender<Result<Reply, Fail>>;

struct Pending {
    op: Op,
    expect: Expect,
    waiter: Waiter,
    /// Held until the reply comes, even when the caller gave up: a server that never answers
    /// uses up slots, so what it makes us remember stays bounded by max_outstanding.
    _slot: OwnedSemaphorePermit,
}

enum State {
    Open,
    Ended(Error),
}

struct Table {
    state: State,
    pending: HashMap<u32, Pending>,
}

/// What the client and its two tasks share.
pub(crate) struct Session {
    table: Mutex<Table>,
    slots: Arc<Semaphore>,
    next_id: AtomicU32,
    /// Cancelled when the session ends, for whatever reason: both tasks stop on it.
    pub(crate) stop: CancellationToken,
    limits: Limits,
}

impl Session {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Session {
            table: Mutex::new(Table {
                state: State::Open,
                pending: HashMap::new(),
            }),
            slots: Arc::new(Semaphore::new(limits.max_outstanding.max(1))),
            next_id: AtomicU32::new(0),
            stop: CancellationToken::new(),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated (single inserts and
        // removes), so a poisoned lock is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error the session ended with, if it has.
    pub(crate) fn ended(&self) -> Option<Error> {
        match &self.lock().state {
            State::Open => None,
            State::Ended(e) => Some(e.clone()),
        }
    }

    /// Ends the session: every outstanding request fails with `err`, later ones at once, and
    /// both tasks stop. The first cause wins.
    pub(crate) fn end(&self, err: Error) {
        let pending = {
            let mut t = self.lock();
            if let State::Ended(_) = t.state {
                return;
            }
            if !matches!(err, Error::Shutdown) {
                tracing::warn!("{err}");
            }
            t.state = State::Ended(err.clone());
            std::mem::take(&mut t.pending)
        };
        for (_, p) in pending {
            let _ = p.waiter.send(Err(Fail::Session(err.clone())));
        }
        self.stop.cancel();
    }
}

fn closed(e: std::io::Error) -> Error {
    let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "end of stream (the SFTP server exited or the channel closed)".to_string()
    } else {
        e.to_string()
    };
    Error::Closed { reason }
}

fn protocol(violation: Violation) -> Error {
    Error::Protocol { violation }
}

impl From<Violation> for Error {
    fn from(violation: Violation) -> Self {
        Error::Protocol { violation }
    }
}

/// A packet's length, refused above max_packet before anything of its body is read.
async fn read_len<R: AsyncRead + Unpin>(rd: &mut R, limits: &Limits) -> Result<u32, Error> {
    let len = rd.read_u32().await.map_err(closed)?;
    if len > limits.max_packet {
        return Err(protocol(Violation::PacketTooLong {
            len,
            max: limits.max_packet,
        }));
    }
    Ok(len)
}

/// Starts the two tasks on a stream whose handshake is done.
pub(crate) fn spawn<R, W>(
    session: Arc<Session>,
    rd: BufReader<R>,
    wr: BufWriter<W>,
) -> (Link, tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    // Every queued packet holds a slot, so max_outstanding bounds the queue too.
    let (tx, rx) = mpsc::channel(session.limits.max_outstanding.max(1));
    let reader = tokio::spawn(reader::read_loop(session.clone(), rd));
    let writer = tokio::spawn(writer::write_loop(session.clone(), wr, rx));
    (Link { session, tx }, reader, writer)
}
