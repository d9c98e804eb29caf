//! Private UNIX listeners that hand each connection to its own `borg serve`.
//!
//! This replaces the server half of Borg's socat recipe
//! (`socat UNIX-LISTEN:/run/borg/reponame.sock,fork EXEC:"borg serve ..."`) and fixes its rough edges:
//!
//! - the socket's directory is created `0700` when missing, and refused when group or others could
//!   write to it (they could swap the socket), another user owns it, it is a symbolic link, or a
//!   directory above it would let another user swap it (OpenSSH's `safe_path` rule; see
//!   `safe_dir.rs`); the socket itself is `0600`;
//! - a *stale* socket (the file exists, nobody listens: `ECONNREFUSED`) is removed and re-bound,
//!   where socat stops with `E "...sock" exists`; a *live* socket (another listener answers, or
//!   another borg-pull listener holds the socket's lock file `.NAME.lock`) is never taken over, and
//!   a non-socket file in the way is never deleted;
//! - the socket is removed on the way out, but only if it is still ours (same device and inode);
//! - under systemd socket activation ([`PrivateListener::from_systemd`]) the inherited listener is
//!   used and its file is left alone, since systemd owns it.
//!
//! [`serve_connections`] accepts connections, runs one [`serve_stream`](crate::serve::serve_stream) per connection with the
//! server's fixed [`ServeConfig`], bounds the number of sessions and shuts down gracefully.
//!
//! ```no_run
//! # async fn demo() -> borg_pull_core::Result<()> {
//! use borg_pull_core::listen::{serve_connections, ListenLimits, PrivateListener};
//! use borg_pull_core::ServeConfig;
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = PrivateListener::bind("/run/borg-pull/client1.sock")?;
//! let config = ServeConfig::new("/srv/borg/client1")?;
//! serve_connections(listener, config, ListenLimits::default(), CancellationToken::new()).await
//! # }
//! ```

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn};

use crate::limits::{ACCEPT_ERROR_BACKOFF, DEFAULT_MAX_CONNECTIONS, LISTEN_BACKLOG, LISTEN_SHUTDOWN_GRACE};
use crate::safe_dir::{open_socket_dir, SocketDir};
use crate::serve::ServeConfig;
use crate::supervise::{LimitPolicy, Supervisor, SupervisorLimits};
use crate::{Error, Result};

/// Longest socket path the kernel accepts: `sun_path` is 108 bytes including the trailing NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A listening UNIX stream socket that only its owner can reach.
///
/// Created by [`bind`](Self::bind) (we own the socket file and remove it when dropped, if it is
/// still ours) or by [`from_systemd`](Self::from_systemd) (systemd owns the file; we leave it).
#[derive(Debug)]
pub struct PrivateListener {
    listener: StdUnixListener,
    path: Option<PathBuf>,
    /// Dropped before `lock`, so the socket is removed while we still hold the lock.
    guard: Option<SocketGuard>,
    /// Our flock on the socket's lock file (see [`lock_socket`]); `None` under systemd.
    lock: Option<OwnedFd>,
}

/// Removes a socket file we bound when dropped, unless someone else has replaced it meanwhile.
#[derive(Debug)]
struct SocketGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => match fs::remove_file(&self.path) {
                Ok(()) => debug!(socket = %self.path.display(), "removed socket"),
                Err(e) => warn!(socket = %self.path.display(), "could not remove socket: {e}"),
            },
            Ok(_) => warn!(
                socket = %self.path.display(),
                "socket was replaced by another file; leaving it in place"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(socket = %self.path.display(), "socket already gone")
            }
            Err(e) => warn!(socket = %self.path.display(), "could not check socket before removal: {e}"),
        }
    }
}

/// What [`probe_existing`] found at the socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Nothing there.
    Nothing,
    /// A socket file nobody listens on.
    Stale,
}

impl PrivateListener {
    /// Binds a private listener at `path`.
    ///
    /// Creates the socket's directory with mode `0700` if it is missing (its parent must exist),
    /// refuses a directory that group or others can write to, that another user owns, that is a
    /// symbolic link or that sits below a directory others could change; takes the socket's lock
    /// (held while the listener lives), removes a stale socket, refuses a live one or any
    /// non-socket file, and makes the socket `0600`.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        check_socket_path(path)?;
        let name = path.file_name().expect("check_socket_path saw a file name");
        let dir = open_socket_dir(socket_dir(path))?;
        let real = dir.real.join(name);
        let lock = lock_socket(&dir, name, path)?;
        if probe_existing(path, &real)? == Existing::Stale {
            remove_stale(&dir, name, path)?;
        }
        let bind_err = |source| Error::SocketBind {
            path: path.to_owned(),
            source,
        };
        let listener = bind_0600(&real, path)?;
        let meta = fs::symlink_metadata(&real).map_err(bind_err)?;
        let guard = SocketGuard {
            path: real,
            dev: meta.dev(),
            ino: meta.ino(),
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        info!(socket = %path.display(), "listening");
        Ok(Self {
            listener,
            path: Some(path.to_owned()),
            guard: Some(guard),
            lock: Some(lock),
        })
    }

