//! The public client: one SFTP session over a byte stream, shared by its clones.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::task::JoinHandle;

use crate::attrs::Attrs;
use crate::error::{Bound, Error, Op, Request, Violation};
use crate::limits::{Limits, JOIN_GRACE, UNANNOUNCED_MAX_READ, UNANNOUNCED_MAX_WRITE, WRITE_WINDOW};
use crate::session::{self, Expect, Link, Reply, Session, Submitted};
use crate::wire::{fxp, Fields, Packet};

/// One directory entry: a validated name (no '/', no NUL, not "." or "..") and its attributes
/// (as lstat: OpenSSH's READDIR does not follow symlinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, bytes as on the server.
    pub name: Vec<u8>,
    /// Its attributes.
    pub attrs: Attrs,
}

/// What one READ returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Up to the length asked for (fewer is not the end of the file).
    Bytes(Vec<u8>),
    /// The offset is at or past the end of the file.
    Eof,
}

/// An open file or directory on the server; close it with [`Client::close`].
#[derive(Clone, PartialEq, Eq)]
pub struct Handle {
    raw: Vec<u8>,
    /// The path it was opened with, for error messages.
    path: Vec<u8>,
}

impl Handle {
    /// The path this handle was opened with.
    pub fn path(&self) -> &[u8] {
        &self.path
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({})", crate::error::Escaped(&self.path))
    }
}

/// SSH_FXP_OPEN's pflags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    /// SSH_FXF_READ.
    pub const READ: OpenFlags = OpenFlags(0x01);
    /// SSH_FXF_WRITE.
    pub const WRITE: OpenFlags = OpenFlags(0x02);
    /// SSH_FXF_APPEND.
    pub const APPEND: OpenFlags = OpenFlags(0x04);
    /// SSH_FXF_CREAT.
    pub const CREATE: OpenFlags = OpenFlags(0x08);
    /// SSH_FXF_TRUNC.
    pub const TRUNCATE: OpenFlags = OpenFlags(0x10);
    /// SSH_FXF_EXCL.
    pub const EXCLUSIVE: OpenFlags = OpenFlags(0x20);
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, rhs: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | rhs.0)
    }
}

/// The extensions the server announced in VERSION.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    list: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Extensions {
    /// Whether the server announced `name`.
    pub fn has(&self, name: &str) -> bool {
        self.data(name).is_some()
    }

    /// The data the server announced with `name` (OpenSSH: a version such as "1").
    pub fn data(&self, name: &str) -> Option<&[u8]> {
        self.list
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, d)| d.as_slice())
    }

    /// Every announced (name, data) pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.list.iter().map(|(n, d)| (n.as_slice(), d.as_slice()))
    }

    /// `hardlink@openssh.com`: [`Client::hardlink`].
    pub fn hardlink(&self) -> bool {
        self.has(HARDLINK)
    }

    /// `posix-rename@openssh.com`: [`Client::posix_rename`].
    pub fn posix_rename(&self) -> bool {
        self.has(POSIX_RENAME)
    }

    /// `limits@openssh.com`: the server's own bounds, used to size reads and writes.
    pub fn limits(&self) -> bool {
        self.has(LIMITS)
    }
}

const HARDLINK: &str = "hardlink@openssh.com";
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const LIMITS: &str = "limits@openssh.com";

/// The server's answer to `limits@openssh.com` (0 = no limit announced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest packet it accepts.
    pub max_packet: u64,
    /// Largest READ it answers in full.
    pub max_read: u64,
    /// Largest WRITE it accepts.
    pub max_write: u64,
    /// Handles it lets one session hold open.
    pub max_open_handles: u64,
}

/// An SFTP v3 session. Clones share it; many requests may be outstanding at once (up to
/// `Limits::max_outstanding`, more wait), each ends by its own deadline. Dropping the last clone
/// (or [`Client::shutdown`]) stops the session's tasks and closes the stream.
#[derive(Clone)]
pub struct Client {
    core: Arc<Core>,
}

struct Core {
    link: Link,
    extensions: Extensions,
    server_limits: Option<ServerLimits>,
    max_read: u32,
    max_write: u32,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // Ends the session, which cancels both tasks; they close the stream on their way out.
        self.link.session.end(Error::Shutdown);
    }
}

