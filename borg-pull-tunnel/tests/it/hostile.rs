//! A mini-sshd with knobs: an in-process russh *server* that behaves like OpenSSH's sshd for what
//! borg-pull uses, and can be told to misbehave.
//!
//! Polite behaviour (all knobs off):
//! - public key authentication with the test's generated client key only;
//! - `session` channels; `exec` runs the command with the real `/bin/sh -c` (like sshd with a POSIX
//!   login shell), in its own process group, with the test's environment plus [`Knobs::env`];
//!   stdin/stdout/stderr, EOF, `signal` requests and exit-status/exit-signal travel over the
//!   channel; a closed channel or ended connection kills the process group (sshd hangs up);
//! - `streamlocal-forward@openssh.com` really binds the UNIX socket (refused if the path exists,
//!   like sshd without `StreamLocalBindUnlink`); every connection to it becomes a
//!   `forwarded-streamlocal@openssh.com` channel towards the client, bridged both ways;
//!   `cancel-streamlocal-forward@openssh.com` stops listening and removes the socket.
//!
//! Hostile behaviour: see [`Knobs`]. What russh 0.65.1's server cannot do at all: send channel
//! data larger than the client's advertised maximum packet, or beyond the client's window
//! (`session.rs::data_noqueue{,_direct}` split every write by `recipient_maximum_packet_size` and
//! clamp it to `recipient_window_size`; both come from the client's own CHANNEL_OPEN /
//! CHANNEL_OPEN_CONFIRMATION and there is no public way to change them), and leave a global
//! request unanswered while answering later ones (replies are FIFO, so a frozen handler is the
//! only way; [`Knobs::never_answer_forward`] freezes the whole connection). Oversized packets are
//! possible at the transport level only: `Session::debug` sends an SSH_MSG_DEBUG of any size
//! ([`Knobs::oversized_debug_packet`]).
//!
//! Everything the fixture starts is owned: the TCP connections are shut down, every process group
//! is killed and the accept loop stops when the [`Fixture`] drops (and when the test's runtime
//! ends, since every task lives there).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::net::Shutdown;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, Sig};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Bytes per write of the floods (the client's maximum packet; russh splits larger writes anyway).
pub const FLOOD_CHUNK: usize = 32 * 1024;

/// What the fixture does differently from a polite sshd. `Knobs::default()` is polite.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Extra environment for every exec'd command (e.g. `TMPDIR`).
    pub env: Vec<(OsString, OsString)>,
    /// Every exec (or those in [`Knobs::flood_exec_numbers`]) is acknowledged, then prints
    /// endless data (no newline) on stdout instead of running.
    pub flood_exec_output: bool,
    /// With `flood_exec_output`: which execs flood (0-based, per connection); all when `None`.
    pub flood_exec_numbers: Option<std::ops::Range<usize>>,
    /// With `flood_exec_output`: flood stderr (extended data 1) instead of stdout.
    pub flood_exec_stderr: bool,
    /// The first CHANNEL_DATA from the client (on any channel; in a pull that is `borg serve`'s
    /// output on a forwarded channel) freezes the connection: the handler never returns, nothing
    /// is read or sent any more (a hung sshd mid-run; only keepalives can tell).
    pub freeze_on_data: bool,
    /// Channels get a tiny window (256 bytes) and never more after one top-up: what the client
    /// sends into any channel (forwarded ones included) is withheld.
    pub withhold_window: bool,
    /// The public key authentication handler never returns (the connection is frozen pre-auth;
    /// russh's client keepalive only counts after authentication).
    pub never_answer_auth: bool,
    /// Session channel opens number N and later (0-based, per connection) are neither confirmed
    /// nor refused; the connection stays alive (keepalives are answered).
    pub never_confirm_channel_open_from: Option<usize>,
    /// Exec requests number N and later (0-based, per connection) get no reply, no output, no
    /// exit status; the channel stays open and the connection alive.
    pub never_answer_exec_from: Option<usize>,
    /// Exec requests number N and later (0-based, per connection) run normally and report their
    /// exit status and EOF, but the fixture never closes their channel.
    pub exit_without_close_from: Option<usize>,
    /// The streamlocal-forward handler never returns. Global replies are FIFO, so this freezes
    /// the whole connection (no keepalive replies either).
    pub never_answer_forward: bool,
    /// At every exec request, first send one SSH_MSG_DEBUG whose message is this many bytes: a
    /// transport packet of about that size (channel data cannot be made oversized, see above).
    pub oversized_debug_packet: Option<usize>,
    /// The fixture's own rekey threshold in bytes (each direction); russh's default is 1 GiB.
    pub rekey_after: Option<usize>,
    /// Refuse every streamlocal-forward (as `AllowStreamLocalForwarding no` does).
    pub refuse_forward: bool,
    /// After a forward was granted, open one channel of every kind the client did not ask for
    /// (session, x11, direct-tcpip, forwarded-tcpip, auth-agent, direct-streamlocal, and
    /// forwarded-streamlocal for another path) and record how the client answers.
    pub open_unexpected_channels: bool,
    /// After a forward was granted, open this many unexpected channels (kinds in turn, 32 at a
    /// time), stopping early when the connection ends.
    pub unexpected_channel_flood: Option<usize>,
    /// After a forward was granted, open this many forwarded-streamlocal channels for its own
    /// path (32 at a time) and hold the accepted ones open, silent, until the connection ends.
    pub forwarded_channel_flood: Option<usize>,
    /// After a forward was granted, open a forwarded-streamlocal channel for its path ourselves
    /// and stream endless bytes into it, never reading what comes back.
    pub garbage_on_forward: bool,
}

