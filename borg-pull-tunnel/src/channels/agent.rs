//! Agent channels: after we asked for agent forwarding, the client's sshd opens an
//! `auth-agent@openssh.com` channel back to us every time a program on the client (borg's `ssh`)
//! connects to the forwarded `SSH_AUTH_SOCK`. Each is served by the run's one-key
//! [`KeyAgent`] in a task this forward owns: [`Forward::stop`] cancels and awaits them all.
//!
//! At most [`MAX_AGENT_CHANNELS`] are served at once and [`MAX_AGENT_CHANNELS_TOTAL`] per run; more
//! are refused at once, never queued (the client must not make the server wait or sign on and on).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelOpenFailure;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

use crate::channels::{Forward, ForwardStats};
use crate::limits::{MAX_AGENT_CHANNELS, MAX_AGENT_CHANNELS_TOTAL};
use crate::ssh::incoming::{Decision, Incoming};
use crate::ssh::key_agent::KeyAgent;

/// Serves agent channels with one [`KeyAgent`], each in a task it owns.
pub struct AgentForward {
    agent: Arc<KeyAgent>,
    /// Channels admitted and not yet finished (a slot is freed when its task ends).
    active: Arc<AtomicUsize>,
    /// Channels admitted so far.
    accepted: AtomicU64,
    /// Channels refused so far.
    refused: AtomicU64,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for AgentForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentForward")
            .field("agent", &self.agent)
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("accepted", &self.accepted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One admitted channel's place among the active ones; freed when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A channel admitted by [`AgentForward::admit`], to be served by [`Admission::spawn`].
struct Admission {
    slot: Slot,
    number: u64,
    agent: Arc<KeyAgent>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Admission {
    /// Serves `stream` in a task the forward owns, until it ends or the forward stops.
    fn spawn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Admission {
            slot,
            number,
            agent,
            cancel,
            tracker,
        } = self;
        let span = tracing::info_span!("agent", channel = number);
        tracker.spawn(
            async move {
                let _slot = slot;
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => debug!("agent channel stopped"),
                    result = agent.serve(stream) => match result {
                        Ok(()) => debug!("agent channel closed by the client"),
                        Err(e) => debug!("agent channel ended: {e:#}"),
                    },
                }
            }
            .instrument(span),
        );
    }
}

impl AgentForward {
    /// A forward that serves every agent channel with `agent`.
    pub fn new(agent: Arc<KeyAgent>) -> Arc<Self> {
        Arc::new(Self {
            agent,
            active: Arc::new(AtomicUsize::new(0)),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }

    /// Decides about one agent channel: accepted (and served in a task this forward owns) unless
    /// the forward is stopped or a limit is reached.
    pub fn accept(&self) -> Decision {
        match self.admit() {
            Ok(admission) => {
                Decision::Accept(Box::new(move |channel| admission.spawn(channel.into_stream())))
            }
            Err(why) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Decision::Refuse(ChannelOpenFailure::ResourceShortage, why)
            }
        }
    }

    fn admit(&self) -> Result<Admission, String> {
        if self.cancel.is_cancelled() {
            return Err("the agent forward is stopped".into());
        }
        if self.accepted.load(Ordering::Acquire) >= MAX_AGENT_CHANNELS_TOTAL {
            return Err(format!(
                "{MAX_AGENT_CHANNELS_TOTAL} agent channels were already served in this run"
            ));
        }
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_AGENT_CHANNELS).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(format!("{MAX_AGENT_CHANNELS} agent channels are already open"));
        }
        let number = self.accepted.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(Admission {
            slot: Slot(Arc::clone(&self.active)),
            number,
            agent: Arc::clone(&self.agent),
            cancel: self.cancel.clone(),
            tracker: self.tracker.clone(),
        })
    }
}

/// No bytes are counted (`to_serve`, `from_serve`): an agent channel carries requests to our own
/// agent, whose [`KeyAgent::stats`] say what it did.
impl Forward for AgentForward {
    fn stats(&self) -> ForwardStats {
        ForwardStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            ..ForwardStats::default()
        }
    }

    async fn drain(&self, grace: Duration) -> ForwardStats {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            return self.stop().await;
        }
        self.stats()
    }

    async fn stop(&self) -> ForwardStats {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.stats()
    }
}

impl Incoming for AgentForward {
    fn agent(&self) -> Decision {
        self.accept()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::key_agent::tests::agent;

    #[tokio::test]
    async fn stop_ends_a_stuck_connection() {
        let forward = AgentForward::new(agent());
        // The peer keeps its end open and sends nothing: only the idle deadline (a minute) or
        // stop ends the task.
        let (ours, theirs) = tokio::io::duplex(64);
        forward.admit().unwrap().spawn(ours);
        assert_eq!(forward.active.load(Ordering::Acquire), 1);
        tokio::time::timeout(Duration::from_secs(10), forward.stop())
            .await
            .expect("stop ended the stuck task");
        assert_eq!(forward.active.load(Ordering::Acquire), 0);
        drop(theirs);
        assert!(matches!(forward.accept(), Decision::Refuse(..)));
    }

    #[tokio::test]
    async fn channels_above_the_limit_are_refused_and_a_freed_slot_is_reused() {
        let forward = AgentForward::new(agent());
        let mut peers = Vec::new();
        for _ in 0..MAX_AGENT_CHANNELS {
            let (ours, theirs) = tokio::io::duplex(64);
            forward.admit().unwrap().spawn(ours);
            peers.push(theirs);
        }
        let Decision::Refuse(ChannelOpenFailure::ResourceShortage, why) = forward.accept() else {
            panic!("admitted more than {MAX_AGENT_CHANNELS} channels");
        };
        assert!(why.contains("already open"), "{why}");
        // The peer closing its end ends that connection and frees its slot.
        drop(peers.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while forward.active.load(Ordering::Acquire) == MAX_AGENT_CHANNELS {
            assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(forward.admit().is_ok());
        forward.stop().await;
    }

    #[tokio::test]
    async fn the_total_per_run_is_bounded() {
        let forward = AgentForward::new(agent());
        forward
            .accepted
            .store(MAX_AGENT_CHANNELS_TOTAL, Ordering::Release);
        let Decision::Refuse(_, why) = forward.accept() else {
            panic!("admitted past the total");
        };
        assert!(why.contains("already served"), "{why}");
        assert_eq!(forward.stats().refused, 1);
    }
}
