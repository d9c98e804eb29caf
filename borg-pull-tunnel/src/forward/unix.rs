//! The UNIX socket forward on the client and the bridge from each forwarded channel to `borg serve`.
//!
//! We ask the client's sshd to listen on a socket in a private directory
//! (`streamlocal-forward@openssh.com`); every connection borg's `BORG_RSH` relay makes to it arrives
//! here as a `forwarded-streamlocal@openssh.com` channel. Each channel gets one task that runs
//! [`borg_pull_core::serve::serve_stream`] on it: the task always reads the channel to its end (an
//! unread channel would stall the whole connection), shuts its write side down with EOF when
//! `borg serve` is done, and `borg serve` is killed and reaped when the channel ends or the run is
//! cancelled.
//!
//! If this process dies without running any of that (SIGKILL, OOM), the kernel closes our ends of
//! `borg serve`'s pipes: it reads EOF, rolls back the unfinished transaction, releases the
//! repository lock and exits (tested). The client's sshd sees the TCP connection close and ends the
//! session, so borg create loses its relay and exits; only the dead socket in its private, unique
//! directory remains, which never blocks the next run. `PR_SET_PDEATHSIG` on `borg serve` (in
//! borg-pull-core) would add a hard kill for a `borg serve` stuck in a write; not needed so far.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use borg_pull_core::serve::{serve_stream, ServeConfig};
use russh::client::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::error::ForwardDenial;
use crate::exec::shell_quote;
use crate::incoming::{Decision, Incoming};
use crate::limits::{MAX_FORWARDED_CONNECTIONS, MAX_SOCKET_PATH, REMOTE_HELPER_TIMEOUT};
use crate::session::Session;
use crate::{Error, Result};

/// Totals over all forwarded connections of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Forwarded connections bridged to `borg serve`.
    pub connections: u64,
    /// Bytes from the client's borg to `borg serve`.
    pub to_serve: u64,
    /// Bytes from `borg serve` to the client's borg.
    pub from_serve: u64,
}

/// Owns the tasks that bridge forwarded channels to `borg serve`.
pub struct Forwarder {
    serve: ServeConfig,
    expected: Arc<Mutex<Option<String>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    totals: Arc<Totals>,
}