/// What happened, for assertions. Counters are totals over all connections.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub connections_ended: AtomicUsize,
    pub auth_attempts: AtomicUsize,
    /// Public keys the client offered (accepted or not): what sshd's MaxAuthTries counts.
    pub key_offers: AtomicUsize,
    pub session_opens: AtomicUsize,
    /// Every exec request's command, in order.
    pub exec_commands: Mutex<Vec<String>>,
    /// Every streamlocal-forward request's path, in order.
    pub forward_requests: Mutex<Vec<String>>,
    pub forwarded_connections: AtomicUsize,
    /// Unexpected channel opens (probe and flood) the client refused.
    pub unexpected_refused: AtomicUsize,
    /// Unexpected channel opens the client accepted (a bug in the client).
    pub unexpected_accepted: AtomicUsize,
    /// Unexpected channel opens that ended because the connection went away.
    pub unexpected_lost: AtomicUsize,
    /// Set when the probe or the flood has finished (whatever the outcome).
    pub unexpected_done: AtomicBool,
    /// Bytes the floods (exec output, garbage) got into russh's send pipeline.
    pub flood_bytes: AtomicU64,
    /// `forwarded_channel_flood`: opens the client accepted / refused.
    pub forwarded_flood_accepted: AtomicUsize,
    pub forwarded_flood_refused: AtomicUsize,
    /// Bytes of CHANNEL_DATA received from the client (all channels).
    pub client_data_bytes: AtomicU64,
    /// Set when `freeze_on_data` froze a connection.
    pub frozen: AtomicBool,
}

impl Stats {
    pub fn exec_count(&self) -> usize {
        self.exec_commands.lock().unwrap().len()
    }
}

struct Shared {
    knobs: Knobs,
    stats: Arc<Stats>,
    client_key: PublicKey,
    stop: CancellationToken,
    /// Process groups of every exec'd command still running.
    groups: Mutex<std::collections::HashSet<i32>>,
    /// Duplicates of every accepted TCP connection, to shut them down on drop.
    tcp: Mutex<Vec<std::net::TcpStream>>,
    /// Files the fixture writes when something finished (`flag_path`).
    dir: PathBuf,
}

