//! One owner for every `borg serve` session of a run: admission, limits, shutdown and totals.
//!
//! Both ways sessions arrive use it: `listen` (a UNIX listener, where a full house makes clients
//! *wait* in the backlog) and the pull forwarder (channels opened by an untrusted client's sshd,
//! where a full house is *refused* at once so the client cannot queue work on the server).
//!
//! A session goes through two steps. [`Supervisor::admit`] (or [`Supervisor::try_admit`] from code
//! that must not wait, like a russh handler) reserves a slot and returns an [`Admission`];
//! [`Admission::spawn`] then runs [`serve_stream`] on the connection in a task the supervisor owns.
//! The slot is released when that `borg serve` has been reaped, or when an unspawned admission is
//! dropped. Every task is tracked ([`TaskTracker`]) and cancellable ([`CancellationToken`]), so
//! [`Supervisor::drain`] and [`Supervisor::stop`] return only once every `borg serve` is reaped;
//! dropping the last [`Supervisor`] clone cancels the sessions too.
//!
//! ```no_run
//! # async fn demo(stream: tokio::net::UnixStream) -> borg_pull_core::Result<()> {
//! use borg_pull_core::supervise::{LimitPolicy, Supervisor, SupervisorLimits};
//! use borg_pull_core::ServeConfig;
//!
//! let limits = SupervisorLimits { max_active: 4, max_total: None, policy: LimitPolicy::Wait };
//! let supervisor = Supervisor::new(ServeConfig::new("/srv/borg/client1")?, limits);
//! if let Ok(admission) = supervisor.admit().await {
//!     admission.spawn(stream, tracing::info_span!("session"));
//! }
//! let stats = supervisor.drain(std::time::Duration::from_secs(30)).await;
//! assert_eq!(stats.active, 0);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::limits::SERVE_CANCEL_GRACE;
use crate::serve::{serve_stream_with, Prestarted, ServeConfig};

/// What [`Supervisor::admit`] does when `max_active` sessions are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Wait for a slot (until it frees, the supervisor stops, or the caller drops the future).
    Wait,
    /// Refuse at once with [`Refusal::Busy`].
    Refuse,
}

/// The bounds of one [`Supervisor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorLimits {
    /// Most sessions at once (a value of 0 is treated as 1).
    pub max_active: usize,
    /// Most sessions over the supervisor's whole life (`None`: no cap).
    pub max_total: Option<u64>,
    /// What happens when `max_active` is reached.
    pub policy: LimitPolicy,
}

/// Why a session was not admitted. Carries the limit that was hit, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_active` sessions are running and the policy is [`LimitPolicy::Refuse`] (or the caller
    /// used [`Supervisor::try_admit`]).
    #[error("{max_active} borg serve sessions are already running")]
    Busy {
        /// The limit.
        max_active: usize,
    },
    /// `max_total` sessions have already been admitted.
    #[error("the limit of {max_total} borg serve sessions for this run is reached")]
    TotalReached {
        /// The limit.
        max_total: u64,
    },
    /// [`Supervisor::drain`] or [`Supervisor::stop`] was called.
    #[error("shutting down: no new borg serve sessions")]
    Stopping,
}

/// Totals of a [`Supervisor`] so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Sessions spawned.
    pub accepted: u64,
    /// Admissions refused (any [`Refusal`]).
    pub refused: u64,
    /// Sessions whose `borg serve` has not been reaped yet.
    pub active: usize,
    /// Sessions whose `borg serve` could not start or whose relay failed.
    pub failed: u64,
    /// Bytes from connections to `borg serve` (sessions that ended without a relay error).
    pub to_serve: u64,
    /// Bytes from `borg serve` to connections (sessions that ended without a relay error).
    pub from_serve: u64,
}

/// Admits, runs, limits and stops `borg serve` sessions. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
    /// Cancels the sessions when the last clone is dropped (tasks hold `inner`, not this).
    _owner: Arc<DropGuard>,
}