    /// Takes the listener systemd passed through socket activation (`LISTEN_FDS`/`LISTEN_PID`).
    ///
    /// Returns `Ok(None)` when the process was not socket-activated. The socket file belongs to
    /// systemd and is not removed when the listener is dropped.
    ///
    /// This reads and then removes `LISTEN_FDS` and `LISTEN_PID` from the environment (so children
    /// never see them), which is not thread-safe: call it before starting threads or a runtime.
    pub fn from_systemd() -> Result<Option<Self>> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        if fds.len() > 1 {
            warn!(
                count = fds.len(),
                "systemd passed several sockets; using the first one only"
            );
        }
        let Some(listener) = fds
            .take_unix_listener(0)
            .map_err(|source| Error::SystemdSocket { source })?
        else {
            return Ok(None);
        };
        // A connected socket (a .socket unit with Accept=yes) passes the type check but cannot accept.
        if !rustix::net::sockopt::socket_acceptconn(&listener).unwrap_or(true) {
            return Err(Error::SystemdSocket {
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is a single connection, not a listening socket",
                ),
            });
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::SystemdSocket { source })?;
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        if let Some(path) = &path {
            if let Ok(m) = fs::metadata(path) {
                if m.mode() & 0o077 != 0 {
                    warn!(
                        socket = %path.display(),
                        mode = format_args!("{:04o}", m.mode() & 0o7777),
                        "socket from systemd is reachable by group or others; set SocketMode=0600"
                    );
                }
            }
        }
        info!(socket = ?path, "listening on socket from systemd");
        Ok(Some(Self {
            listener,
            path,
            guard: None,
            lock: None,
        }))
    }

    /// The socket's path, if known (always for [`bind`](Self::bind)).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the listener came from systemd (and its socket file is left alone at exit).
    pub fn is_socket_activated(&self) -> bool {
        self.guard.is_none()
    }
}

/// Binds a socket that appears at `path` already `0600`.
///
/// bind(2) creates the file with the socket inode's mode masked by the umask, and a directory that
/// others may search (0755 is allowed) would let them connect before a later chmod. On Linux the
/// socket inode's mode can be set with fchmod(2) *before* bind, so the file never exists with a
/// wider mode; the chmod afterwards only makes sure (other kernels ignore the early fchmod).
///
/// `real` is where to bind; errors name `path`, the socket as the operator gave it.
fn bind_0600(real: &Path, path: &Path) -> Result<StdUnixListener> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let bind_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            // Someone bound it between our probe and our bind.
            Error::SocketInUse {
                path: path.to_owned(),
            }
        } else {
            Error::SocketBind {
                path: path.to_owned(),
                source,
            }
        }
    };
    let errno = |e: rustix::io::Errno| bind_err(e.into());
    let addr = SocketAddrUnix::new(real).map_err(errno)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(errno)?;
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o600)).map_err(errno)?;
    rustix::net::bind(&fd, &addr).map_err(errno)?;
    let listener = StdUnixListener::from(fd);
    // From here on the file is ours: remove it if anything below fails.
    let cleanup = |e: Error| {
        let _ = fs::remove_file(real);
        e
    };
    fs::set_permissions(real, fs::Permissions::from_mode(0o600)).map_err(|e| cleanup(bind_err(e)))?;
    rustix::net::listen(&listener, LISTEN_BACKLOG).map_err(|e| cleanup(errno(e)))?;
    Ok(listener)
}

/// The socket's directory: the parent of `path`, or `.` for a bare file name.
fn socket_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn check_socket_path(path: &Path) -> Result<()> {
    let invalid = |reason| {
        Err(Error::SocketPathInvalid {
            path: path.to_owned(),
            reason,
        })
    };
    if path.file_name().is_none() {
        return invalid("it names no file (give a path like /run/borg-pull/client.sock)");
    }
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return invalid("longer than the 107 bytes a UNIX socket address allows (choose a shorter path)");
    }
    Ok(())
}

