//! The stdio <-> UNIX socket relay that replaces `socat STDIO UNIX-CONNECT:...` as `BORG_RSH`.
//!
//! A stalled side never holds up the other direction. EOF on one side shuts down the writer of the other (`shutdown(Write)` on a socket, close on
//! a pipe) while the other direction keeps flowing: borg sends its last request and then reads the
//! last reply after its own EOF, so ending both directions when the first ends (two copies raced in
//! `select!`) would cut that reply off. The relay is done when both directions are done.
//!
//! When every descriptor is a pipe or a socket (borg runs `BORG_RSH` with pipes as stdin and
//! stdout), both directions share one thread: non-blocking I/O woken by poll(2), which measured
//! faster in throughput and round trip than one blocking thread per direction (benches/RESULTS.md).
//! Anything else (a terminal, a file) gets one blocking thread per direction, so that no
//! `O_NONBLOCK` leaks into a terminal shared with the user's shell. splice(2) was measured too and
//! is not used: on Linux 6.18 splicing from the socket into a pipe while the other direction
//! spliced into the socket lost data (see benches/RESULTS.md).
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//! use borg_pull_core::relay::{copy_bidirectional, Endpoint};
//!
//! let (mut client, a) = UnixStream::pair().unwrap();
//! let (b, mut server) = UnixStream::pair().unwrap();
//! let relay = std::thread::spawn(move || {
//!     copy_bidirectional(Endpoint::from_stream("a", a).unwrap(), Endpoint::from_stream("b", b).unwrap())
//! });
//! client.write_all(b"ping").unwrap();
//! client.shutdown(std::net::Shutdown::Write).unwrap();
//! let mut got = Vec::new();
//! server.read_to_end(&mut got).unwrap();
//! assert_eq!(got, b"ping");
//! server.write_all(b"pong").unwrap();
//! drop(server);
//! let mut reply = Vec::new();
//! client.read_to_end(&mut reply).unwrap();
//! assert_eq!(reply, b"pong");
//! let stats = relay.join().unwrap().unwrap();
//! assert_eq!((stats.a_to_b, stats.b_to_a), (4, 4));
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::net::Shutdown;

use crate::error::{Error, Result};
use crate::limits::{RELAY_COPY_BUFFER, RELAY_PIPE_SIZE};

/// Bytes moved by a finished relay, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the first endpoint and written to the second (for [`relay_stdio`]: stdin to
    /// the socket).
    pub a_to_b: u64,
    /// Bytes read from the second endpoint and written to the first (for [`relay_stdio`]: the
    /// socket to stdout).
    pub b_to_a: u64,
}

/// One side of a relay: where to read from and where to write to, which may be the same socket.
#[derive(Debug)]
pub struct Endpoint {
    read: OwnedFd,
    write: OwnedFd,
    read_label: String,
    write_label: String,
}

impl Endpoint {
    /// An endpoint reading from `read` and writing to `write`; `label` names it in errors and logs.
    ///
    /// When the relay finishes writing to this endpoint, `write` is shut down for writing if it is
    /// a socket, then closed.
    pub fn new(label: impl Into<String>, read: impl Into<OwnedFd>, write: impl Into<OwnedFd>) -> Self {
        let label = label.into();
        Endpoint {
            read: read.into(),
            write: write.into(),
            read_label: label.clone(),
            write_label: label,
        }
    }

    /// An endpoint reading and writing one stream socket (duplicates its file descriptor).
    pub fn from_stream(label: impl Into<String>, stream: UnixStream) -> io::Result<Self> {
        let write = stream.try_clone()?;
        Ok(Endpoint::new(label, stream, write))
    }

    /// This process's stdin and stdout.
    ///
    /// fd 1 is pointed at `/dev/null` so that closing the endpoint's copy really ends the stream
    /// for the reader of our stdout (borg waits for that EOF); later writes to stdout are lost.
    /// Pipes are grown to [`RELAY_PIPE_SIZE`] where the system allows it.
    pub fn stdio() -> io::Result<Self> {
        let read = io::stdin().as_fd().try_clone_to_owned()?;
        let write = io::stdout().as_fd().try_clone_to_owned()?;
        let null = File::options().read(true).write(true).open("/dev/null")?;
        rustix::stdio::dup2_stdout(&null)?;
        grow_pipe(read.as_fd());
        grow_pipe(write.as_fd());
        Ok(Endpoint {
            read,
            write,
            read_label: "stdin".into(),
            write_label: "stdout".into(),
        })
    }
}

