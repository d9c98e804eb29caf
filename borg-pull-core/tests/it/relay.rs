//! `relay::copy_bidirectional` and `relay::connect`, in the style of tokio's
//! `tests/io_copy_bidirectional.rs`: every case runs with the sides swapped and on every mix of
//! socket and pipe endpoints (a pipe next to a socket takes the splice(2) path, two sockets the
//! read/write path).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use borg_pull_core::relay::{connect, copy_bidirectional, Endpoint, RelayStats};
use borg_pull_core::Error;

/// Upper bound for any one test; a hang is a failure, not a stuck CI job.
const DEADLINE: Duration = Duration::from_secs(60);
/// Larger than any pipe, socket or relay buffer, so every byte crosses several full buffers.
const BIG: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Socket,
    Pipes,
}

const KINDS: [(Kind, Kind); 4] = [
    (Kind::Socket, Kind::Socket),
    (Kind::Pipes, Kind::Socket),
    (Kind::Socket, Kind::Pipes),
    (Kind::Pipes, Kind::Pipes),
];

/// The test's side of one endpoint: what the relay writes arrives at `reader`, what the test
/// writes to `writer` the relay reads.
struct Peer {
    reader: File,
    writer: Option<File>,
}

impl Peer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer
            .as_mut()
            .expect("writer already closed")
            .write_all(bytes)
    }

    /// EOF for the relay: shutdown(Write) on a socket (its reader is a duplicate), close on a pipe.
    fn close_write(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = rustix::net::shutdown(&writer, rustix::net::Shutdown::Write);
        }
    }

    fn read_to_end(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.reader.read_to_end(&mut bytes).expect("read from relay");
        bytes
    }
}

fn endpoint(kind: Kind, label: &str, tiny_buffers: bool) -> (Peer, Endpoint) {
    match kind {
        Kind::Socket => {
            let (peer, relay) = UnixStream::pair().unwrap();
            if tiny_buffers {
                for socket in [&peer, &relay] {
                    rustix::net::sockopt::set_socket_send_buffer_size(socket, 1).unwrap();
                }
            }
            let reader = File::from(OwnedFd::from(peer.try_clone().unwrap()));
            let peer = Peer {
                reader,
                writer: Some(File::from(OwnedFd::from(peer))),
            };
            (peer, Endpoint::from_stream(label, relay).unwrap())
        }
        Kind::Pipes => {
            let (relay_reads, peer_writes) = rustix::pipe::pipe().unwrap();
            let (peer_reads, relay_writes) = rustix::pipe::pipe().unwrap();
            if tiny_buffers {
                for pipe in [&relay_reads, &peer_reads] {
                    rustix::pipe::fcntl_setpipe_size(pipe, 4096).unwrap();
                }
            }
            let peer = Peer {
                reader: File::from(peer_reads),
                writer: Some(File::from(peer_writes)),
            };
            (peer, Endpoint::new(label, relay_reads, relay_writes))
        }
    }
}

/// A running relay between two fresh endpoints, and the test's side of each.
struct Setup {
    a: Peer,
    b: Peer,
    relay: mpsc::Receiver<borg_pull_core::Result<RelayStats>>,
    swapped: bool,
}

impl Setup {
    /// With `swapped`, the relay is called as `copy_bidirectional(b, a)`; `stats()` undoes that.
    fn start((a_kind, b_kind): (Kind, Kind), swapped: bool, tiny_buffers: bool) -> Setup {
        let (a, a_end) = endpoint(a_kind, "a", tiny_buffers);
        let (b, b_end) = endpoint(b_kind, "b", tiny_buffers);
        let (done, relay) = mpsc::channel();
        thread::spawn(move || {
            let result = if swapped {
                copy_bidirectional(b_end, a_end)
            } else {
                copy_bidirectional(a_end, b_end)
            };
            let _ = done.send(result);
        });
        Setup { a, b, relay, swapped }
    }

    fn result(&self) -> borg_pull_core::Result<RelayStats> {
        let result = self.relay.recv_timeout(DEADLINE).expect("relay did not finish");
        result.map(|s| {
            if self.swapped {
                RelayStats {
                    a_to_b: s.b_to_a,
                    b_to_a: s.a_to_b,
                }
            } else {
                s
            }
        })
    }

    fn stats(&self) -> RelayStats {
        self.result().expect("relay failed")
    }
}

