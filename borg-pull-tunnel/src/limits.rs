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

/// Most keys of the user's ssh-agent offered when logging in, in the agent's order: no more
/// than [`MAX_KEY_OFFERS`], the bound on all keys offered on one connection (one fewer when a
/// default key file exists, so it still gets its turn).
pub const MAX_AGENT_KEYS: usize = MAX_KEY_OFFERS;

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

/// Default for the longest a pull or restore may run: defined (and its value explained) in
/// [`borg_pull_core::limits::DEFAULT_MAX_RUNTIME`], re-exported so the jobs name it here.
pub use borg_pull_core::limits::DEFAULT_MAX_RUNTIME;

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

/// Most public keys offered on one connection (the agent's keys and the key file together; each
/// hop of a jump host chain is a connection of its own).
///
/// sshd counts every refused key as a failed attempt; at `MaxAuthTries` failures (6 by default)
/// it disconnects with "Too many authentication failures" and logs "maximum authentication
/// attempts exceeded", the line fail2ban-style tools ban on. Five refusals stay below the
/// default, so a login that fails ends with our own disconnect and a clear error instead. Any
/// failed login still costs this server's address an `authfail` penalty on OpenSSH >= 9.8
/// (PerSourcePenalties, 5 s each, enforced from 15 s accumulated): keys beyond five would only
/// add round trips, never a login OpenSSH's own client gets. A client with a lower
/// `MaxAuthTries` needs the key named (`--identity`), which is then the only key offered.
pub const MAX_KEY_OFFERS: usize = 5;

/// Bytes kept of what the client's sshd sends first, to tell a refusal before key exchange
/// ([`crate::Error::ClosedBeforeKex`]) by how far it got: an SSH banner line is at most 255 bytes
/// (RFC 4253), OpenSSH's refusal "Not allowed at this time" 26; nothing more is copied after.
pub const PEER_FIRST_BYTES_KEPT: usize = 256;

/// Characters shown of the text a refusing sshd sent instead of its banner: OpenSSH's is one short
/// line; the rest of what an untrusted peer sends has no place in an error message.
pub const REFUSAL_TEXT_SHOWN: usize = 80;

/// Characters kept of the client's disconnect message (quoted in [`crate::Error::AuthCutOff`]):
/// OpenSSH's are one short sentence ("Too many authentication failures").
pub const DISCONNECT_MESSAGE_KEPT: usize = 200;

/// How often the server writes a heartbeat line to the client's run (pull: the run channel's
/// stdin; restore-tar: a small second channel), so the client can tell a live server from a link
/// that died without a FIN or RST.
///
/// A few times per [`CLIENT_SILENCE_LIMIT`], so one late or lost beat never ends a run; each beat
/// is one byte of channel data, nothing against a backup's traffic.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Once the run has started, how long the client's watcher waits without a heartbeat before it
/// stops borg (its process group: SIGTERM, SIGKILL after [`CLIENT_STOP_GRACE`]) and removes the
/// private directory; also the age past which the next run clears a dead run's directory.
///
/// The client's sshd never learns of a dead link by itself (`ClientAliveInterval` is 0 by
/// default, TCP keepalive takes hours), and its borg would keep the cache lock. 45 s is above
/// four heartbeats, and below the server's own end of a silent run (keepalives: about
/// `KEEPALIVE_INTERVAL * (KEEPALIVE_MAX + 1)` = 60 s after it last heard from the client). So
/// the client stops first: by the time `pull` has given up (exit 215) and any next run starts,
/// the dead run's borg is gone or on its way out, and the next run finds its directory older
/// than this bound and finishes the job itself. A link that stalls this long but recovers costs
/// the run (its borg ends with an error), which the server would have ended 15 s later anyway.
pub const CLIENT_SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// Before the run has started (the script waits for `go`), the same bound as
/// [`CLIENT_SILENCE_LIMIT`]: above everything the server may still be doing by then (the start
/// report [`REMOTE_HELPER_TIMEOUT`], a relay install [`RELAY_INSTALL_TIMEOUT`], the forward
/// requests 2 × [`REQUEST_TIMEOUT`]), so only a script whose server is gone is stopped.
pub const CLIENT_START_LIMIT: Duration = Duration::from_secs(900);

/// On the client, after SIGTERM to a dead run's borg: how long it gets before SIGKILL.
///
/// borg releases its cache lock on SIGTERM within a second; its goodbye to a repository that no
/// longer answers could wait for its own 30 s shutdown timeout, which we do not wait for (a borg
/// killed while holding the lock leaves a stale lock that the next borg on the same host breaks,
/// since its pid is gone). Short enough that the next run's start (within
/// [`REMOTE_HELPER_TIMEOUT`]) can include it.
pub const CLIENT_STOP_GRACE: Duration = Duration::from_secs(10);

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