/// Best effort: above `/proc/sys/fs/pipe-max-size` or the user's pipe quota the kernel refuses, and
/// the default size only costs speed.
fn grow_pipe(fd: BorrowedFd<'_>) {
    let is_pipe = rustix::fs::fstat(fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo);
    if is_pipe {
        if let Err(err) = rustix::pipe::fcntl_setpipe_size(fd, RELAY_PIPE_SIZE) {
            tracing::debug!(%err, size = RELAY_PIPE_SIZE, "cannot grow a stdio pipe");
        }
    }
}

/// Connects to the UNIX socket at `socket`, explaining failures: missing socket, permission denied,
/// stale socket (refused), not a socket.
pub fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|err| connect_error(socket, err))
}

fn connect_error(socket: &Path, err: io::Error) -> Error {
    let path = socket.to_path_buf();
    match err.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOENT) => Error::SocketMissing { path },
        Some(Errno::ACCESS | Errno::PERM) => Error::SocketPermission { path },
        // Linux answers ECONNREFUSED for a regular file too; only a socket file can be stale.
        Some(Errno::CONNREFUSED) if is_socket_path(&path) => Error::SocketRefused { path },
        Some(Errno::CONNREFUSED | Errno::NOTSOCK) => Error::NotASocket { path },
        _ => Error::SocketConnect { path, source: err },
    }
}

fn is_socket_path(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Connects to `socket` and relays this process's stdin to it and its replies to stdout until both
/// directions are done.
///
/// Takes over stdout as [`Endpoint::stdio`] describes. An error in either direction ends the call
/// at once (where stdin is not a pipe or socket, its thread lingers until stdin ends: exit then).
pub fn relay_stdio(socket: &Path) -> Result<RelayStats> {
    let stream = connect(socket)?;
    let label = socket.display().to_string();
    let socket_end = Endpoint::from_stream(label, stream).map_err(Error::RelayStdio)?;
    let stdio = Endpoint::stdio().map_err(Error::RelayStdio)?;
    copy_bidirectional(stdio, socket_end)
}

/// Copies `a` to `b` and `b` to `a` until both directions reach EOF, half-closing each writer as
/// its direction ends, and returns the byte counts.
///
/// Pipes and sockets are switched to non-blocking mode and served by one thread; any other
/// descriptor makes both directions run on blocking threads. The first error ends the relay:
/// sockets among the endpoints are shut down both ways (which also unblocks a thread waiting on
/// one of them) and the error is returned.
pub fn copy_bidirectional(a: Endpoint, b: Endpoint) -> Result<RelayStats> {
    let fds = [&a.read, &a.write, &b.read, &b.write];
    if fds.iter().all(|fd| pipe_or_socket(fd.as_fd())) {
        event_loop::run(a, b)
    } else {
        on_threads(a, b)
    }
}

/// One blocking thread per direction.
fn on_threads(a: Endpoint, b: Endpoint) -> Result<RelayStats> {
    let abort = socket_duplicates(&[&a.read, &a.write, &b.read, &b.write]);
    let (done, results) = mpsc::channel();
    let a_to_b = Half::new(a.read, &a.read_label, b.write, &b.write_label);
    let b_to_a = Half::new(b.read, &b.read_label, a.write, &a.write_label);
    let a_to_b_name = a_to_b.direction.clone();
    start(0, a_to_b, done.clone())?;
    start(1, b_to_a, done)?;
    let mut moved = [0u64; 2];
    for _ in 0..2 {
        let Ok((index, result)) = results.recv() else {
            shut_down_all(&abort);
            return Err(Error::Relay {
                direction: a_to_b_name,
                source: io::Error::other("a relay thread panicked"),
            });
        };
        match result {
            Ok(bytes) => moved[index] = bytes,
            Err(err) => {
                shut_down_all(&abort);
                return Err(err);
            }
        }
    }
    Ok(RelayStats {
        a_to_b: moved[0],
        b_to_a: moved[1],
    })
}

type Outcome = (usize, Result<u64>);

fn start(index: usize, half: Half, done: mpsc::Sender<Outcome>) -> Result<()> {
    let direction = half.direction.clone();
    std::thread::Builder::new()
        .name(format!("relay {direction}"))
        .spawn(move || {
            let _ = done.send((index, half.run()));
        })
        .map(drop)
        .map_err(|source| Error::Relay { direction, source })
}

fn socket_duplicates(fds: &[&OwnedFd]) -> Vec<OwnedFd> {
    fds.iter()
        .filter(|fd| is_socket(fd.as_fd()))
        .filter_map(|fd| fd.try_clone().ok())
        .collect()
}

fn shut_down_all(sockets: &[OwnedFd]) {
    for socket in sockets {
        let _ = rustix::net::shutdown(socket, Shutdown::Both);
    }
}

fn pipe_or_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        matches!(
            FileType::from_raw_mode(st.st_mode),
            FileType::Socket | FileType::Fifo
        )
    })
}