/// Runs `case` for every mix of endpoint kinds, each with the sides swapped, under a deadline.
fn each_setup(name: &str, tiny_buffers: bool, case: fn(Setup)) {
    for kinds in KINDS {
        for swapped in [false, true] {
            let (done, finished) = mpsc::channel();
            thread::spawn(move || {
                case(Setup::start(kinds, swapped, tiny_buffers));
                let _ = done.send(());
            });
            match finished.recv_timeout(DEADLINE) {
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} {kinds:?} swapped={swapped}: hung"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{name} {kinds:?} swapped={swapped} failed")
                }
            }
        }
    }
}

/// Deterministic bytes that differ per stream, so a swapped or shifted byte is caught.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn a_closes_first_and_b_still_replies() {
    each_setup("a closes first", false, |mut s| {
        s.a.write(b"request").unwrap();
        s.a.close_write();
        assert_eq!(s.b.read_to_end(), b"request");
        // borg's last reply comes after the client's EOF: it must still get through.
        s.b.write(b"last reply").unwrap();
        s.b.close_write();
        assert_eq!(s.a.read_to_end(), b"last reply");
        assert_eq!(
            s.stats(),
            RelayStats {
                a_to_b: 7,
                b_to_a: 10
            }
        );
    });
}

#[test]
fn b_closes_first_and_a_still_sends() {
    each_setup("b closes first", false, |mut s| {
        s.b.write(b"goodbye").unwrap();
        s.b.close_write();
        assert_eq!(s.a.read_to_end(), b"goodbye");
        s.a.write(b"still here").unwrap();
        s.a.close_write();
        assert_eq!(s.b.read_to_end(), b"still here");
        assert_eq!(
            s.stats(),
            RelayStats {
                a_to_b: 10,
                b_to_a: 7
            }
        );
    });
}

#[test]
fn nothing_sent_either_way() {
    each_setup("empty", false, |mut s| {
        s.a.close_write();
        s.b.close_write();
        assert_eq!(s.a.read_to_end(), b"");
        assert_eq!(s.b.read_to_end(), b"");
        assert_eq!(s.stats(), RelayStats::default());
    });
}

fn big_both_ways(mut s: Setup) {
    let (up, down) = (payload(BIG, 1), payload(BIG, 2));
    let (a, b) = (&s.a, &s.b);
    thread::scope(|scope| {
        scope.spawn(|| a.writer.as_ref().unwrap().write_all(&up).unwrap());
        scope.spawn(|| b.writer.as_ref().unwrap().write_all(&down).unwrap());
        let got_up = scope.spawn(|| read_exactly(&b.reader, BIG));
        assert!(read_exactly(&a.reader, BIG) == down, "b -> a bytes differ");
        assert!(got_up.join().unwrap() == up, "a -> b bytes differ");
    });
    s.a.close_write();
    s.b.close_write();
    assert_eq!(
        s.stats(),
        RelayStats {
            a_to_b: BIG as u64,
            b_to_a: BIG as u64
        }
    );
}

fn read_exactly(mut reader: &File, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    reader.read_exact(&mut bytes).unwrap();
    bytes
}

#[test]
fn large_payloads_both_ways_at_once() {
    each_setup("8 MiB both ways", false, big_both_ways);
}

#[test]
fn large_payloads_through_tiny_buffers() {
    each_setup("8 MiB, tiny buffers", true, big_both_ways);
}

#[test]
fn stalled_reader_does_not_stall_the_other_direction() {
    each_setup("stalled b", false, |mut s| {
        let up = payload(BIG, 3);
        let stalled_writer = s.a.writer.take().unwrap();
        let writer = thread::spawn(move || {
            let mut writer = stalled_writer;
            writer.write_all(&up).unwrap();
            let _ = rustix::net::shutdown(&writer, rustix::net::Shutdown::Write);
            up
        });
        // b reads nothing yet, so a -> b is stuck on full buffers; b -> a must flow regardless.
        let down = payload(BIG, 4);
        let mut b_writer = s.b.writer.take().unwrap();
        let expected = down.clone();
        let b_to_a = thread::spawn(move || {
            b_writer.write_all(&down).unwrap();
            let _ = rustix::net::shutdown(&b_writer, rustix::net::Shutdown::Write);
        });
        assert!(read_exactly(&s.a.reader, BIG) == expected, "b -> a bytes differ");
        b_to_a.join().unwrap();
        assert!(!writer.is_finished(), "a's 8 MiB cannot have fit in the buffers");
        assert!(s.b.read_to_end() == writer.join().unwrap(), "a -> b bytes differ");
        assert_eq!(
            s.stats(),
            RelayStats {
                a_to_b: BIG as u64,
                b_to_a: BIG as u64
            }
        );
    });
}

