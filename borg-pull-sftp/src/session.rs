//! The session's machinery: the table of outstanding requests, the reader task that validates
//! every reply before it reaches a caller, and the writer task that batches requests.
//!
//! Both tasks hold only the [`Session`]; the [`crate::Client`] owns them through it: its last
//! clone's Drop (or `shutdown`) ends the session, which cancels `stop`, which ends both tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::attrs::Attrs;
use crate::client::DirEntry;
use crate::error::{Bound, Error, Op, Request, Violation};
use crate::limits::{Limits, MAX_HANDLE_LEN, MAX_STATUS_MESSAGE};
use crate::wire::{fx, fxp, Fields, Packet};

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

/// The caller's side: sends requests and waits for their replies.
pub(crate) struct Link {
    pub(crate) session: Arc<Session>,
    tx: mpsc::Sender<Vec<u8>>,
}

/// Removes a registered request that was never handed to the writer (the caller's future was
/// dropped, or its deadline passed, before that), so its slot comes back.
struct Unsent<'a> {
    session: &'a Session,
    id: Option<u32>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.session.lock().pending.remove(&id);
        }
    }
}

impl Link {
    pub(crate) fn session_limits(&self) -> &Limits {
        &self.session.limits
    }

    /// One request: `fill` writes the fields after the id. Ends by the request's deadline.
    pub(crate) async fn call(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<Reply, Error> {
        self.submit(op, packet_type, path, expect, capacity, fill)
            .await?
            .wait(path)
            .await
    }

    /// Sends one request without waiting for its reply, so several can be in flight from one
    /// caller (pipelined writes). Its deadline starts now and covers waiting for a slot.
    pub(crate) async fn submit(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<Submitted<'_>, Error> {
        let timeout = self.session.limits.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.send(op, packet_type, expect, capacity, fill)).await {
            Ok(Ok(reply)) => Ok(Submitted {
                op,
                reply,
                deadline,
                timeout,
                link: self,
            }),
            Ok(Err(fail)) => Err(fail.into_error(op, path)),
            Err(_) => Err(Error::Deadline {
                request: Request::new(op, path),
                timeout,
            }),
        }
    }

    async fn send(
        &self,
        op: Op,
        packet_type: u8,
        expect: Expect,
        capacity: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<oneshot::Receiver<Result<Reply, Fail>>, Fail> {
        let session = &*self.session;
        // The semaphore is never closed.
        let slot = session
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.session_fail())?;
        let (waiter, reply) = oneshot::channel();
        let id = {
            let mut t = session.lock();
            if let State::Ended(e) = &t.state {
                return Err(Fail::Session(e.clone()));
            }
            // Ids wrap after 2^32 requests; skip those still outstanding (at most max_outstanding).
            let mut id = session.next_id.fetch_add(1, Ordering::Relaxed);
            while t.pending.contains_key(&id) {
                id = session.next_id.fetch_add(1, Ordering::Relaxed);
            }
            t.pending.insert(
                id,
                Pending {
                    op,
                    expect,
                    waiter,
                    _slot: slot,
                },
            );
            id
        };
        let mut unsent = Unsent {
            session,
            id: Some(id),
        };
        let mut packet = Packet::new(packet_type, id, capacity);
        fill(&mut packet);
        if self.tx.send(packet.finish()).await.is_err() {
            return Err(self.session_fail());
        }
        unsent.id = None;
        Ok(reply)
    }

    fn session_fail(&self) -> Fail {
        Fail::Session(self.session.ended().unwrap_or_else(|| Error::Closed {
            reason: "the session's tasks stopped".into(),
        }))
    }
}

/// A request on its way: [`Submitted::wait`] for its reply. Dropped, it is abandoned: the reply
/// is dropped when it comes, and its slot is held until then.
pub(crate) struct Submitted<'a> {
    op: Op,
    reply: oneshot::Receiver<Result<Reply, Fail>>,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
    link: &'a Link,
}

impl Submitted<'_> {
    pub(crate) async fn wait(self, path: &[u8]) -> Result<Reply, Error> {
        match tokio::time::timeout_at(self.deadline, self.reply).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(fail))) => Err(fail.into_error(self.op, path)),
            Ok(Err(_)) => Err(self.link.session_fail().into_error(self.op, path)),
            Err(_) => Err(Error::Deadline {
                request: Request::new(self.op, path),
                timeout: self.timeout,
            }),
        }
    }
}