fn is_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Socket)
}

/// One direction of a relay.
struct Half {
    from: OwnedFd,
    to: OwnedFd,
    direction: String,
}

impl Half {
    fn new(from: OwnedFd, from_label: &str, to: OwnedFd, to_label: &str) -> Self {
        Half {
            from,
            to,
            direction: format!("{from_label} -> {to_label}"),
        }
    }

    fn run(self) -> Result<u64> {
        let to_socket = is_socket(self.to.as_fd());
        let mut moved = 0;
        let result = copy_buffered(self.from.as_fd(), self.to.as_fd(), &mut moved);
        if to_socket {
            // ENOTCONN: the peer is already gone, which is what we wanted to tell it.
            let _ = rustix::net::shutdown(&self.to, Shutdown::Write);
        }
        drop(self.to);
        tracing::debug!(direction = %self.direction, bytes = moved, ?result, "relay direction done");
        match result {
            Ok(()) => Ok(moved),
            // Our reader (borg) went away; nothing is left to deliver to it, so this side is done.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe && !to_socket => Ok(moved),
            Err(source) => Err(Error::Relay {
                direction: self.direction,
                source,
            }),
        }
    }
}

/// Moves bytes until EOF with blocking reads and writes.
fn copy_buffered(from: BorrowedFd<'_>, to: BorrowedFd<'_>, moved: &mut u64) -> io::Result<()> {
    let mut buf = vec![0u8; RELAY_COPY_BUFFER];
    loop {
        let n = match rustix::io::read(from, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                wait(from, PollFlags::IN)?;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        write_all(to, &buf[..n], moved)?;
    }
}

fn write_all(to: BorrowedFd<'_>, mut bytes: &[u8], moved: &mut u64) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(to, bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                *moved += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait(to, PollFlags::OUT)?,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Blocks until `fd` is ready; only reached when a parent handed the threads a non-blocking
/// descriptor.
fn wait(fd: BorrowedFd<'_>, flags: PollFlags) -> rustix::io::Result<()> {
    let mut fds = [PollFd::new(&fd, flags)];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Err(Errno::INTR) => {}
            other => return other.map(drop),
        }
    }
}

/// Both directions on one thread, non-blocking, woken by poll(2): one thread stays cache-warm and
/// saves a cross-CPU wake-up per message. Only for pipes and sockets, whose O_NONBLOCK does not
/// leak into a terminal shared with the user's shell.
mod event_loop {
    use super::*;

    /// Rounds of read+write one direction may do before the other gets its turn.
    const FAIR_ROUNDS: usize = 16;

    struct Flow {
        from: OwnedFd,
        to: Option<OwnedFd>,
        to_socket: bool,
        buf: Box<[u8]>,
        start: usize,
        end: usize,
        eof: bool,
        moved: u64,
        direction: String,
    }