#[test]
fn reset_by_peer_ends_the_relay_with_an_error() {
    for swapped in [false, true] {
        let mut s = Setup::start((Kind::Socket, Kind::Socket), swapped, false);
        s.a.write(b"never read").unwrap();
        // Wait until the relay has moved the bytes into b's receive queue, then close b unread:
        // the kernel resets the relay's end of b (ECONNRESET).
        let mut b_socket = s.b.reader;
        let mut first = [0u8; 1];
        b_socket.read_exact(&mut first).unwrap();
        drop(b_socket);
        drop(s.b.writer.take());
        s.b = Peer {
            reader: File::open("/dev/null").unwrap(),
            writer: None,
        };
        let err = s.result().expect_err("a reset must fail the relay");
        assert!(matches!(err, Error::Relay { .. }), "{err}");
        assert!(err.to_string().contains("b"), "{err}");
        // The relay shut down a both ways, so its peer sees EOF instead of hanging.
        assert_eq!(s.a.read_to_end(), b"");
    }
}

#[test]
fn read_error_is_reported_with_its_direction() {
    let (_b, b_end) = endpoint(Kind::Socket, "b", false);
    let directory = File::open("/").unwrap();
    let (_keep, a_write) = rustix::pipe::pipe().unwrap();
    let err = copy_bidirectional(Endpoint::new("a", directory, a_write), b_end).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Relay { .. }), "{message}");
    assert!(message.contains("relaying a -> b failed"), "{message}");
}

#[test]
fn reader_gone_from_a_pipe_is_not_an_error() {
    // borg closing our stdout while the server still talks: that direction is simply over.
    let mut s = Setup::start((Kind::Pipes, Kind::Socket), false, false);
    s.a.reader = File::open("/dev/null").unwrap();
    s.b.write(b"nobody reads this").unwrap();
    s.b.close_write();
    s.a.write(b"hi").unwrap();
    s.a.close_write();
    assert_eq!(s.b.read_to_end(), b"hi");
    assert_eq!(s.stats().a_to_b, 2);
}

mod connect_errors {
    use super::*;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn missing_socket() {
        let dir = tempdir();
        let path = dir.path().join("x.sock");
        let err = connect(&path).unwrap_err();
        assert!(matches!(err, Error::SocketMissing { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("is borg-pull-server listening"), "{message}");
    }

    #[test]
    fn stale_socket() {
        let dir = tempdir();
        let path = dir.path().join("x.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = connect(&path).unwrap_err();
        assert!(matches!(err, Error::SocketRefused { .. }), "{err}");
        assert!(err.to_string().contains("stale socket"), "{err}");
    }

    #[test]
    fn not_a_socket() {
        let dir = tempdir();
        let path = dir.path().join("x.sock");
        std::fs::write(&path, b"").unwrap();
        let err = connect(&path).unwrap_err();
        assert!(matches!(err, Error::NotASocket { .. }), "{err}");
    }

    #[test]
    fn permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            eprintln!("note: running as root, which bypasses permissions: permission_denied not checked");
            return;
        }
        let dir = tempdir();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        let path = locked.join("x.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let err = connect(&path).unwrap_err();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(err, Error::SocketPermission { .. }), "{err}");
        assert!(err.to_string().contains("ls -ld"), "{err}");
    }

    #[test]
    fn live_socket_connects() {
        let dir = tempdir();
        let path = dir.path().join("x.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0];
        server.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}

#[test]
fn files_take_the_blocking_thread_path() {
    // Regular files are neither pipes nor sockets, so both directions run on blocking threads.
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let request = payload(BIG, 5);
    std::fs::write(&input, &request).unwrap();
    let (mut b, b_end) = endpoint(Kind::Socket, "b", false);
    let a_end = Endpoint::new("a", File::open(&input).unwrap(), File::create(&output).unwrap());
    let relay = thread::spawn(move || copy_bidirectional(a_end, b_end));
    assert!(b.read_to_end() == request, "file -> socket bytes differ");
    b.write(b"reply after EOF").unwrap();
    b.close_write();
    let stats = relay.join().unwrap().unwrap();
    assert_eq!(
        stats,
        RelayStats {
            a_to_b: BIG as u64,
            b_to_a: 15
        }
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"reply after EOF");
}