impl Forwarder {
    /// A forwarder that runs `borg serve` as `serve` says; `cancel` stops every bridge.
    pub fn new(serve: ServeConfig, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            serve,
            expected: Arc::default(),
            tracker: TaskTracker::new(),
            cancel,
            totals: Arc::default(),
        })
    }

    fn clone_handles(&self) -> Self {
        Self {
            serve: self.serve.clone(),
            expected: self.expected.clone(),
            tracker: self.tracker.clone(),
            cancel: self.cancel.clone(),
            totals: self.totals.clone(),
        }
    }

    /// Accept channels for this socket path only (set before requesting the forward).
    pub fn expect(&self, socket_path: &str) {
        *self.expected.lock().expect("not poisoned") = Some(socket_path.to_owned());
    }

    fn bridge(&self, channel: Channel<Msg>) {
        let n = self.totals.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let serve = self.serve.clone();
        let cancel = self.cancel.child_token();
        let totals = self.totals.clone();
        let span = tracing::info_span!("forward", connection = n);
        self.tracker.spawn(
            async move {
                match serve_stream(&serve, channel.into_stream(), cancel).await {
                    Ok(outcome) => {
                        totals.to_serve.fetch_add(outcome.to_serve, Ordering::Relaxed);
                        totals.from_serve.fetch_add(outcome.from_serve, Ordering::Relaxed);
                        debug!(
                            to_serve = outcome.to_serve,
                            from_serve = outcome.from_serve,
                            status = ?outcome.status,
                            "forwarded connection done"
                        );
                    }
                    Err(e) => warn!("forwarded connection failed: {e:#}"),
                }
                totals.active.fetch_sub(1, Ordering::SeqCst);
            }
            .instrument(span),
        );
    }

    /// Waits up to `timeout` for every bridge to finish on its own, then cancels the rest
    /// (killing their `borg serve`) and waits for them to be reaped.
    pub async fn drain(&self, timeout: Duration) -> ForwardStats {
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait()).await.is_err() {
            warn!("forwarded connections still open after {timeout:?}; stopping borg serve");
            self.cancel.cancel();
            self.tracker.wait().await;
        }
        self.stats()
    }

    /// Cancels every bridge now (their `borg serve` is killed and reaped) and waits for them.
    pub async fn stop(&self) -> ForwardStats {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.stats()
    }

    /// The totals so far.
    pub fn stats(&self) -> ForwardStats {
        ForwardStats {
            connections: self.totals.connections.load(Ordering::Relaxed),
            to_serve: self.totals.to_serve.load(Ordering::Relaxed),
            from_serve: self.totals.from_serve.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Totals {
    active: AtomicUsize,
    connections: AtomicU64,
    to_serve: AtomicU64,
    from_serve: AtomicU64,
}

impl Incoming for Forwarder {
    /// Accepts connections to our socket only, at most [`MAX_FORWARDED_CONNECTIONS`] at once;
    /// the bridge task owns and drains the channel.
    fn forwarded_streamlocal(&self, socket_path: &str) -> Decision {
        let expected = self.expected.lock().expect("not poisoned").clone();
        if expected.as_deref() != Some(socket_path) || self.cancel.is_cancelled() {
            warn!(
                socket_path,
                "refusing a forwarded connection for a socket we did not ask for"
            );
            return Decision::prohibited();
        }
        if self.totals.active.fetch_add(1, Ordering::SeqCst) >= MAX_FORWARDED_CONNECTIONS {
            self.totals.active.fetch_sub(1, Ordering::SeqCst);
            warn!("refusing a forwarded connection: {MAX_FORWARDED_CONNECTIONS} already open");
            return Decision::Refuse(ChannelOpenFailure::ResourceShortage);
        }
        let forwarder = self.clone_handles();
        Decision::Accept(Box::new(move |channel| forwarder.bridge(channel)))
    }
}

/// Asks the client's sshd to listen on `socket_path`; on refusal, finds out why.
pub async fn listen(session: &Session, forwarder: &Forwarder, socket_path: &str) -> Result<()> {
    forwarder.expect(socket_path);
    match session.streamlocal_forward(socket_path).await {
        Ok(()) => {
            debug!(socket_path, "forward listening");
            Ok(())
        }
        Err(Error::RequestDenied { host, port, .. }) => Err(Error::ForwardDenied {
            host,
            port,
            path: socket_path.to_owned(),
            cause: diagnose(session, socket_path).await,
        }),
        Err(e) => Err(e),
    }
}

/// Stops listening on `socket_path` (best effort: the directory is removed anyway).
pub async fn unlisten(session: &Session, socket_path: &str) {
    if let Err(e) = session.cancel_streamlocal_forward(socket_path).await {
        debug!(socket_path, "cancel-streamlocal-forward: {e}");
    }
}

/// Looks at the client to explain a refused forward.
async fn diagnose(session: &Session, socket_path: &str) -> ForwardDenial {
    if socket_path.len() > MAX_SOCKET_PATH {
        return ForwardDenial::PathTooLong;
    }
    let Some((dir, _)) = socket_path.rsplit_once('/') else {
        return ForwardDenial::Unknown(format!("{socket_path:?} is not absolute"));
    };
    let (Ok(qdir), Ok(qsock)) = (shell_quote(dir.as_bytes()), shell_quote(socket_path.as_bytes())) else {
        return ForwardDenial::Unknown("path contains NUL".into());
    };
    let (qdir, qsock) = (String::from_utf8_lossy(&qdir), String::from_utf8_lossy(&qsock));
    let script = format!(
        "if [ ! -d {qdir} ]; then echo nodir; elif [ -e {qsock} ] || [ -L {qsock} ]; then echo stale; \
         elif [ ! -w {qdir} ] || [ ! -x {qdir} ]; then echo notwritable; else echo ok; fi"
    );
    match session.capture(&script, REMOTE_HELPER_TIMEOUT).await {
        Ok(out) => match String::from_utf8_lossy(&out.stdout).trim() {
            "ok" => ForwardDenial::Forbidden,
            "nodir" => ForwardDenial::NoDirectory,
            "stale" => ForwardDenial::StaleSocket,
            "notwritable" => ForwardDenial::NotWritable,
            _ => ForwardDenial::Unknown(out.output_text()),
        },
        Err(e) => ForwardDenial::Unknown(format!("could not look at the client: {e}")),
    }
}