/// A running mini-sshd on `127.0.0.1:port`, with its keys and files in a private temp dir.
pub struct Fixture {
    /// The TCP port it listens on (127.0.0.1 only).
    pub port: u16,
    /// The client identity (OpenSSH private key file, mode 0600).
    pub identity: PathBuf,
    /// A known_hosts file with `[127.0.0.1]:PORT ssh-ed25519 …` for the fixture's host key.
    pub known_hosts: PathBuf,
    /// What happened so far.
    pub stats: Arc<Stats>,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Generates keys, writes identity and known_hosts, starts listening.
    pub async fn start(mut knobs: Knobs) -> Fixture {
        let dir = tempfile::Builder::new().prefix("hostile-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        if !knobs.env.iter().any(|(k, _)| k == "TMPDIR") {
            knobs.env.push(("TMPDIR".into(), tmp.into()));
        }
        let mut rng = rand::rng();
        let host_key = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let client_key = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();

        let identity = dir.path().join("id_ed25519");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&identity)
            .unwrap();
        f.write_all(client_key.to_openssh(LineEnding::LF).unwrap().as_bytes())
            .unwrap();
        drop(f);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!(
                "[127.0.0.1]:{port} {}\n",
                host_key.public_key().to_openssh().unwrap()
            ),
        )
        .unwrap();

        let mut config = server::Config {
            keys: vec![host_key],
            inactivity_timeout: None,
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::from_millis(0)),
            nodelay: true,
            ..Default::default()
        };
        if knobs.withhold_window {
            config.window_size = 256;
        }
        if let Some(bytes) = knobs.rekey_after {
            config.limits.rekey_write_limit = bytes;
            config.limits.rekey_read_limit = bytes;
        }
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            knobs,
            stats: stats.clone(),
            client_key: client_key.public_key().clone(),
            stop: CancellationToken::new(),
            groups: Mutex::default(),
            tcp: Mutex::default(),
            dir: dir.path().to_owned(),
        });
        tokio::spawn(accept_loop(listener, config, shared.clone()));
        Fixture {
            port,
            identity,
            known_hosts,
            stats,
            shared,
            dir,
        }
    }

    /// The fixture's private directory (keys, scripts, `tmp/` used as the commands' TMPDIR).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable `#!/bin/sh` script `name` with `body` into the fixture's directory.
    /// Called with `--version` alone (as the pull's start script does for the client's borg), it
    /// says it is borg 1.2.4 and runs nothing of `body`.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\n[ \"$*\" = --version ] && {{ echo 'borg 1.2.4'; exit 0; }}\n{body}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A file the fixture creates when `what` happened (`unexpected-done`).
    pub fn flag_path(&self, what: &str) -> PathBuf {
        flag_path(&self.shared.dir, what)
    }

    /// Waits up to `timeout` for `cond` (polling); returns whether it became true.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Stats) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if cond(&self.stats) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond(&self.stats)
    }
}

fn flag_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("flag-{what}"))
}

fn set_flag(shared: &Shared, what: &str) {
    let _ = std::fs::write(flag_path(&shared.dir, what), b"");
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        for tcp in self.shared.tcp.lock().unwrap().drain(..) {
            let _ = tcp.shutdown(Shutdown::Both);
        }
        for pgid in self.shared.groups.lock().unwrap().drain() {
            kill_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// Kills the command sshd started, not what it left running in its process group: OpenSSH does not
/// kill a session's processes when a no-pty session ends (a script's clean-up watcher relies on
/// that). Whatever is left is killed when the fixture drops.
fn kill_leader(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn kill_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, config: Arc<server::Config>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.stop.cancelled() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        // Keep a duplicate of the socket so Drop can shut the connection down.
        let std_tcp = tcp.into_std().unwrap();
        shared.tcp.lock().unwrap().push(std_tcp.try_clone().unwrap());
        let tcp = tokio::net::TcpStream::from_std(std_tcp).unwrap();
        shared.stats.connections.fetch_add(1, Ordering::SeqCst);
        let conn_groups = Arc::new(Mutex::new(Vec::new()));
        let handler = Conn {
            shared: shared.clone(),
            channels: HashMap::new(),
            held_opens: Vec::new(),
            session_opens: 0,
            execs: 0,
            forwards: HashMap::new(),
            running: Arc::default(),
            conn_groups: conn_groups.clone(),
        };
        let config = config.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Ok(running) = server::run_stream(config, tcp, handler).await {
                let _ = running.await;
            }
            shared.stats.connections_ended.fetch_add(1, Ordering::SeqCst);
            // Like sshd hanging up: the commands it started die with it (what they left running in
            // the background stays, as with OpenSSH, until the fixture drops).
            for pgid in conn_groups.lock().unwrap().drain(..) {
                kill_leader(pgid);
            }
        });
    }
}