    impl Flow {
        fn new(from: OwnedFd, from_label: &str, to: OwnedFd, to_label: &str) -> io::Result<Flow> {
            rustix::io::ioctl_fionbio(&from, true)?;
            rustix::io::ioctl_fionbio(&to, true)?;
            Ok(Flow {
                to_socket: is_socket(to.as_fd()),
                from,
                to: Some(to),
                buf: vec![0; RELAY_COPY_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
                eof: false,
                moved: 0,
                direction: format!("{from_label} -> {to_label}"),
            })
        }

        fn done(&self) -> bool {
            self.to.is_none()
        }

        /// The descriptor and event this flow waits for.
        fn interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
            let to = self.to.as_ref()?;
            Some(if self.start < self.end {
                (to.as_fd(), PollFlags::OUT)
            } else {
                (self.from.as_fd(), PollFlags::IN)
            })
        }

        /// Moves bytes until either side would block (or a fair share is done).
        fn pump(&mut self) -> io::Result<()> {
            for _ in 0..FAIR_ROUNDS {
                let Some(to) = self.to.as_ref() else { return Ok(()) };
                if self.start < self.end {
                    match rustix::io::write(to, &self.buf[self.start..self.end]) {
                        Ok(n) => {
                            self.start += n;
                            self.moved += n as u64;
                        }
                        Err(Errno::AGAIN) => return Ok(()),
                        Err(Errno::INTR) => {}
                        Err(err) => return Err(err.into()),
                    }
                } else if self.eof {
                    self.finish();
                } else {
                    match rustix::io::read(&self.from, &mut self.buf[..]) {
                        Ok(0) => self.eof = true,
                        Ok(n) => (self.start, self.end) = (0, n),
                        Err(Errno::AGAIN) => return Ok(()),
                        Err(Errno::INTR) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Ok(())
        }

        fn finish(&mut self) {
            if let Some(to) = self.to.take() {
                if self.to_socket {
                    let _ = rustix::net::shutdown(&to, Shutdown::Write);
                }
                tracing::debug!(direction = %self.direction, bytes = self.moved, "relay direction done");
            }
        }

        fn pump_or_fail(&mut self) -> Result<()> {
            match self.pump() {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe && !self.to_socket => {
                    self.finish();
                    Ok(())
                }
                Err(source) => Err(Error::Relay {
                    direction: self.direction.clone(),
                    source,
                }),
            }
        }
    }

    pub(super) fn run(a: Endpoint, b: Endpoint) -> Result<RelayStats> {
        let abort = socket_duplicates(&[&a.read, &a.write, &b.read, &b.write]);
        let setup = |a: Endpoint, b: Endpoint| -> io::Result<[Flow; 2]> {
            Ok([
                Flow::new(a.read, &a.read_label, b.write, &b.write_label)?,
                Flow::new(b.read, &b.read_label, a.write, &a.write_label)?,
            ])
        };
        let mut flows = setup(a, b).map_err(Error::RelayStdio)?;
        let result = relay(&mut flows);
        if result.is_err() {
            shut_down_all(&abort);
        }
        result.map(|()| RelayStats {
            a_to_b: flows[0].moved,
            b_to_a: flows[1].moved,
        })
    }

    fn relay(flows: &mut [Flow; 2]) -> Result<()> {
        let mut ready = [true, true];
        while !flows.iter().all(Flow::done) {
            for (flow, ready) in flows.iter_mut().zip(ready) {
                if ready {
                    flow.pump_or_fail()?;
                }
            }
            ready = wait(flows).map_err(|err| Error::Relay {
                direction: flows[0].direction.clone(),
                source: err.into(),
            })?;
        }
        Ok(())
    }

    /// Blocks until a flow can make progress; returns which ones can.
    fn wait(flows: &[Flow; 2]) -> rustix::io::Result<[bool; 2]> {
        let interest = [flows[0].interest(), flows[1].interest()];
        let mut fds: Vec<PollFd<'_>> = interest
            .iter()
            .flatten()
            .map(|(fd, flags)| PollFd::new(fd, *flags))
            .collect();
        if fds.is_empty() {
            return Ok([false, false]);
        }
        loop {
            match rustix::event::poll(&mut fds, None) {
                Err(Errno::INTR) => {}
                Err(err) => return Err(err),
                Ok(_) => break,
            }
        }
        let mut revents = fds.iter().map(|fd| !fd.revents().is_empty());
        Ok(interest.map(|wanted| wanted.is_some() && revents.next().unwrap_or(false)))
    }
}