/// Takes the lock that makes "is the socket stale? then replace it" safe between our listeners.
///
/// Without it, two servers starting at once could both find the same stale socket, and the second
/// would unlink the first one's fresh socket and bind its own, orphaning the first. The lock is an
/// `flock` on `.NAME.lock` beside the socket, held as long as the listener lives (the kernel drops
/// it when the process dies, so a crash never leaves it held). The file itself stays: removing a
/// lock file races with a process that has just opened it. Residual race: a listener that does
/// not take this lock (socat, a human) binding between our probe and our unlink. Only root or the
/// directory's owner can, since [`open_socket_dir`] made sure nobody else may write there.
fn lock_socket(dir: &SocketDir, name: &OsStr, path: &Path) -> Result<OwnedFd> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let mut lock_name = OsString::from(".");
    lock_name.push(name);
    lock_name.push(".lock");
    let bind_err = |e: rustix::io::Errno| Error::SocketBind {
        path: path.to_owned(),
        source: io::Error::new(io::Error::from(e).kind(), format!("lock file {lock_name:?}: {e}")),
    };
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir.fd, lock_name.as_os_str(), flags, Mode::from_raw_mode(0o600))
        .map_err(bind_err)?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) => Err(bind_err(e)),
    }
}

/// Removes the stale socket `name` (we hold its lock; see [`lock_socket`]).
fn remove_stale(dir: &SocketDir, name: &OsStr, path: &Path) -> Result<()> {
    match rustix::fs::unlinkat(&dir.fd, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {
            warn!(socket = %path.display(), "removed stale socket (nobody was listening on it)");
            Ok(())
        }
        Err(e) => Err(Error::StaleSocket {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// Looks at what is at `real` (the resolved `path`): nothing, a stale socket, or (as errors) a live
/// socket or another file.
fn probe_existing(path: &Path, real: &Path) -> Result<Existing> {
    let meta = match fs::symlink_metadata(real) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(source) => {
            return Err(Error::StaleSocket {
                path: path.to_owned(),
                source,
            })
        }
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symbolic link"
        } else if ft.is_file() {
            "regular file"
        } else if ft.is_fifo() {
            "named pipe"
        } else {
            "special file"
        };
        return Err(Error::SocketPathOccupied {
            path: path.to_owned(),
            kind,
        });
    }
    match connect_nonblocking(real) {
        Ok(()) => Err(Error::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) if e == rustix::io::Errno::CONNREFUSED => Ok(Existing::Stale),
        // A full backlog means somebody is listening, just busy.
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INPROGRESS => {
            Err(Error::SocketInUse {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(Error::StaleSocket {
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// A connect that never blocks, even when a live listener's backlog is full.
fn connect_nonblocking(path: &Path) -> rustix::io::Result<()> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, &addr)
}

/// Limits of [`serve_connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Most `borg serve` sessions at once. When reached, further connections *wait* in the
    /// socket's backlog until a session ends (see [`serve_connections`] for why). At least 1.
    pub max_connections: usize,
    /// After cancellation, how long running sessions may continue before their borg serve is killed.
    pub shutdown_grace: Duration,
}

impl Default for ListenLimits {
    /// [`DEFAULT_MAX_CONNECTIONS`] sessions, [`LISTEN_SHUTDOWN_GRACE`].
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: LISTEN_SHUTDOWN_GRACE,
        }
    }
}

/// Accepts connections on `listener` until `cancel`, bridging each to its own `borg serve`.
///
/// Every session runs [`serve_stream`](crate::serve::serve_stream) with `config`, owned by a
/// [`Supervisor`] ([`LimitPolicy::Wait`]); nothing a client sends changes its flags. Each session gets a tracing span with a connection number and the peer's uid and pid.
///
/// **Connection limit.** With `limits.max_connections` sessions running, the loop stops accepting
/// and logs it once; new clients wait in the kernel's backlog and are served as sessions end.
/// Waiting was chosen over refusing because concurrent sessions on one repository queue on borg's
/// lock anyway, and a refused connection reaches the borg client only as the misleading
/// "Connection closed by remote host. Is borg working on the server?".
///
/// **Shutdown.** On `cancel` it stops accepting and drops the listener at once (a socket it bound
/// is removed if it is still ours, so new clients fail fast), lets running sessions finish for up
/// to `limits.shutdown_grace`, then kills and reaps their borg serve. Returns `Ok(())` then.
///
/// Must run inside a tokio runtime. Errors only if the listener cannot be registered with it;
/// failed `accept` calls are logged and retried after [`ACCEPT_ERROR_BACKOFF`].
pub async fn serve_connections(
    listener: PrivateListener,
    config: ServeConfig,
    limits: ListenLimits,
    cancel: CancellationToken,
) -> Result<()> {
    serve_connections_with_abort(listener, config, limits, cancel, CancellationToken::new()).await
}

/// [`serve_connections`], where `abort` cuts the shutdown grace period short: once both `cancel`
/// and `abort` are cancelled, running sessions are killed at once (e.g. a second Ctrl-C).
pub async fn serve_connections_with_abort(
    listener: PrivateListener,
    config: ServeConfig,
    limits: ListenLimits,
    cancel: CancellationToken,
    abort: CancellationToken,
) -> Result<()> {
    let PrivateListener {
        listener,
        path,
        guard,
        lock,
    } = listener;
    let listener = UnixListener::from_std(listener).map_err(|source| Error::SocketBind {
        path: path.clone().unwrap_or_default(),
        source,
    })?;
    let supervisor = Supervisor::new(
        config,
        SupervisorLimits {
            max_active: limits.max_connections,
            max_total: None,
            policy: LimitPolicy::Wait,
        },
    );
    accept_loop(&listener, &supervisor, limits.max_connections, &cancel).await;

    // New clients fail fast from here on: the socket is gone (if it is still ours).
    drop(listener);
    drop(guard);
    drop(lock);
    shut_down(&supervisor, limits.shutdown_grace, &abort).await;
    Ok(())
}

/// Accepts until `cancel`, admitting each connection before accepting it, so that clients over the
/// limit wait in the kernel's backlog rather than in our memory.
async fn accept_loop(
    listener: &UnixListener,
    supervisor: &Supervisor,
    max_connections: usize,
    cancel: &CancellationToken,
) {
    let mut next_id: u64 = 0;
    loop {
        if supervisor.available() == 0 {
            warn!(
                max_connections,
                "connection limit reached; new connections wait until a session ends"
            );
        }
        let admission = tokio::select! {
            admitted = supervisor.admit() => match admitted {
                Ok(admission) => admission,
                Err(refusal) => {
                    // Only Stopping is possible here (no max_total); nobody else stops it.
                    debug!("not admitting: {refusal}");
                    return;
                }
            },
            () = cancel.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    error!("accepting a connection failed: {e}; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
            },
            () = cancel.cancelled() => return,
        };
        next_id += 1;
        let span = session_span(next_id, &stream);
        span.in_scope(|| info!("connection accepted"));
        admission.spawn(stream, span);
    }
}

/// Lets running sessions finish for up to `grace` (cut short by `abort`), then kills and reaps them.
async fn shut_down(supervisor: &Supervisor, grace: Duration, abort: &CancellationToken) {
    let running = supervisor.stats().active;
    if running > 0 {
        info!(
            sessions = running,
            ?grace,
            "stopped accepting; waiting for running sessions"
        );
    } else {
        info!("stopped accepting");
    }
    let stats = tokio::select! {
        stats = supervisor.drain(grace) => stats,
        () = abort.cancelled() => {
            warn!(
                sessions = supervisor.stats().active,
                "shutdown forced; killing the remaining borg serve sessions"
            );
            supervisor.stop().await
        }
    };
    debug!(
        sessions = stats.accepted,
        failed = stats.failed,
        to_serve = stats.to_serve,
        from_serve = stats.from_serve,
        "all sessions ended"
    );
}

fn session_span(id: u64, stream: &UnixStream) -> tracing::Span {
    match stream.peer_cred() {
        Ok(cred) => info_span!("session", id, peer_uid = cred.uid(), peer_pid = cred.pid()),
        Err(_) => info_span!("session", id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn private_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn creates_missing_dir_0700_and_socket_0600() {
        let tmp = private_tempdir();
        let dir = tmp.path().join("run");
        let sock = dir.join("x.sock");
        let listener = PrivateListener::bind(&sock).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&sock), 0o600);
        assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
        assert!(!listener.is_socket_activated());
        assert_eq!(listener.path(), Some(sock.as_path()));
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".x.sock.lock", "x.sock"],
            "the socket and its lock file, nothing else"
        );
        drop(listener);
        assert!(!sock.exists(), "dropping the listener removes its socket");
    }

    #[test]
    fn missing_parent_is_named() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("a/b/x.sock");
        let err = PrivateListener::bind(&sock).unwrap_err();
        assert!(matches!(err, Error::SocketDirParentMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("tmpfiles.d") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(!tmp.path().join("a").exists(), "parents are not created");
    }

    #[test]
    fn group_or_other_writable_dir_refused() {
        for bad in [0o770, 0o702, 0o777] {
            let tmp = private_tempdir();
            let dir = tmp.path().join("d");
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(bad)).unwrap();
            let err = PrivateListener::bind(dir.join("x.sock")).unwrap_err();
            assert!(
                matches!(err, Error::SocketDirInsecure { mode, .. } if mode == bad),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 700"), "{err}");
            assert!(!dir.join("x.sock").exists());
        }
        // Readable by others is fine: only writers could swap the socket.
        let tmp = private_tempdir();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        PrivateListener::bind(dir.join("x.sock")).unwrap();
    }

    #[test]
    fn symlinked_socket_dir_refused() {
        let tmp = private_tempdir();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = PrivateListener::bind(link.join("x.sock")).unwrap_err();
        assert!(matches!(err, Error::SocketDirSymlink { .. }), "{err}");
        assert!(!real.join("x.sock").exists());
        // A dangling link is refused too, not created through.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        let err = PrivateListener::bind(dangling.join("x.sock")).unwrap_err();
        assert!(matches!(err, Error::SocketDirSymlink { .. }), "{err}");
        assert!(!tmp.path().join("nowhere").exists());
    }

    #[test]
    fn symlinks_above_the_socket_dir_are_resolved_once() {
        // /var/run -> /run style: fine, the resolved path is checked and used.
        let tmp = private_tempdir();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("alias")).unwrap();
        let sock = tmp.path().join("alias/run/x.sock");
        let listener = PrivateListener::bind(&sock).unwrap();
        assert!(fs::symlink_metadata(real.join("run/x.sock"))
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(listener.path(), Some(sock.as_path()));
        drop(listener);
        assert!(!real.join("run/x.sock").exists(), "removed by its resolved path");
    }

    #[test]
    fn writable_parent_refused_unless_sticky() {
        for (mode, ok) in [(0o777, false), (0o770, false), (0o1777, true), (0o755, true)] {
            let tmp = private_tempdir();
            let parent = tmp.path().join("parent");
            fs::create_dir(&parent).unwrap();
            fs::set_permissions(&parent, fs::Permissions::from_mode(mode)).unwrap();
            let dir = parent.join("run");
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            let result = PrivateListener::bind(dir.join("x.sock"));
            if ok {
                result.unwrap_or_else(|e| panic!("parent {mode:04o}: {e}"));
                continue;
            }
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::SocketDirAncestorUnsafe { ancestor, .. } if *ancestor == parent),
                "parent {mode:04o}: {err}"
            );
            assert!(err.to_string().contains("not sticky"), "{err}");
            assert!(!dir.join("x.sock").exists());
        }
    }

    #[test]
    fn parent_of_another_user_refused() {
        let tmp = private_tempdir();
        let parent = tmp.path().join("parent");
        fs::create_dir(&parent).unwrap();
        let dir = parent.join("run");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        // Only root can give a directory away; elsewhere safe_dir's unit test covers the rule.
        if rustix::fs::chown(&parent, Some(rustix::fs::Uid::from_raw(65534)), None).is_err() {
            eprintln!("note: skipping: cannot chown (not root)");
            return;
        }
        let err = PrivateListener::bind(dir.join("x.sock")).unwrap_err();
        assert!(
            matches!(&err, Error::SocketDirAncestorUnsafe { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("belongs to another user"), "{err}");
    }

    #[test]
    fn a_second_listener_never_replaces_a_live_ones_socket() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        let first = PrivateListener::bind(&sock).unwrap();
        // The first one's socket file is replaced by a stale one (as if removed and re-bound by a
        // crashed process); the first listener still runs. A second listener must not take over.
        fs::remove_file(&sock).unwrap();
        drop(StdUnixListener::bind(&sock).unwrap());
        let err = PrivateListener::bind(&sock).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        drop(first);
        assert!(sock.exists(), "not the first one's socket, so it left it alone");
        // Once the first has gone, its lock is free and the stale socket is replaced.
        let again = PrivateListener::bind(&sock).unwrap();
        std::os::unix::net::UnixStream::connect(&sock).expect("the new listener answers");
        drop(again);
    }

    #[test]
    fn foreign_owner_refused() {
        let tmp = private_tempdir();
        let meta = fs::metadata(tmp.path()).unwrap();
        let check = crate::safe_dir::check_dir;
        let err = check(tmp.path(), meta.mode(), meta.uid(), meta.uid() + 1).unwrap_err();
        assert!(matches!(err, Error::SocketDirNotOwned { .. }), "{err}");
        check(tmp.path(), meta.mode(), meta.uid(), meta.uid()).unwrap();
    }

    #[test]
    fn stale_socket_replaced() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        // A bound socket whose listener is gone: exactly what a crashed server leaves behind.
        drop(StdUnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        assert!(
            std::os::unix::net::UnixStream::connect(&sock).is_err(),
            "stale: nobody listens"
        );
        let listener = PrivateListener::bind(&sock).unwrap();
        assert_eq!(mode(&sock), 0o600);
        std::os::unix::net::UnixStream::connect(&sock).expect("the new listener answers");
        drop(listener);
    }

    #[test]
    fn live_socket_refused_and_kept() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        let other = StdUnixListener::bind(&sock).unwrap();
        let ino = fs::symlink_metadata(&sock).unwrap().ino();
        let err = PrivateListener::bind(&sock).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert_eq!(
            fs::symlink_metadata(&sock).unwrap().ino(),
            ino,
            "never taken over"
        );
        drop(other);
    }

    #[test]
    fn live_socket_with_full_backlog_refused_without_blocking() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        let addr = SocketAddrUnix::new(&sock).unwrap();
        let new_socket = || {
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None).unwrap()
        };
        let other = new_socket();
        rustix::net::bind(&other, &addr).unwrap();
        rustix::net::listen(&other, 1).unwrap();
        // Fill the tiny backlog (never accepted); a blocking connect would now hang.
        let mut held = Vec::new();
        for _ in 0..16 {
            let fd = new_socket();
            if rustix::net::connect(&fd, &addr).is_err() {
                break;
            }
            held.push(fd);
        }
        assert!(held.len() < 16, "backlog never filled");
        let err = PrivateListener::bind(&sock).unwrap_err();
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        drop(other);
    }

    #[test]
    fn non_socket_in_the_way_is_kept() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        fs::write(&sock, b"precious").unwrap();
        let err = PrivateListener::bind(&sock).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SocketPathOccupied {
                    kind: "regular file",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read(&sock).unwrap(), b"precious");

        let link = tmp.path().join("link.sock");
        std::os::unix::fs::symlink("/nonexistent", &link).unwrap();
        let err = PrivateListener::bind(&link).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SocketPathOccupied {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn replaced_socket_is_not_removed() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        let listener = PrivateListener::bind(&sock).unwrap();
        fs::remove_file(&sock).unwrap();
        let newcomer = StdUnixListener::bind(&sock).unwrap();
        drop(listener);
        assert!(sock.exists(), "someone else's socket survives our clean-up");
        drop(newcomer);
    }

    #[test]
    fn socket_is_0600_in_a_searchable_dir() {
        let tmp = private_tempdir();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.join("x.sock");
        let _listener = PrivateListener::bind(&sock).unwrap();
        assert_eq!(mode(&sock), 0o600);
        std::os::unix::net::UnixStream::connect(&sock).expect("connectable under its final name");
    }

    #[test]
    fn bad_paths_refused() {
        let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(120)));
        assert!(matches!(
            PrivateListener::bind(long),
            Err(Error::SocketPathInvalid { .. })
        ));
        assert!(matches!(
            PrivateListener::bind("/"),
            Err(Error::SocketPathInvalid { .. })
        ));
    }

    #[test]
    fn not_socket_activated_without_env() {
        // The test harness is not started by systemd (and LISTEN_PID would not match anyway).
        if std::env::var_os("LISTEN_FDS").is_none() {
            assert!(PrivateListener::from_systemd().unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn cancel_stops_accepting_and_removes_socket() {
        let tmp = private_tempdir();
        let sock = tmp.path().join("x.sock");
        let listener = PrivateListener::bind(&sock).unwrap();
        let config = ServeConfig {
            borg: PathBuf::from("/nonexistent/borg"),
            ..ServeConfig::new("/srv/repo").unwrap()
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve_connections(
            listener,
            config,
            ListenLimits::default(),
            cancel.clone(),
        ));
        // A connection whose borg serve cannot start is just a failed session, not a failed server.
        let mut conn = UnixStream::connect(&sock).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection is closed when borg serve cannot start");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!sock.exists());
    }
}