struct Inner {
    config: ServeConfig,
    limits: SupervisorLimits,
    slots: Arc<Semaphore>,
    /// Admissions handed out and not given back (counts against `max_total`).
    admitted: AtomicU64,
    /// Set by drain/stop: no new admissions; wakes callers waiting for a slot.
    stopping: CancellationToken,
    /// Cancels running sessions (their borg serve gets EOF, then is killed after a grace period).
    cancel: CancellationToken,
    tracker: TaskTracker,
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicUsize,
    failed: AtomicU64,
    to_serve: AtomicU64,
    from_serve: AtomicU64,
    /// A `borg serve` started ahead ([`Supervisor::prestart`]) that no session has taken yet.
    ahead: std::sync::Mutex<Option<Prestarted>>,
}

impl Supervisor {
    /// A supervisor running `borg serve` as `config` says, within `limits`.
    pub fn new(config: ServeConfig, limits: SupervisorLimits) -> Self {
        let cancel = CancellationToken::new();
        let inner = Inner {
            config,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_active.max(1))),
            admitted: AtomicU64::new(0),
            stopping: CancellationToken::new(),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            failed: AtomicU64::new(0),
            to_serve: AtomicU64::new(0),
            from_serve: AtomicU64::new(0),
            ahead: std::sync::Mutex::new(None),
        };
        Self {
            inner: Arc::new(inner),
            _owner: Arc::new(cancel.drop_guard()),
        }
    }

    /// Reserves a slot for one session, as the [`LimitPolicy`] says.
    ///
    /// With [`LimitPolicy::Wait`] this waits for a free slot; dropping the future gives up waiting.
    /// Refuses at once when the supervisor is stopping or `max_total` is reached.
    pub async fn admit(&self) -> Result<Admission, Refusal> {
        if self.inner.limits.policy == LimitPolicy::Refuse {
            return self.try_admit();
        }
        self.inner.check_open()?;
        let permit = tokio::select! {
            permit = self.inner.slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = self.inner.stopping.cancelled() => return Err(self.inner.refuse(Refusal::Stopping)),
        };
        self.inner.admission(permit)
    }

    /// Reserves a slot without ever waiting: [`Refusal::Busy`] when all are taken, whatever the
    /// policy. For callers that must not block, such as a russh handler.
    pub fn try_admit(&self) -> Result<Admission, Refusal> {
        self.inner.check_open()?;
        match self.inner.slots.clone().try_acquire_owned() {
            Ok(permit) => self.inner.admission(permit),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                Err(self.inner.refuse(Refusal::Busy {
                    max_active: self.inner.slots_total(),
                }))
            }
        }
    }

    /// Starts the next session's `borg serve` now, before its connection comes, so that its
    /// start-up overlaps the client's (a pull calls this once borg on the client is on its way).
    /// At most one waits at a time; the next admitted session takes it. One nobody took is
    /// stopped (stdin closed, SIGTERM, SIGKILL after [`SERVE_CANCEL_GRACE`], reaped) once the
    /// supervisor drains or stops, or its last clone is dropped. A failure to start it is only
    /// logged: the session then starts its own and reports that failure.
    pub fn prestart(&self) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        {
            let mut ahead = self.inner.ahead.lock().unwrap_or_else(|p| p.into_inner());
            if ahead.is_some() {
                return;
            }
            match self.inner.config.prestart() {
                Ok(serve) => *ahead = Some(serve),
                Err(e) => {
                    warn!("cannot start borg serve ahead of its connection: {e}");
                    return;
                }
            }
        }
        let inner = Arc::clone(&self.inner);
        self.inner.tracker.spawn(async move {
            tokio::select! {
                () = inner.stopping.cancelled() => {}
                () = inner.cancel.cancelled() => {}
            }
            let left = inner.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(serve) = left {
                serve.stop(SERVE_CANCEL_GRACE).await;
            }
        });
    }

    /// The process id of the `borg serve` started ahead that waits for a session, if any.
    pub fn prestarted(&self) -> Option<u32> {
        let ahead = self.inner.ahead.lock().unwrap_or_else(|p| p.into_inner());
        ahead.as_ref().and_then(Prestarted::id)
    }

    /// Free slots right now (for a log line when the limit is reached; may change at once).
    pub fn available(&self) -> usize {
        self.inner.slots.available_permits()
    }

    /// Stops admitting, lets running sessions end on their own for up to `grace`, then cancels the
    /// rest (stdin closed, killed after [`SERVE_CANCEL_GRACE`](crate::limits::SERVE_CANCEL_GRACE))
    /// and waits until every `borg serve` is reaped.
    pub async fn drain(&self, grace: Duration) -> SupervisorStats {
        self.inner.stopping.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = self.inner.active.load(Ordering::SeqCst),
                "grace period over; killing the remaining borg serve sessions"
            );
            self.inner.cancel.cancel();
            self.inner.tracker.wait().await;
        }
        self.stats()
    }

    /// Stops admitting, cancels every session now and waits until every `borg serve` is reaped.
    pub async fn stop(&self) -> SupervisorStats {
        self.inner.stopping.cancel();
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.stats()
    }

    /// The totals so far.
    pub fn stats(&self) -> SupervisorStats {
        let i = &self.inner;
        SupervisorStats {
            accepted: i.accepted.load(Ordering::SeqCst),
            refused: i.refused.load(Ordering::SeqCst),
            active: i.active.load(Ordering::SeqCst),
            failed: i.failed.load(Ordering::SeqCst),
            to_serve: i.to_serve.load(Ordering::SeqCst),
            from_serve: i.from_serve.load(Ordering::SeqCst),
        }
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("limits", &self.inner.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn slots_total(&self) -> usize {
        self.limits.max_active.max(1)
    }

    fn refuse(&self, refusal: Refusal) -> Refusal {
        self.refused.fetch_add(1, Ordering::SeqCst);
        refusal
    }

    /// Refuses when stopping or when `max_total` is already used up (before waiting for a slot).
    fn check_open(&self) -> Result<(), Refusal> {
        if self.stopping.is_cancelled() {
            return Err(self.refuse(Refusal::Stopping));
        }
        match self.limits.max_total {
            Some(max_total) if self.admitted.load(Ordering::SeqCst) >= max_total => {
                Err(self.refuse(Refusal::TotalReached { max_total }))
            }
            _ => Ok(()),
        }
    }

    /// Turns a slot into an admission, if `max_total` still allows one more.
    fn admission(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Result<Admission, Refusal> {
        if self.stopping.is_cancelled() {
            return Err(self.refuse(Refusal::Stopping));
        }
        let max_total = self.limits.max_total.unwrap_or(u64::MAX);
        let reserved = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max_total).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(self.refuse(Refusal::TotalReached { max_total }));
        }
        Ok(Admission {
            inner: Arc::clone(self),
            permit: Some(permit),
        })
    }

    async fn run<S>(&self, stream: S, cancel: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        info!("starting borg serve");
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        match serve_stream_with(&self.config, stream, cancel, ahead).await {
            Ok(outcome) => {
                self.to_serve.fetch_add(outcome.to_serve, Ordering::SeqCst);
                self.from_serve.fetch_add(outcome.from_serve, Ordering::SeqCst);
                // Plain text for the logs: `0`, `signal 9`, or killed after cancellation.
                let rc = match outcome.status {
                    Some(status) => status.code().map_or_else(
                        || {
                            format!(
                                "signal {}",
                                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                            )
                        },
                        |code| code.to_string(),
                    ),
                    None => "killed after cancellation".to_owned(),
                };
                info!(
                    to_serve = outcome.to_serve,
                    from_serve = outcome.from_serve,
                    rc = %rc,
                    "session ended"
                );
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                warn!("session failed: {e}");
            }
        }
    }
}

/// A reserved slot for one session. Dropping it without [`spawn`](Self::spawn) gives the slot
/// (and its share of `max_total`) back.
#[derive(Debug)]
pub struct Admission {
    inner: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Runs `borg serve` for `stream` in a task the supervisor owns, inside `span`.
    ///
    /// Returns at once. The slot is released when `borg serve` has been reaped. The session logs
    /// "starting borg serve", then "session ended" (with byte counts and exit status) or
    /// "session failed". An admission spawned after [`Supervisor::stop`] (or after `drain`'s grace
    /// period) starts already cancelled: its `borg serve` gets EOF at once.
    pub fn spawn<S>(mut self, stream: S, span: tracing::Span)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let permit = self.permit.take();
        let inner = Arc::clone(&self.inner);
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        inner.active.fetch_add(1, Ordering::SeqCst);
        let cancel = inner.cancel.child_token();
        let task_inner = Arc::clone(&inner);
        inner.tracker.spawn(
            async move {
                task_inner.run(stream, cancel).await;
                task_inner.active.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            // Never spawned: this was not a session, so it does not count against max_total.
            self.inner.admitted.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
