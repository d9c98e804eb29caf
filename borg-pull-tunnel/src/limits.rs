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

/// Largest SSH packet of channel data we accept; OpenSSH sends at most 32 KiB per packet anyway.
///
/// russh itself accepts packets of up to 256 KiB whatever we advertise; the session's handler
/// ends the connection on the first larger one ([`crate::Error::OversizedPacket`]).
pub const MAX_PACKET: u32 = 32 * 1024;

/// Messages buffered per channel before russh stops reading the TCP stream.
///
/// russh grants window when data *arrives*, not when we consume it, so the window does not bound
/// what a channel buffers: this does. A channel whose reader is stuck (borg serve not reading
/// while the client withholds window from its replies) holds at most this many packets of at most
/// [`MAX_PACKET`] bytes, i.e. [`CHANNEL_WINDOW`] (16 MiB), plus the one oversized packet that ends
/// the connection. When it is full the connection stops reading (TCP pushes back on the peer) until
/// the reader catches up or the run's deadline ends it.
pub const CHANNEL_BUFFER: usize = (CHANNEL_WINDOW / MAX_PACKET) as usize;

/// How long we wait for the TCP connection and the SSH handshake (including host key check).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most keys of the user's ssh-agent offered when logging in, in the agent's order.
///
/// Each refused key costs a round trip and counts against the sshd's `MaxAuthTries` (6 by
/// default: OpenSSH's own client gets "too many authentication failures" past that too), so more
/// keys buy nothing; the bound stops an agent listing thousands of keys from holding the login.
pub const MAX_AGENT_KEYS: usize = 16;

/// Send a keepalive after this long without hearing from the client's sshd.
///
/// Together with [`KEEPALIVE_MAX`] a vanished client ends the run within about a minute
/// (`interval * (max + 1)`), instead of hanging until TCP gives up (often 15+ minutes).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Unanswered keepalives before the connection is considered dead.
pub const KEEPALIVE_MAX: usize = 3;

