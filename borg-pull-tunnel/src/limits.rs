//! Every timeout, size and window of the SSH side, with the reason for its value.

use std::time::Duration;

/// SSH channel window we advertise (bytes the client may send before we acknowledge).
///
/// The window bounds throughput at about `window / RTT`. Measured with
/// `examples/window_bench.rs` (real OpenSSH 9.2 sshd, 20 ms RTT emulated by a delaying proxy,
/// release build, this 2-core VM): 2 MiB 45 MB/s, 4 MiB 92 MB/s, 16 MiB 366-372 MB/s,
/// 32 MiB 464 MB/s; at 0 ms RTT 2 MiB 404 MB/s and 16 MiB 538 MB/s (CPU-bound). 16 MiB is
/// several times what borg create produces on one core (incompressible data), so larger windows
/// buy nothing for backups. The memory is per forwarded channel, used only while data is in
/// flight (borg uses one channel per repository connection).
pub const CHANNEL_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest SSH packet we accept; OpenSSH sends at most 32 KiB of channel data per packet anyway.
pub const MAX_PACKET: u32 = 32 * 1024;

/// Messages buffered per channel before russh stops reading the TCP stream.
///
/// When a channel's buffer is full the whole connection stops reading, so window adjustments and
/// keepalive replies for every channel wait too. 4096 messages hold a full [`CHANNEL_WINDOW`] even
/// in 4 KiB packets, so the peer runs out of window before the buffer fills. tokio allocates the
/// buffer lazily, so the size costs nothing until used.
pub const CHANNEL_BUFFER: usize = 4096;

/// How long we wait for the TCP connection and the SSH handshake (including host key check).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Send a keepalive after this long without hearing from the client's sshd.
///
/// Together with [`KEEPALIVE_MAX`] a vanished client ends the run within about a minute
/// (`interval * (max + 1)`), instead of hanging until TCP gives up (often 15+ minutes).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Unanswered keepalives before the connection is considered dead.
pub const KEEPALIVE_MAX: usize = 3;

/// Time allowed for each small helper command on the client (mktemp, diagnosis, rm).
pub const REMOTE_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// After borg's channel closed: how long forwarded channels may take to finish relaying.
///
/// borg create closes its connection before it exits, so the forwards normally end first; the
/// bound only matters for a misbehaving client. `borg serve` itself gets the core crate's
/// `SERVE_EXIT_GRACE` on top to release the repository lock.
pub const FORWARD_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Total time allowed for clean-up (cancel forward, `rm -rf` the socket directory, disconnect).
///
/// Clean-up also runs after Ctrl-C, so it must be short; a client that does not answer leaves at
/// most its private socket directory behind, which never blocks the next run.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// After a cancellation (Ctrl-C), how long borg on the client gets to exit after SIGINT before
/// its channel is closed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Most forwarded connections (each with its own `borg serve`) bridged at once; more are refused.
///
/// borg opens one connection per repository, so a pull needs one; the margin covers a borg that
/// reconnects before the old bridge has wound down. Anything on the client that can reach the
/// socket (only the login user: the directory is 0700) cannot start an unbounded number of
/// `borg serve` processes on the server.
pub const MAX_FORWARDED_CONNECTIONS: usize = 4;

/// Longest path of a UNIX socket on Linux (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