/// The most of the client's cipher list (its KEXINIT, untrusted) that a "cipher not offered"
/// error shows, in characters.
///
/// OpenSSH's whole default list is about 130 characters, and every cipher it can be configured
/// with fits in about 250; the rest of a longer list says nothing a sysadmin needs.
pub const CIPHER_LIST_SHOWN: usize = 400;

/// `pull --via sftp`: the most of the client's `/etc/passwd` or `/etc/group` we read.
///
/// A host with 20,000 accounts has a passwd of about 1.5 MB; 4 MiB is ample for any real one and
/// bounds what a hostile SFTP server can make us hold (a longer file fails the run, naming it).
pub const SFTP_ACCOUNTS_FILE_MAX: usize = 4 * 1024 * 1024;

/// `pull --via sftp`: the longest user or group name (and host name) we take from the client.
///
/// Linux's useradd allows 32 bytes, directory services a little more; 256 is far above any real
/// name and keeps the files we write from the client's entries small.
pub const SFTP_ACCOUNT_NAME_MAX: usize = 256;

/// Lines of the server borg's stderr (`--via sftp`) waiting for our stderr: borg writes a line
/// per file with `--list`, and the client names the files, so a slow stderr of ours must not
/// queue them without end. 4,096 lines of at most `LOG_LINE_MAX` (4 KiB) are 16 MiB at worst;
/// past that, lines are dropped and counted (borg is never blocked on its stderr by us).
pub const SFTP_BORG_STDERR_QUEUED: usize = 4096;

/// `restore-tar --via sftp`: the longest GNU long name (or long link name) read from borg's tar.
///
/// Read whole before the entry it names. Linux paths fit in `PATH_MAX` (4 KiB); an archive may
/// hold deeper ones, and 64 KiB is far above them while keeping a hostile name small.
pub const TAR_LONG_NAME_MAX: usize = 64 * 1024;

/// `restore-tar --via sftp`: the largest PAX extended header read from borg's tar.
///
/// Read whole before the entry it describes; borg 1.4's `--tar-format=PAX` puts xattrs there
/// (values up to 64 KiB each on Linux), so 1 MiB holds a file's full set and bounds the rest.
pub const TAR_PAX_HEADER_MAX: usize = 1024 * 1024;

/// `restore-tar --via sftp`: the longest path on the client we write to.
///
/// The client's sftp-server passes each path to one system call, which fails above `PATH_MAX`
/// (4096 with its NUL) anyway; refusing longer ones here names the entry instead.
pub const SFTP_RESTORE_PATH_MAX: usize = 4095;

/// `restore-tar --via sftp`: the most file data read from borg per pipelined step (the next
/// step's data is read while this one's WRITEs are in flight, so two of these are held).
///
/// The client crate keeps at most its write window of WRITEs in flight (16 x up to 255 KiB);
/// 4 MiB fills that window at OpenSSH's sizes, and 8 MiB held is small beside borg's own memory.
pub const SFTP_RESTORE_CHUNK_MAX: usize = 4 * 1024 * 1024;

/// `restore-tar --via sftp`: the most memory for work deferred to the end of a restore (the paths
/// of directories whose modes and times are set last, and of the symlinks created last).
///
/// About 100 bytes an entry: 256 MiB holds two million directories and symlinks, beyond any real
/// restore of one archive; an archive made to exceed it fails the run, naming the bound.
pub const SFTP_RESTORE_DEFERRED_MAX: usize = 256 * 1024 * 1024;

/// `restore-tar --via sftp`: how many restored files are remembered as targets for hard links
/// (a 64-bit keyed hash each, about 16 bytes with the set's overhead: 64 MiB).
///
/// Four million files is more than most whole-system archives hold; past it, a hard link to a
/// later file is reported as not restored rather than made to a file we cannot vouch for.
pub const SFTP_RESTORE_REMEMBERED_MAX: usize = 4 * 1024 * 1024;

/// `restore-tar --via sftp`: how many entries not restored (refused, failed, skipped) are named
/// one per line; the rest are only counted in the final message, so a read-only subtree of a
/// million files does not flood the log.
pub const SFTP_RESTORE_REPORTS_MAX: u64 = 1000;

/// `restore-tar --via sftp`: the most borg may send after the end-of-archive blocks before it is
/// stopped (Python's tarfile pads the archive to a 10 KiB record; nothing else follows).
pub const SFTP_RESTORE_TRAILER_MAX: u64 = 1024 * 1024;