/// One connection's handler.
struct Conn {
    shared: Arc<Shared>,
    /// Session channels opened by the client, until their exec request takes them.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Channel opens never answered (dropping them would refuse them).
    held_opens: Vec<ChannelOpenHandle>,
    session_opens: usize,
    execs: usize,
    /// Active forwards: path -> stop token of its listener.
    forwards: HashMap<String, CancellationToken>,
    /// Process group of the command running on each channel (for signal requests).
    running: Arc<Mutex<HashMap<ChannelId, i32>>>,
    conn_groups: Arc<Mutex<Vec<i32>>>,
}

type HResult<T> = Result<T, russh::Error>;

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> HResult<Auth> {
        self.shared.stats.key_offers.fetch_add(1, Ordering::SeqCst);
        Ok(
            if offer.public_key.key_data() == self.shared.client_key.key_data() {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> HResult<Auth> {
        self.shared.stats.auth_attempts.fetch_add(1, Ordering::SeqCst);
        if self.shared.knobs.never_answer_auth {
            // Bounded by the fixture's life: the connection is shut down on drop.
            self.shared.stop.cancelled().await;
            return Ok(Auth::reject());
        }
        Ok(
            if key.public_key.key_data() == self.shared.client_key.key_data() {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> HResult<()> {
        let n = self.session_opens;
        self.session_opens += 1;
        self.shared.stats.session_opens.fetch_add(1, Ordering::SeqCst);
        if self
            .shared
            .knobs
            .never_confirm_channel_open_from
            .is_some_and(|from| n >= from)
        {
            self.held_opens.push(reply);
            // Keep the channel too, so nothing is dropped and answered for us.
            self.channels.insert(channel.id(), channel);
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(&mut self, id: ChannelId, data: &[u8], session: &mut Session) -> HResult<()> {
        let n = self.execs;
        self.execs += 1;
        if let Some(len) = self.shared.knobs.oversized_debug_packet {
            session.debug(false, &"D".repeat(len), "en")?;
        }
        self.shared
            .stats
            .exec_commands
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(data).into_owned());
        if self
            .shared
            .knobs
            .never_answer_exec_from
            .is_some_and(|from| n >= from)
        {
            return Ok(()); // the channel stays in `channels`, open and silent
        }
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let knobs = &self.shared.knobs;
        if knobs.flood_exec_output && knobs.flood_exec_numbers.as_ref().is_none_or(|r| r.contains(&n)) {
            let stats = self.shared.stats.clone();
            let stop = self.shared.stop.clone();
            let stderr = knobs.flood_exec_stderr;
            tokio::spawn(async move {
                let (read, write) = channel.split();
                let flood = async {
                    loop {
                        let chunk = vec![b'x'; FLOOD_CHUNK];
                        let sent = if stderr {
                            write.extended_data_bytes(1, chunk).await
                        } else {
                            write.data_bytes(chunk).await
                        };
                        if sent.is_err() {
                            return;
                        }
                        stats.flood_bytes.fetch_add(FLOOD_CHUNK as u64, Ordering::Relaxed);
                    }
                };
                // Until the client closes the channel (or the connection ends).
                tokio::select! {
                    () = flood => {}
                    () = until_closed(read) => {}
                    () = stop.cancelled() => {}
                }
            });
            return Ok(());
        }
        let command = data.to_vec();
        let close = knobs.exit_without_close_from.is_none_or(|from| n < from);
        let shared = self.shared.clone();
        let running = self.running.clone();
        let conn_groups = self.conn_groups.clone();
        let handle = session.handle();
        tokio::spawn(async move {
            run_command(channel, command, close, shared, running, conn_groups, handle).await;
        });
        Ok(())
    }

    async fn signal(&mut self, id: ChannelId, signal: Sig, _session: &mut Session) -> HResult<()> {
        let sig = match signal {
            Sig::INT => rustix::process::Signal::INT,
            Sig::TERM => rustix::process::Signal::TERM,
            Sig::HUP => rustix::process::Signal::HUP,
            Sig::KILL => rustix::process::Signal::KILL,
            _ => return Ok(()),
        };
        if let Some(&pgid) = self.running.lock().unwrap().get(&id) {
            kill_group(pgid, sig);
        }
        Ok(())
    }

    async fn channel_close(&mut self, id: ChannelId, _session: &mut Session) -> HResult<()> {
        self.channels.remove(&id);
        if let Some(pgid) = self.running.lock().unwrap().remove(&id) {
            kill_leader(pgid);
        }
        Ok(())
    }

    async fn data(&mut self, _id: ChannelId, data: &[u8], _session: &mut Session) -> HResult<()> {
        self.shared
            .stats
            .client_data_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.shared.knobs.freeze_on_data {
            self.shared.stats.frozen.store(true, Ordering::SeqCst);
            self.shared.stop.cancelled().await;
        }
        Ok(())
    }

    fn adjust_window(&mut self, _channel: ChannelId, current: u32) -> u32 {
        if self.shared.knobs.withhold_window {
            1 // from now on the target window is 1 byte: nothing more is granted
        } else {
            current
        }
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, session: &mut Session) -> HResult<bool> {
        self.shared
            .stats
            .forward_requests
            .lock()
            .unwrap()
            .push(socket_path.to_owned());
        let knobs = &self.shared.knobs;
        if knobs.never_answer_forward {
            self.shared.stop.cancelled().await;
            return Ok(false);
        }
        if knobs.refuse_forward {
            return Ok(false);
        }
        let listener = match std::os::unix::net::UnixListener::bind(socket_path) {
            Ok(l) => l,
            Err(_) => return Ok(false),
        };
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        let stop = self.shared.stop.child_token();
        self.forwards.insert(socket_path.to_owned(), stop.clone());
        let handle = session.handle();
        tokio::spawn(forward_listener(
            listener,
            socket_path.to_owned(),
            handle.clone(),
            self.shared.clone(),
            stop,
        ));
        if knobs.garbage_on_forward {
            tokio::spawn(garbage(
                handle.clone(),
                socket_path.to_owned(),
                self.shared.clone(),
            ));
        }
        if knobs.open_unexpected_channels {
            tokio::spawn(unexpected_probe(handle.clone(), self.shared.clone()));
        }
        if let Some(n) = knobs.unexpected_channel_flood {
            tokio::spawn(unexpected_flood(handle.clone(), n, self.shared.clone()));
        }
        if let Some(n) = knobs.forwarded_channel_flood {
            tokio::spawn(forwarded_flood(
                handle,
                socket_path.to_owned(),
                n,
                self.shared.clone(),
            ));
        }
        Ok(true)
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> HResult<bool> {
        match self.forwards.remove(socket_path) {
            Some(stop) => {
                stop.cancel();
                let _ = std::fs::remove_file(socket_path);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Removes a process group from the registries and kills it when dropped (task aborted, runtime
/// shut down, command finished).
struct GroupGuard {
    pgid: i32,
    shared: Arc<Shared>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // The group stays registered: the fixture's drop kills what is still in it.
        let _ = &self.shared;
        kill_leader(self.pgid);
    }
}

/// Reads (and drops) a channel's messages until it is closed. A channel whose messages are not
/// read would block the fixture's whole connection loop once russh's per-channel buffer is full.
async fn until_closed(mut read: russh::ChannelReadHalf) {
    while let Some(msg) = read.wait().await {
        if matches!(msg, ChannelMsg::Close) {
            return;
        }
    }
}

/// Runs `command` like sshd: `/bin/sh -c COMMAND` in its own process group, stdio over the channel.
async fn run_command(
    channel: Channel<Msg>,
    command: Vec<u8>,
    close: bool,
    shared: Arc<Shared>,
    running: Arc<Mutex<HashMap<ChannelId, i32>>>,
    conn_groups: Arc<Mutex<Vec<i32>>>,
    handle: server::Handle,
) {
    let id = channel.id();
    let (mut read, write) = channel.split();
    let spawned = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(OsStr::from_bytes(&command))
        .envs(shared.knobs.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let mut err = write.make_writer_ext(Some(1));
            let _ = err.write_all(format!("sh: {e}\n").as_bytes()).await;
            let _ = write.exit_status(127).await;
            let _ = write.eof().await;
            let _ = write.close().await;
            return;
        }
    };
    let pgid = child.id().expect("running") as i32;
    shared.groups.lock().unwrap().insert(pgid);
    conn_groups.lock().unwrap().push(pgid);
    running.lock().unwrap().insert(id, pgid);
    let _guard = GroupGuard {
        pgid,
        shared: shared.clone(),
    };
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Client -> command: stdin data and EOF. Close: the command is killed (sshd hangs up).
    let input = async move {
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                ChannelMsg::Eof => stdin = None,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        kill_leader(pgid);
    };
    let input = tokio::spawn(input);
    let mut out_w = write.make_writer();
    let mut err_w = write.make_writer_ext(Some(1));
    let out = tokio::io::copy(&mut stdout, &mut out_w);
    let err = tokio::io::copy(&mut stderr, &mut err_w);
    let stop = shared.stop.clone();
    tokio::select! {
        _ = async { tokio::join!(out, err) } => {}
        () = stop.cancelled() => return,
    }
    let _ = out_w.flush().await;
    let _ = err_w.flush().await;
    let status = tokio::select! {
        s = child.wait() => s,
        () = stop.cancelled() => return,
    };
    running.lock().unwrap().remove(&id);
    input.abort();
    if let Ok(status) = status {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            let _ = write.exit_status(code as u32).await;
        } else if let Some(sig) = status.signal() {
            let name = match sig {
                2 => Sig::INT,
                9 => Sig::KILL,
                15 => Sig::TERM,
                1 => Sig::HUP,
                13 => Sig::PIPE,
                n => Sig::Custom(format!("SIG{n}")),
            };
            let _ = handle
                .exit_signal_request(id, name, false, String::new(), String::new())
                .await;
        }
    }
    let _ = write.eof().await;
    if close {
        let _ = write.close().await;
    }
}

/// Accepts connections on a forwarded socket; each becomes a forwarded-streamlocal channel.
async fn forward_listener(
    listener: tokio::net::UnixListener,
    path: String,
    handle: server::Handle,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let Ok((mut unix, _)) = accepted else { return };
        shared.stats.forwarded_connections.fetch_add(1, Ordering::SeqCst);
        let handle = handle.clone();
        let path = path.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let opened = tokio::select! {
                c = handle.channel_open_forwarded_streamlocal(path) => c,
                () = stop.cancelled() => return,
            };
            let Ok(channel) = opened else { return };
            let mut stream = channel.into_stream();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut unix, &mut stream) => {}
                () = stop.cancelled() => {}
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Opens a forwarded-streamlocal channel for `path` and streams endless bytes into it.
async fn garbage(handle: server::Handle, path: String, shared: Arc<Shared>) {
    let opened = tokio::select! {
        c = handle.channel_open_forwarded_streamlocal(path) => c,
        () = shared.stop.cancelled() => return,
    };
    let Ok(channel) = opened else { return };
    // What comes back is discarded (russh grants window on arrival anyway, so from the client's
    // side this is the same as never reading); reading it only tells us when the channel closes.
    let (read, write) = channel.split();
    let flood = async {
        loop {
            if write.data_bytes(vec![0x5a; FLOOD_CHUNK]).await.is_err() {
                return;
            }
            shared
                .stats
                .flood_bytes
                .fetch_add(FLOOD_CHUNK as u64, Ordering::Relaxed);
        }
    };
    tokio::select! {
        () = flood => {}
        () = until_closed(read) => {}
        () = shared.stop.cancelled() => {}
    }
}

/// One open of an unexpected channel kind (`kind` modulo 7).
async fn open_unexpected(handle: &server::Handle, kind: usize) -> Result<Channel<Msg>, russh::Error> {
    match kind % 7 {
        0 => handle.channel_open_session().await,
        1 => handle.channel_open_x11("127.0.0.1", 6010).await,
        2 => {
            handle
                .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 40000)
                .await
        }
        3 => {
            handle
                .channel_open_forwarded_tcpip("127.0.0.1", 2222, "127.0.0.1", 40001)
                .await
        }
        4 => handle.channel_open_agent().await,
        5 => {
            handle
                .channel_open_direct_streamlocal("/tmp/not-asked-for.sock")
                .await
        }
        _ => {
            handle
                .channel_open_forwarded_streamlocal("/tmp/not-asked-for.sock")
                .await
        }
    }
}

/// Records one unexpected open's outcome; `false` when the connection is gone.
fn record_unexpected(shared: &Shared, result: Result<Channel<Msg>, russh::Error>) -> bool {
    let stats = &shared.stats;
    match result {
        Ok(_channel) => {
            stats.unexpected_accepted.fetch_add(1, Ordering::SeqCst);
            true
        }
        Err(russh::Error::ChannelOpenFailure(_)) => {
            stats.unexpected_refused.fetch_add(1, Ordering::SeqCst);
            true
        }
        Err(_) => {
            stats.unexpected_lost.fetch_add(1, Ordering::SeqCst);
            false
        }
    }
}

async fn unexpected_probe(handle: server::Handle, shared: Arc<Shared>) {
    for kind in 0..7 {
        let r = tokio::select! {
            r = open_unexpected(&handle, kind) => r,
            () = shared.stop.cancelled() => return,
        };
        if !record_unexpected(&shared, r) {
            break;
        }
    }
    shared.stats.unexpected_done.store(true, Ordering::SeqCst);
    set_flag(&shared, "unexpected-done");
}

async fn unexpected_flood(handle: server::Handle, n: usize, shared: Arc<Shared>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (handle, shared, next) = (handle.clone(), shared.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= n {
                    return;
                }
                let r = tokio::select! {
                    r = open_unexpected(&handle, k) => r,
                    () = shared.stop.cancelled() => return,
                };
                if !record_unexpected(&shared, r) {
                    return;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    shared.stats.unexpected_done.store(true, Ordering::SeqCst);
    set_flag(&shared, "unexpected-done");
}

/// Opens `n` forwarded-streamlocal channels for `path`, holding the accepted ones.
async fn forwarded_flood(handle: server::Handle, path: String, n: usize, shared: Arc<Shared>) {
    const WORKERS: usize = 32;
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (handle, shared, next, path) = (handle.clone(), shared.clone(), next.clone(), path.clone());
        let finished = finished.clone();
        workers.spawn(async move {
            let mut held = Vec::new();
            loop {
                if next.fetch_add(1, Ordering::SeqCst) >= n {
                    break;
                }
                let r = tokio::select! {
                    r = handle.channel_open_forwarded_streamlocal(path.clone()) => r,
                    () = shared.stop.cancelled() => return,
                };
                match r {
                    Ok(channel) => {
                        shared
                            .stats
                            .forwarded_flood_accepted
                            .fetch_add(1, Ordering::SeqCst);
                        held.push(channel);
                    }
                    Err(russh::Error::ChannelOpenFailure(_)) => {
                        shared
                            .stats
                            .forwarded_flood_refused
                            .fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            if finished.fetch_add(1, Ordering::SeqCst) + 1 == WORKERS {
                set_flag(&shared, "forwarded-flood-done");
            }
            // Hold the accepted channels (their messages drained) until they or the fixture end.
            let drains = held.into_iter().map(|c| until_closed(c.split().0));
            tokio::select! {
                _ = futures_join_all(drains) => {}
                () = shared.stop.cancelled() => {}
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Awaits every future (a tiny `join_all` without the futures crate).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// A bounded sink for borg's stdout/stderr in tests: counts everything, keeps the first 64 KiB.
#[derive(Debug, Default)]
pub struct Capped {
    pub kept: Vec<u8>,
    pub total: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let room = (64 * 1024usize).saturating_sub(self.kept.len());
        let keep = room.min(buf.len());
        self.kept.extend_from_slice(&buf[..keep]);
        self.total += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Capped {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

/// `borg-pull-relay` from this workspace's target directory (built on first use if missing).
pub fn relay_path() -> PathBuf {
    static RELAY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RELAY
        .get_or_init(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let relay = target.join("debug/borg-pull-relay");
            if !relay.is_file() {
                let status = std::process::Command::new(env!("CARGO"))
                    .args(["build", "-p", "borg-pull-cli", "--bin", "borg-pull-relay"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("run cargo build for borg-pull-relay");
                assert!(
                    status.success(),
                    "cargo build -p borg-pull-cli --bin borg-pull-relay failed"
                );
            }
            assert!(relay.is_file(), "{} is missing", relay.display());
            relay.canonicalize().unwrap()
        })
        .clone()
}

/// `VmRSS` and `VmHWM` of process `pid` (`"self"` for this one) in KiB.
pub fn memory_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