/// Capped at `ours`; the server's value only lowers it (0 means it announced none).
fn lower(ours: u32, server: u64) -> u32 {
    if server == 0 {
        ours
    } else {
        ours.min(u32::try_from(server).unwrap_or(u32::MAX))
    }
}

impl Client {
    /// Starts a session: INIT v3, VERSION (extensions noted), then `limits@openssh.com` if the
    /// server offers it. Ends by `limits.request_timeout`.
    pub async fn start<S>(stream: S, limits: Limits) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        // Many small replies (attributes, listings) per read(2); a large DATA body that finds it
        // empty goes past it, straight into the buffer handed to the caller.
        let mut rd = BufReader::with_capacity(128 * 1024, rd);
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        let timeout = limits.request_timeout;
        let list = match tokio::time::timeout(timeout, session::handshake(&mut rd, &mut wr, &limits)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Deadline {
                    request: Request::new(Op::Init, b""),
                    timeout,
                })
            }
        };
        let extensions = Extensions { list };
        let session = Session::new(limits.clone());
        let (link, reader, writer) = session::spawn(session, rd, wr);
        let mut core = Core {
            link,
            extensions,
            server_limits: None,
            // A DATA reply is 13 bytes of header and the data: a longer read could never be
            // answered within max_packet.
            max_read: limits
                .max_read
                .min(UNANNOUNCED_MAX_READ)
                .min(limits.max_packet.saturating_sub(13))
                .max(1),
            max_write: limits.max_write.clamp(1, UNANNOUNCED_MAX_WRITE),
            tasks: Mutex::new(vec![reader, writer]),
        };
        if core.extensions.limits() {
            // Dropping `core` on error ends the session and its tasks.
            match query_limits(&core.link).await {
                Ok(server) => {
                    let carried = limits.max_read.min(limits.max_packet.saturating_sub(13)).max(1);
                    core.max_read = lower(carried, server.max_read);
                    // A WRITE carries 4 (handle length) + handle + 8 + 4 + data after its
                    // 9-byte header.
                    let write_room = server.max_packet.saturating_sub(9 + 4 + 256 + 8 + 4);
                    core.max_write = lower(lower(limits.max_write, server.max_write), write_room);
                    core.server_limits = Some(server);
                }
                // Announced but refused: our own bounds still hold, the session is fine.
                Err(e) if e.is_status() => tracing::debug!("{e}; using our own read and write sizes"),
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(
            max_read = core.max_read,
            max_write = core.max_write,
            "sftp session started"
        );
        Ok(Client { core: Arc::new(core) })
    }

    /// The extensions the server announced.
    pub fn extensions(&self) -> &Extensions {
        &self.core.extensions
    }

    /// The server's `limits@openssh.com` answer, if it offered the extension.
    pub fn server_limits(&self) -> Option<ServerLimits> {
        self.core.server_limits
    }

    /// The largest READ this session asks for (longer reads are cut to it).
    pub fn max_read(&self) -> u32 {
        self.core.max_read
    }

    /// The largest WRITE this session sends ([`Client::write`] splits longer data).
    pub fn max_write(&self) -> u32 {
        self.core.max_write
    }

    fn link(&self) -> &Link {
        &self.core.link
    }

    async fn path_call(&self, op: Op, packet_type: u8, path: &[u8], expect: Expect) -> Result<Reply, Error> {
        self.link()
            .call(op, packet_type, path, expect, 4 + path.len(), |p| {
                p.string(path);
            })
            .await
    }

    async fn attrs_call(&self, op: Op, packet_type: u8, path: &[u8]) -> Result<Attrs, Error> {
        match self.path_call(op, packet_type, path, Expect::Attrs).await? {
            Reply::Attrs(a) => Ok(a),
            other => unreachable_reply(op, other),
        }
    }

    /// The attributes of `path`, not following a final symlink.
    pub async fn lstat(&self, path: &[u8]) -> Result<Attrs, Error> {
        self.attrs_call(Op::Lstat, fxp::LSTAT, path).await
    }

    /// The attributes of `path`, following symlinks.
    pub async fn stat(&self, path: &[u8]) -> Result<Attrs, Error> {
        self.attrs_call(Op::Stat, fxp::STAT, path).await
    }

    /// The attributes of an open file.
    pub async fn fstat(&self, handle: &Handle) -> Result<Attrs, Error> {
        match self
            .handle_call(Op::Fstat, fxp::FSTAT, handle, Expect::Attrs)
            .await?
        {
            Reply::Attrs(a) => Ok(a),
            other => unreachable_reply(Op::Fstat, other),
        }
    }

    async fn handle_call(
        &self,
        op: Op,
        packet_type: u8,
        handle: &Handle,
        expect: Expect,
    ) -> Result<Reply, Error> {
        self.link()
            .call(op, packet_type, &handle.path, expect, 4 + handle.raw.len(), |p| {
                p.string(&handle.raw);
            })
            .await
    }

    async fn open_handle(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        fill: impl FnOnce(&mut Packet),
    ) -> Result<Handle, Error> {
        let reply = self
            .link()
            .call(op, packet_type, path, Expect::Handle, 4 + path.len() + 32, |p| {
                p.string(path);
                fill(p);
            })
            .await?;
        match reply {
            Reply::Handle(raw) => Ok(Handle {
                raw,
                path: path.to_vec(),
            }),
            other => unreachable_reply(op, other),
        }
    }

    /// Lists a directory: OPENDIR, READDIR until EOF, CLOSE. At most `max_dir_entries` entries;
    /// "." and ".." are dropped, any other name that is not one file name fails the listing.
    pub async fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, Error> {
        let handle = self.open_handle(Op::Opendir, fxp::OPENDIR, path, |_| {}).await?;
        let listed = self.read_entries(&handle).await;
        let closed = self.close(handle).await;
        let entries = listed?;
        closed?;
        Ok(entries)
    }

    async fn read_entries(&self, handle: &Handle) -> Result<Vec<DirEntry>, Error> {
        let max = self.link().session_limits().max_dir_entries;
        // "." and ".." come on top of the entries we keep.
        let max_sent = max.saturating_add(2);
        let mut entries = Vec::new();
        let mut sent_total = 0usize;
        // Every reply carries at least one entry (an empty one ends the session), so this loop
        // runs at most max_sent + 1 times.
        loop {
            match self
                .handle_call(Op::Readdir, fxp::READDIR, handle, Expect::Entries)
                .await?
            {
                Reply::Eof => return Ok(entries),
                Reply::Entries {
                    entries: mut batch,
                    sent,
                } => {
                    sent_total = sent_total.saturating_add(sent as usize);
                    if sent_total > max_sent || entries.len() + batch.len() > max {
                        return Err(Error::TooBig {
                            request: Request::new(Op::Readdir, &handle.path),
                            bound: Bound::DirEntries,
                            limit: max as u64,
                        });
                    }
                    entries.append(&mut batch);
                }
                other => return unreachable_reply(Op::Readdir, other),
            }
        }
    }

    /// Where the symlink at `path` points (at most `max_link_len` bytes, no NUL).
    pub async fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, Error> {
        match self
            .path_call(Op::Readlink, fxp::READLINK, path, Expect::OneName)
            .await?
        {
            Reply::Name(n) => Ok(n),
            other => unreachable_reply(Op::Readlink, other),
        }
    }

    /// The server's canonical absolute form of `path` (at most `max_link_len` bytes).
    pub async fn realpath(&self, path: &[u8]) -> Result<Vec<u8>, Error> {
        match self
            .path_call(Op::Realpath, fxp::REALPATH, path, Expect::OneName)
            .await?
        {
            Reply::Name(n) => Ok(n),
            other => unreachable_reply(Op::Realpath, other),
        }
    }

    /// Opens `path` for reading.
    pub async fn open_read(&self, path: &[u8]) -> Result<Handle, Error> {
        self.open_handle(Op::Open, fxp::OPEN, path, |p| {
            p.u32(OpenFlags::READ.0);
            Attrs::default().encode(p);
        })
        .await
    }

    /// Opens `path` with `flags` (for writing), creating it with `attrs` if asked to.
    pub async fn open_write(&self, path: &[u8], flags: OpenFlags, attrs: &Attrs) -> Result<Handle, Error> {
        self.open_handle(Op::Open, fxp::OPEN, path, |p| {
            p.u32(flags.0);
            attrs.encode(p);
        })
        .await
    }

    /// Reads up to `len` bytes (cut to [`Client::max_read`]) at `offset`. A reply longer than
    /// asked for is a protocol violation.
    pub async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<ReadData, Error> {
        let len = len.min(self.core.max_read);
        let reply = self
            .link()
            .call(
                Op::Read,
                fxp::READ,
                &handle.path,
                Expect::Data { requested: len },
                16 + handle.raw.len(),
                |p| {
                    p.string(&handle.raw).u64(offset).u32(len);
                },
            )
            .await?;
        match reply {
            Reply::Data(d) => Ok(ReadData::Bytes(d)),
            Reply::Eof => Ok(ReadData::Eof),
            other => unreachable_reply(Op::Read, other),
        }
    }

    /// Writes `data` at `offset`, in WRITEs of at most [`Client::max_write`] bytes, up to
    /// [`WRITE_WINDOW`] of them in flight at once (each with its own deadline).
    pub async fn write(&self, handle: &Handle, offset: u64, data: &[u8]) -> Result<(), Error> {
        let chunk = self.core.max_write.max(1) as usize;
        let window = WRITE_WINDOW
            .min(self.link().session_limits().max_outstanding)
            .max(1);
        let mut in_flight = VecDeque::with_capacity(window);
        let mut at = offset;
        for piece in data.chunks(chunk) {
            if in_flight.len() == window {
                self.write_done(in_flight.pop_front(), handle).await?;
            }
            let capacity = 16 + handle.raw.len() + piece.len();
            let sent = self
                .link()
                .submit(
                    Op::Write,
                    fxp::WRITE,
                    &handle.path,
                    Expect::Status,
                    capacity,
                    |p| {
                        p.string(&handle.raw).u64(at).string(piece);
                    },
                )
                .await?;
            in_flight.push_back(sent);
            at += piece.len() as u64;
        }
        // At most `window` left: each pass takes one.
        while let Some(sent) = in_flight.pop_front() {
            self.write_done(Some(sent), handle).await?;
        }
        Ok(())
    }

    async fn write_done(&self, sent: Option<Submitted<'_>>, handle: &Handle) -> Result<(), Error> {
        match sent {
            Some(sent) => expect_ok(Op::Write, sent.wait(&handle.path).await?),
            None => Ok(()),
        }
    }

    /// Closes a handle.
    pub async fn close(&self, handle: Handle) -> Result<(), Error> {
        let reply = self
            .handle_call(Op::Close, fxp::CLOSE, &handle, Expect::Status)
            .await?;
        expect_ok(Op::Close, reply)
    }

    async fn status_call(
        &self,
        op: Op,
        packet_type: u8,
        path: &[u8],
        extra: usize,
        fill: impl FnOnce(&mut Packet),
    ) -> Result<(), Error> {
        let reply = self
            .link()
            .call(
                op,
                packet_type,
                path,
                Expect::Status,
                4 + path.len() + extra,
                fill,
            )
            .await?;
        expect_ok(op, reply)
    }

    /// Creates the directory `path` with `attrs` (usually just permissions).
    pub async fn mkdir(&self, path: &[u8], attrs: &Attrs) -> Result<(), Error> {
        self.status_call(Op::Mkdir, fxp::MKDIR, path, 32, |p| {
            p.string(path);
            attrs.encode(p);
        })
        .await
    }

    /// Removes the empty directory `path`.
    pub async fn rmdir(&self, path: &[u8]) -> Result<(), Error> {
        self.status_call(Op::Rmdir, fxp::RMDIR, path, 0, |p| {
            p.string(path);
        })
        .await
    }

    /// Removes the file `path`.
    pub async fn remove(&self, path: &[u8]) -> Result<(), Error> {
        self.status_call(Op::Remove, fxp::REMOVE, path, 0, |p| {
            p.string(path);
        })
        .await
    }

    /// Sets what is set in `attrs` on `path` (follows symlinks, as the server's chmod/chown do).
    pub async fn setstat(&self, path: &[u8], attrs: &Attrs) -> Result<(), Error> {
        self.status_call(Op::Setstat, fxp::SETSTAT, path, 32, |p| {
            p.string(path);
            attrs.encode(p);
        })
        .await
    }

    /// Creates the symlink `link` pointing to `target`.
    pub async fn symlink(&self, link: &[u8], target: &[u8]) -> Result<(), Error> {
        // OpenSSH sends (and expects) targetpath first, against the draft's order; every server
        // that matters here is OpenSSH's.
        self.status_call(Op::Symlink, fxp::SYMLINK, link, 4 + target.len(), |p| {
            p.string(target).string(link);
        })
        .await
    }

    /// Renames `from` to `to` (SSH_FXP_RENAME: fails if `to` exists on OpenSSH).
    pub async fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        self.status_call(Op::Rename, fxp::RENAME, from, 4 + to.len(), |p| {
            p.string(from).string(to);
        })
        .await
    }

    fn require(&self, name: &str, op: Op, path: &[u8]) -> Result<(), Error> {
        if self.core.extensions.has(name) {
            Ok(())
        } else {
            Err(Error::Unsupported {
                request: Request::new(op, path),
            })
        }
    }

    /// Renames `from` to `to`, replacing `to` (posix-rename@openssh.com).
    pub async fn posix_rename(&self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        self.require(POSIX_RENAME, Op::PosixRename, from)?;
        self.status_call(Op::PosixRename, fxp::EXTENDED, from, 32 + to.len(), |p| {
            p.string(POSIX_RENAME.as_bytes()).string(from).string(to);
        })
        .await
    }

    /// Creates `link` as a hard link to the existing `existing` (hardlink@openssh.com).
    pub async fn hardlink(&self, existing: &[u8], link: &[u8]) -> Result<(), Error> {
        self.require(HARDLINK, Op::Hardlink, link)?;
        self.status_call(Op::Hardlink, fxp::EXTENDED, link, 32 + existing.len(), |p| {
            p.string(HARDLINK.as_bytes()).string(existing).string(link);
        })
        .await
    }

    /// Ends the session for every clone: outstanding requests fail with [`Error::Shutdown`],
    /// the tasks stop and the stream is closed (EOF to the server).
    pub async fn shutdown(self) -> Result<(), Error> {
        self.core.link.session.end(Error::Shutdown);
        let tasks = std::mem::take(&mut *self.core.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(JOIN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        Ok(())
    }
}

async fn query_limits(link: &Link) -> Result<ServerLimits, Error> {
    let reply = link
        .call(
            Op::Limits,
            fxp::EXTENDED,
            b"",
            Expect::Extended,
            4 + LIMITS.len(),
            |p| {
                p.string(LIMITS.as_bytes());
            },
        )
        .await?;
    let Reply::Extended(data) = reply else {
        return unreachable_reply(Op::Limits, reply);
    };
    let mut f = Fields::new(&data, fxp::EXTENDED_REPLY);
    let limits = ServerLimits {
        max_packet: f.u64("max-packet-length")?,
        max_read: f.u64("max-read-length")?,
        max_write: f.u64("max-write-length")?,
        max_open_handles: f.u64("max-open-handles")?,
    };
    if !f.is_empty() {
        return Err(Violation::Malformed {
            packet_type: fxp::EXTENDED_REPLY,
            field: "limits",
        }
        .into());
    }
    Ok(limits)
}

fn expect_ok(op: Op, reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Ok => Ok(()),
        other => unreachable_reply(op, other),
    }
}

/// The reader only hands a request the reply kinds its `Expect` allows; anything else here is a
/// bug in this crate, reported as a violation rather than a panic.
fn unreachable_reply<T>(op: Op, reply: Reply) -> Result<T, Error> {
    tracing::error!(?op, ?reply, "sftp: reply kind not matched to its request (a bug)");
    Err(Violation::UnexpectedType { op, packet_type: 0 }.into())
}
