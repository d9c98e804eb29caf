//! Every timeout and size borg-pull uses, with the reason for its value.

use std::time::Duration;

/// How long `borg serve` may take to exit on its own once its connection has ended.
///
/// borg serve exits as soon as stdin reaches EOF and it has released the repository lock; on
/// loopback that takes well under a second. After this it is killed, so a wedged child never keeps
/// the repository locked.
pub const SERVE_EXIT_GRACE: Duration = Duration::from_secs(10);

/// How long a cancelled `borg serve` (Ctrl-C, listener shutdown) gets after its stdin is closed.
///
/// On EOF borg serve aborts the open transaction and removes its lock, which takes well under a
/// second here; killing it at once instead leaves a lock that blocks the next backup until
/// `borg break-lock`. Short, because whoever cancelled is waiting.
pub const SERVE_CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Buffer size of the async relay between a connection and `borg serve`'s pipes.
///
/// borg's protocol writes messages of up to a chunk (≤ 8 MiB by default, mostly far less); 64 KiB
/// matches the Linux pipe capacity, so each read empties a full pipe in one call.
pub const SERVE_RELAY_BUFFER: usize = 64 * 1024;

/// Default for `borg-pull-server listen --max-connections`: concurrent `borg serve` sessions.
///
/// Each session is a borg serve process (~40 MiB RSS, python). Sessions on one repository
/// serialise on borg's lock anyway, so a handful is plenty; 16 bounds memory if clients misbehave.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// How long a stopping listener (SIGINT/SIGTERM) lets running sessions finish before killing them.
///
/// Stays below systemd's default `TimeoutStopSec` (90 s) so we, not systemd's SIGKILL, do the
/// clean-up (borg serve killed and reaped, socket removed); long enough for a running `borg list`
/// or the commit at the end of a small `borg create`.
pub const LISTEN_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. EMFILE) before trying again, so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(200);

/// Buffer of each direction of `borg-pull-relay` (one read, then writes until it is empty).
///
/// Measured with benches/relay-bench.sh (benches/RESULTS.md), together with [`RELAY_PIPE_SIZE`]:
/// 1 MiB buffer + 1 MiB pipes 3446 MB/s, 64 KiB buffer + 1 MiB pipes 2338 MB/s, 64 KiB + default
/// 64 KiB pipes 1537 MB/s (socat 494 MB/s, same run); 16 KiB lost a third more. Round trips did not
/// change. Costs 2 MiB per relay.
pub const RELAY_COPY_BUFFER: usize = 1024 * 1024;

/// Capacity `borg-pull-relay` asks for its stdin and stdout pipes (F_SETPIPE_SZ).
///
/// With the default 64 KiB, borg's writer and the relay wake each other for every 64 KiB; 1 MiB
/// (the default `/proc/sys/fs/pipe-max-size`, so unprivileged users get it) lets both sides move
/// big batches. Measured: see [`RELAY_COPY_BUFFER`].
pub const RELAY_PIPE_SIZE: usize = 1024 * 1024;

/// listen(2) backlog of `borg-pull-server listen`: connections the kernel queues unaccepted.
///
/// Clients beyond `--max-connections` wait here until a session ends; 128 (the traditional
/// SOMAXCONN, and what std's `UnixListener::bind` used) is far more than borg clients ever queue.
pub const LISTEN_BACKLOG: i32 = 128;

/// Longest line of someone else's output we log (`borg serve`'s stderr, a restore's borg, the
/// fleet's server-side borg); the rest is dropped and counted (`… [N bytes cut]`). The one name
/// for it in every crate.
///
/// borg's own messages, tracebacks included, come one line at a time and far below this; 4 KiB
/// keeps a full path or error in view while a program writing megabytes without a newline costs
/// us 4 KiB, not its output's size.
pub const LOG_LINE_MAX: usize = 4 * 1024;

/// Default for the longest one pull or restore may run (`--max-runtime`, a fleet client's
/// `max_runtime`) before borg is stopped and the run ends with its own error. The one name for it
/// in every crate.
///
/// Far above a nightly backup (hours), far below "never": a client that keeps the connection
/// alive but never finishes would hold `borg serve` and the repository lock for ever.
pub const DEFAULT_MAX_RUNTIME: Duration = Duration::from_secs(24 * 3600);
/// Most non-blank lines of a local borg's stderr kept for the error message ([`crate::child`]);
/// every line is still logged or relayed as it comes.
///
/// borg's error is its last line or, with a traceback, the last few; 20 holds a short traceback
/// while a borg printing millions of lines costs us 20 lines.
pub const CHILD_STDERR_KEPT_LINES: usize = 20;

/// Most bytes of escaped text kept of a local borg's stderr ([`CHILD_STDERR_KEPT_LINES`]); the
/// newest line always stays.
///
/// Four lines of [`LOG_LINE_MAX`]: what a long path in an error needs, with room for the lines
/// before it, while a stderr of long escaped lines (each byte of binary noise is four characters
/// escaped) costs 16 KiB, not 20 × 16 KiB.
pub const CHILD_STDERR_KEPT_BYTES: usize = 16 * 1024;

/// How long a reaped local borg's stderr may stay open before we stop waiting for its last
/// lines.
///
/// The pipe closes with the last process of the group, which we SIGKILL once borg is reaped, so
/// this is reached only when something left the group (`setsid`) holding the pipe; 5 s is far
/// beyond the milliseconds the kernel takes to close it otherwise.
pub const CHILD_STDERR_DRAIN: Duration = Duration::from_secs(5);

/// How often starting borg is tried while its program is busy (ETXTBSY), and the pause between.
///
/// exec fails while any process holds the program open for writing: a package upgrade replacing
/// it, or a child forked elsewhere in this process at the moment the program was written, which
/// holds the inherited descriptor until its own exec (tests write fake borgs and start them at
/// once). Both last milliseconds; 10 tries 20 ms apart wait out a loaded machine's slow exec
/// without hiding a program that stays busy.
pub const SPAWN_BUSY_TRIES: usize = 10;
/// See [`SPAWN_BUSY_TRIES`].
pub const SPAWN_BUSY_PAUSE: Duration = Duration::from_millis(20);