/// How long `borg --version` may take on the client in the start script (where `timeout` exists):
/// Python's start-up is well under a second, a few on a loaded machine; well below
/// [`REMOTE_HELPER_TIMEOUT`], so a hanging borg leaves time for the start report.
pub const BORG_VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for each small helper command on the client (the diagnosis of a refused forward)
/// and for the start of the run (until the client reports its private directory).
pub const REMOTE_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long any single request to the client may go unanswered (authentication, channel open,
/// forward requests, disconnect). A client that answers keepalives but nothing else would
/// otherwise hold the run for ever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Output kept from a helper command (or printed before the client reports its directory) for
/// error messages; the rest is read and dropped, so an endless printer costs no memory.
pub const HELPER_OUTPUT_KEPT: usize = 16 * 1024;

/// Default for the longest a pull may run before borg is stopped and the run ends with its own
/// error: far above a nightly backup (hours), far below "never" (a client that keeps the
/// connection alive but never finishes would hold `borg serve` and the repository lock for ever).
pub const DEFAULT_MAX_RUNTIME: Duration = Duration::from_secs(24 * 3600);

/// Channel opens we refuse (kinds we did not ask for) before ending the connection: a well-behaved
/// sshd opens none, so this only cuts off a peer that floods us (and our logs).
pub const MAX_REFUSED_CHANNEL_OPENS: usize = 64;

/// Refused channel opens (and refused agent requests, per agent) logged one by one; later ones are
/// only counted.
pub const REFUSALS_LOGGED: usize = 8;

/// After borg's channel closed: how long forwarded channels may take to finish relaying.
///
/// borg create closes its connection before it exits, so the forwards normally end first; the
/// bound only matters for a misbehaving client. `borg serve` itself gets the core crate's
/// `SERVE_EXIT_GRACE` on top to release the repository lock.
pub const FORWARD_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Total time allowed for clean-up (bridges drained, disconnect).
///
/// Clean-up also runs after Ctrl-C, so it must be short. The private directory is removed by the
/// shell on the client itself once borg has exited; a client that does not answer leaves at most
/// its private socket directory behind, which never blocks the next run.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// After borg's exit status arrived, how long its channel may stay open before we close it.
///
/// sshd closes the channel right after the exit status once the command's output is drained
/// (milliseconds); a client that never closes it must not hold the run, `borg serve` or the lock.
pub const EXIT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// After a cancellation (Ctrl-C), how long borg on the client gets to exit after SIGINT before
/// its channel is closed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Most forwarded connections (each with its own `borg serve`) in total during one pull.
///
/// borg opens one per repository and reconnects a few times at most; a client that keeps
/// connecting would otherwise start `borg serve` after `borg serve` for the whole run.
pub const MAX_FORWARDED_CONNECTIONS_TOTAL: u64 = 64;

/// Most forwarded connections (each with its own `borg serve`) bridged at once; more are refused.
///
/// borg opens one connection per repository, so a pull needs one; the margin covers a borg that
/// reconnects before the old bridge has wound down. Anything on the client that can reach the
/// socket (only the login user: the directory is 0700) cannot start an unbounded number of
/// `borg serve` processes on the server.
pub const MAX_FORWARDED_CONNECTIONS: usize = 4;

/// Longest path of a UNIX socket on Linux (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest agent message (after its 4-byte length) we read; a longer length ends the connection
/// before anything is allocated for it.
///
/// The largest request we answer is a sign request: our key blob, the data (for SSH user
/// authentication a session id of at most 64 bytes plus the userauth request with user name,
/// service, algorithm and the key blob again) and the flags. Even with an RSA 16384 key (a 2 KiB
/// blob) that is well under 16 KiB; OpenSSH's `session-bind@openssh.com` extension (host key,
/// session id, signature) is of the same size. russh's agent allows 256 KiB.
pub const MAX_AGENT_FRAME: usize = 16 * 1024;

/// An agent connection that sends no complete message for this long is ended.
///
/// OpenSSH's `ssh` keeps its agent connection open only while it authenticates and sends its
/// requests one round trip to the server's sshd apart (milliseconds to seconds); a minute is far
/// beyond that, and a connection held open longer would only tie up one of [`MAX_AGENT_CHANNELS`].
pub const AGENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most agent channels served at once; more are refused.
///
/// borg's `ssh` opens one agent connection per login to the server (one per repository
/// connection, and borg makes one); the margin covers a reconnect before the old one has closed.
pub const MAX_AGENT_CHANNELS: usize = 4;

/// Most agent channels in total during one pull.
///
/// A handful of logins per run is normal (borg reconnects a few times at most); a client that
/// keeps opening agent channels would otherwise keep the server signing for the whole run.
pub const MAX_AGENT_CHANNELS_TOTAL: u64 = 256;

/// `restore-tar`: the buffer borg export-tar's stdout is read into before it goes to the channel.
///
/// Two packets of [`MAX_PACKET`]: russh cuts writes into packets and awaits the client's window
/// for each, so a larger buffer only holds more of the archive in memory, and a smaller one costs
/// a system call per packet. With the channel's queue ([`CHANNEL_BUFFER`] messages, shared with
/// every channel) this bounds what a restore holds, whatever the archive's size.
pub const RESTORE_READ_BUFFER: usize = 2 * MAX_PACKET as usize;

/// `restore-tar`: after tar on the client ended with 0 before borg export-tar closed its output
/// (tar stops at the end-of-archive marker; only padding follows), how long borg gets to finish
/// by itself; and after we stop it (its stdout closed and SIGTERM, so it releases the repository
/// lock), how long before SIGKILL. borg exits within milliseconds of either.
pub const BORG_STOP_GRACE: Duration = Duration::from_secs(5);

/// `--install-relay`: how long sending the relay binary (a few MB) and the client's check of it
/// may take; generous for a slow link, bounded for a client that stops reading.
pub const RELAY_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The agent and TCP methods: the end of the client's ssh log (`ssh -E` in the private directory)
/// that the script's watcher prints back once borg has exited, and the most of it we keep.
///
/// ssh logs a handful of short lines at its default level, and the cause of a failure is the last
/// of them, so the script sends the log's last 4 KiB (`tail -c`): dozens of lines, ample for the
/// cause. We keep as much again, whatever the client sends, since the client is untrusted.
pub const CLIENT_SSH_LOG_KEPT: usize = 4 * 1024;

/// How much of the end of borg's standard error we look at to tell "the server's sshd ran
/// something other than borg serve" (borg's own message for it is its last line, under 200 bytes).
pub const BORG_STDERR_TAIL: usize = 1024;