/// Writes INIT, reads and checks VERSION: the extensions the server announced.
pub(crate) async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    limits: &Limits,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&Packet::init().finish()).await.map_err(closed)?;
    wr.flush().await.map_err(closed)?;
    let len = read_len(rd, limits).await?;
    if len < 5 {
        return Err(protocol(Violation::PacketTooShort { len }));
    }
    let mut body = vec![0; len as usize];
    rd.read_exact(&mut body).await.map_err(closed)?;
    if body[0] != fxp::VERSION {
        return Err(protocol(Violation::NotVersion { packet_type: body[0] }));
    }
    let mut f = Fields::new(&body[1..], fxp::VERSION);
    let version = f.u32("version")?;
    if version < crate::wire::VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    let mut extensions = Vec::new();
    while !f.is_empty() {
        if extensions.len() >= limits.max_extensions {
            return Err(protocol(Violation::TooManyExtensions {
                max: limits.max_extensions,
            }));
        }
        let name = f.string("extension name")?.to_vec();
        let data = f.string("extension data")?.to_vec();
        extensions.push((name, data));
    }
    Ok(extensions)
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
    let reader = tokio::spawn(read_loop(session.clone(), rd));
    let writer = tokio::spawn(write_loop(session.clone(), wr, rx));
    (Link { session, tx }, reader, writer)
}

/// Requests written before one flush: what callers issued together goes out in one write.
const WRITE_BATCH: usize = 64;

async fn write_loop<W: AsyncWrite + Unpin>(
    session: Arc<Session>,
    mut wr: BufWriter<W>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let stop = session.stop.clone();
    let result: std::io::Result<()> = async {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
            };
            let batch = async {
                wr.write_all(&first).await?;
                for _ in 0..WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(m) => wr.write_all(&m).await?,
                        Err(_) => break,
                    }
                }
                wr.flush().await
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = batch => r?,
            }
        }
    }
    .await;
    match result {
        Err(e) => session.end(closed(e)),
        Ok(()) => {
            // EOF to the server (sftp-server exits on it); a peer that does not read cannot
            // hold us here.
            let _ = tokio::time::timeout(crate::limits::CLOSE_GRACE, wr.shutdown()).await;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(session: Arc<Session>, mut rd: BufReader<R>) {
    let stop = session.stop.clone();
    let mut scratch = Vec::new();
    let err = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        e = read_replies(&session, &mut rd, &mut scratch) => e,
    };
    session.end(err);
}

/// Reads replies until one breaks the protocol or the stream ends; returns why it stopped.
async fn read_replies<R: AsyncRead + Unpin>(
    session: &Session,
    rd: &mut BufReader<R>,
    scratch: &mut Vec<u8>,
) -> Error {
    let limits = &session.limits;
    loop {
        let len = match read_len(rd, limits).await {
            Ok(len) => len,
            Err(e) => return e,
        };
        if len < 9 {
            return protocol(Violation::PacketTooShort { len });
        }
        let (packet_type, id) =
            match async { Ok::<_, std::io::Error>((rd.read_u8().await?, rd.read_u32().await?)) }.await {
                Ok(h) => h,
                Err(e) => return closed(e),
            };
        let Some(pending) = session.lock().pending.remove(&id) else {
            return protocol(Violation::UnknownId { id, packet_type });
        };
        let body_len = (len - 5) as usize;
        let result = if let (fxp::DATA, Expect::Data { requested }) = (packet_type, pending.expect) {
            read_data(rd, body_len, requested).await
        } else {
            scratch.clear();
            scratch.resize(body_len, 0);
            match rd.read_exact(scratch).await {
                Ok(_) => parse(pending.op, pending.expect, packet_type, scratch, limits).map_err(protocol),
                Err(e) => Err(closed(e)),
            }
        };
        match result {
            Ok(reply) => {
                // The caller may have given up (deadline, dropped future): nothing to do then.
                let _ = pending.waiter.send(reply);
            }
            Err(e) => {
                let _ = pending.waiter.send(Err(Fail::Session(e.clone())));
                return e;
            }
        }
    }
}

/// A DATA body read straight into the buffer handed to the caller: one allocation, no copy.
async fn read_data<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    body_len: usize,
    requested: u32,
) -> Result<Result<Reply, Fail>, Error> {
    if body_len < 4 {
        return Err(protocol(Violation::Malformed {
            packet_type: fxp::DATA,
            field: "data",
        }));
    }
    let n = rd.read_u32().await.map_err(closed)?;
    if n as usize != body_len - 4 {
        return Err(protocol(Violation::Malformed {
            packet_type: fxp::DATA,
            field: "data",
        }));
    }
    if n > requested {
        return Err(protocol(Violation::DataTooLong { requested, got: n }));
    }
    let mut data = vec![0; n as usize];
    rd.read_exact(&mut data).await.map_err(closed)?;
    Ok(Ok(Reply::Data(data)))
}

/// Checks one reply body (after type and id) against what its request expects.
fn parse(
    op: Op,
    expect: Expect,
    packet_type: u8,
    body: &[u8],
    limits: &Limits,
) -> Result<Result<Reply, Fail>, Violation> {
    let mut f = Fields::new(body, packet_type);
    let reply = match (packet_type, expect) {
        (fxp::STATUS, _) => {
            let code = f.u32("status code")?;
            // draft-02 has message and language; some servers leave both out.
            let message = if f.is_empty() {
                String::new()
            } else {
                let m = f.string("status message")?;
                f.string("status language tag")?;
                let m = &m[..m.len().min(MAX_STATUS_MESSAGE)];
                String::from_utf8_lossy(m).escape_debug().to_string()
            };
            f.finish("status")?;
            return Ok(match (code, expect) {
                (fx::OK, Expect::Status) => Ok(Reply::Ok),
                (fx::OK, _) => return Err(Violation::UnexpectedType { op, packet_type }),
                (fx::EOF, Expect::Data { .. } | Expect::Entries) => Ok(Reply::Eof),
                (code, _) => Err(Fail::Status { code, message }),
            });
        }
        (fxp::HANDLE, Expect::Handle) => {
            let h = f.string("handle")?;
            if h.len() > MAX_HANDLE_LEN {
                return Err(Violation::HandleTooLong { len: h.len() as u32 });
            }
            Reply::Handle(h.to_vec())
        }
        (fxp::ATTRS, Expect::Attrs) => Reply::Attrs(Attrs::decode(&mut f)?),
        (fxp::NAME, Expect::Entries) => return parse_entries(&mut f, limits),
        (fxp::NAME, Expect::OneName) => {
            let count = f.u32("name count")?;
            if count != 1 {
                return Err(Violation::NameCount { op, count });
            }
            let name = f.string("filename")?;
            f.string("longname")?;
            Attrs::decode(&mut f)?;
            f.finish("name")?;
            if name.len() > limits.max_link_len {
                return Ok(Err(Fail::TooBig {
                    bound: Bound::LinkLength,
                    limit: limits.max_link_len as u64,
                }));
            }
            if name.is_empty() || name.contains(&0) {
                return Ok(Err(Fail::BadName {
                    name: name.to_vec(),
                    reason: bad_path_reason(name),
                }));
            }
            Reply::Name(name.to_vec())
        }
        (fxp::EXTENDED_REPLY, Expect::Extended) => {
            let rest = f.remaining();
            let data = body[body.len() - rest..].to_vec();
            return Ok(Ok(Reply::Extended(data)));
        }
        _ => return Err(Violation::UnexpectedType { op, packet_type }),
    };
    f.finish("reply")?;
    Ok(Ok(reply))
}

fn bad_path_reason(name: &[u8]) -> &'static str {
    if name.is_empty() {
        "is empty"
    } else {
        "contains a NUL byte"
    }
}

/// The smallest a NAME entry can be: two empty strings and attribute flags.
const MIN_ENTRY: usize = 12;

fn parse_entries(f: &mut Fields<'_>, limits: &Limits) -> Result<Result<Reply, Fail>, Violation> {
    let sent = f.u32("name count")?;
    if sent == 0 {
        return Err(Violation::EmptyName);
    }
    if sent as usize > f.remaining() / MIN_ENTRY {
        return Err(Violation::Malformed {
            packet_type: fxp::NAME,
            field: "name count",
        });
    }
    let mut entries = Vec::with_capacity(sent as usize);
    let mut refused = None;
    for _ in 0..sent {
        let name = f.string("filename")?;
        f.string("longname")?;
        let attrs = Attrs::decode(f)?;
        if refused.is_some() || name == b"." || name == b".." {
            continue;
        }
        if name.len() > limits.max_name_len {
            refused = Some(Fail::TooBig {
                bound: Bound::NameLength,
                limit: limits.max_name_len as u64,
            });
        } else if let Some(reason) = bad_name(name) {
            refused = Some(Fail::BadName {
                name: name.to_vec(),
                reason,
            });
        } else {
            entries.push(DirEntry {
                name: name.to_vec(),
                attrs,
            });
        }
    }
    f.finish("name")?;
    Ok(match refused {
        Some(fail) => Err(fail),
        None => Ok(Reply::Entries { entries, sent }),
    })
}

/// Why a directory entry's name cannot be one file in that directory, if it cannot.
pub(crate) fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else if name.contains(&0) {
        Some("contains a NUL byte")
    } else {
        None
    }
}
