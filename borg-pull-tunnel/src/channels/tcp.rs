//! The TCP forward of `--via tcp` (the docs' `ssh -R 8022:localhost:22` recipe).
//!
//! We ask the client's sshd to listen on its own loopback (`tcpip-forward` for 127.0.0.1, port 0
//! so sshd picks a free one); every connection to it arrives as a `forwarded-tcpip` channel and is
//! bridged to the server's sshd, where the forced command of the agent key decides what runs.
//! Nothing here speaks borg: the bytes are an SSH connection between the client's `ssh` and the
//! server's sshd, which we can neither read nor widen.
//!
//! Bounded like the UNIX socket forward: at most [`MAX_FORWARDED_CONNECTIONS`] at once and
//! [`MAX_FORWARDED_CONNECTIONS_TOTAL`] per run, refused beyond (never queued). Each bridge is a
//! task owned by the [`TcpForward`]; [`TcpForward::stop`] ends and awaits them all.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelOpenFailure;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::channels::{Forward, ForwardStats};
use crate::limits::{CONNECT_TIMEOUT, MAX_FORWARDED_CONNECTIONS, MAX_FORWARDED_CONNECTIONS_TOTAL};
use crate::ssh::incoming::{Decision, Incoming, TcpOrigin};
use crate::ssh::session::Session;
use crate::Result;

/// The address the client's sshd listens on for us: its loopback only.
pub const LISTEN_ADDRESS: &str = "127.0.0.1";

/// Bridges the connections to our TCP forward on the client to `target` (the server's sshd).
pub struct TcpForward {
    target: (String, u16),
    listening: Mutex<Option<u32>>,
    counts: Arc<Counts>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    active: AtomicUsize,
    to_target: AtomicU64,
    from_target: AtomicU64,
}

impl TcpForward {
    /// A bridge to `host:port`, as this server reaches its own sshd.
    pub fn new(host: impl Into<String>, port: u16) -> Arc<Self> {
        Arc::new(Self {
            target: (host.into(), port),
            listening: Mutex::new(None),
            counts: Arc::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Asks the client's sshd to listen on [`LISTEN_ADDRESS`] at a port it picks; returns it.
    pub async fn listen(&self, session: &Session) -> Result<u16> {
        let port = session.tcpip_forward(LISTEN_ADDRESS, 0).await?;
        *self.listening.lock().expect("not poisoned") = Some(port);
        debug!(port, "TCP forward listening on the client's loopback");
        u16::try_from(port)
            .map_err(|_| crate::Error::InvalidOption(format!("the client's sshd chose port {port}")))
    }

    /// Cancels the forward on the client (best effort: the session may be gone).
    pub async fn unlisten(&self, session: &Session) {
        let port = self.listening.lock().expect("not poisoned").take();
        if let Some(port) = port {
            if let Err(e) = session.cancel_tcpip_forward(LISTEN_ADDRESS, port).await {
                debug!("cancelling the TCP forward: {e}");
            }
        }
    }

    fn refuse(&self, reason: ChannelOpenFailure, why: String) -> Decision {
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        Decision::Refuse(reason, why)
    }
}

/// `to_serve` in the stats: bytes to the server's sshd.
impl Forward for TcpForward {
    fn stats(&self) -> ForwardStats {
        let c = &self.counts;
        ForwardStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            to_serve: c.to_target.load(Ordering::Relaxed),
            from_serve: c.from_target.load(Ordering::Relaxed),
        }
    }

    async fn drain(&self, grace: Duration) -> ForwardStats {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            return self.stop().await;
        }
        self.stats()
    }

    async fn stop(&self) -> ForwardStats {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.stats()
    }
}

impl Incoming for TcpForward {
    fn forwarded_tcpip(&self, origin: &TcpOrigin) -> Decision {
        let ours = *self.listening.lock().expect("not poisoned");
        if ours != Some(origin.connected_port) || origin.connected_address != LISTEN_ADDRESS {
            return self.refuse(
                ChannelOpenFailure::AdministrativelyProhibited,
                format!(
                    "a connection for {}:{}, which we did not ask to forward",
                    crate::ssh::exec::escape_output(origin.connected_address.as_bytes()),
                    origin.connected_port
                ),
            );
        }
        let c = &self.counts;
        if c.accepted.load(Ordering::Relaxed) >= MAX_FORWARDED_CONNECTIONS_TOTAL {
            return self.refuse(
                ChannelOpenFailure::ResourceShortage,
                format!("{MAX_FORWARDED_CONNECTIONS_TOTAL} forwarded connections in this run already"),
            );
        }
        if c.active.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDED_CONNECTIONS || self.stop.is_cancelled() {
            c.active.fetch_sub(1, Ordering::AcqRel);
            return self.refuse(
                ChannelOpenFailure::ResourceShortage,
                format!("{MAX_FORWARDED_CONNECTIONS} forwarded connections open already"),
            );
        }
        let n = c.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let (counts, stop, target, tasks) = (
            c.clone(),
            self.stop.clone(),
            self.target.clone(),
            self.tasks.clone(),
        );
        let span = tracing::info_span!("forward", connection = n);
        Decision::Accept(Box::new(move |channel| {
            tasks.spawn(
                async move {
                    bridge(channel, &target, &counts, &stop).await;
                    counts.active.fetch_sub(1, Ordering::AcqRel);
                }
                .instrument(span),
            );
        }))
    }
}

/// Connects to `target` and copies both ways until both sides are done or `stop` fires. The
/// channel is read to its end (or dropped, which closes it) on every path.
async fn bridge(
    channel: russh::Channel<russh::client::Msg>,
    target: &(String, u16),
    counts: &Counts,
    stop: &CancellationToken,
) {
    let mut stream = channel.into_stream();
    let connect = tokio::net::TcpStream::connect((target.0.as_str(), target.1));
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(
                "cannot connect to the server's sshd at {}:{}: {e}",
                target.0, target.1
            );
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            warn!(
                "the server's sshd at {}:{} did not accept within {CONNECT_TIMEOUT:?}",
                target.0, target.1
            );
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut stream, &mut tcp) => match copied {
            Ok((to, from)) => {
                counts.to_target.fetch_add(to, Ordering::Relaxed);
                counts.from_target.fetch_add(from, Ordering::Relaxed);
                debug!(to, from, "forwarded TCP connection done");
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                debug!("forwarded TCP connection ended: {e}");
            }
        },
        () = stop.cancelled() => debug!("forwarded TCP connection stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(address: &str, port: u32) -> TcpOrigin {
        TcpOrigin {
            connected_address: address.into(),
            connected_port: port,
            originator_address: "127.0.0.1".into(),
            originator_port: 40000,
        }
    }

    fn refused(decision: &Decision) -> Option<ChannelOpenFailure> {
        match decision {
            Decision::Accept(_) => None,
            Decision::Refuse(reason, _) => Some(reason.clone()),
        }
    }

    /// What the client's sshd may open to us: only connections to the forward we asked for, at
    /// most MAX_FORWARDED_CONNECTIONS at once and MAX_FORWARDED_CONNECTIONS_TOTAL per run.
    #[test]
    fn only_our_forward_is_accepted_and_within_the_limits() {
        let bridge = TcpForward::new("127.0.0.1", 22);
        // Nothing asked for yet: everything is refused.
        assert_eq!(
            refused(&bridge.forwarded_tcpip(&origin(LISTEN_ADDRESS, 1234))),
            Some(ChannelOpenFailure::AdministrativelyProhibited)
        );
        *bridge.listening.lock().unwrap() = Some(1234);
        for (address, port) in [("0.0.0.0", 1234), (LISTEN_ADDRESS, 1235), ("127.0.0.1\n", 1234)] {
            assert_eq!(
                refused(&bridge.forwarded_tcpip(&origin(address, port))),
                Some(ChannelOpenFailure::AdministrativelyProhibited),
                "{address}:{port}"
            );
        }
        // Accepted channels hold a slot until their bridge task ends (never started here).
        let accepted: Vec<Decision> = (0..MAX_FORWARDED_CONNECTIONS)
            .map(|_| bridge.forwarded_tcpip(&origin(LISTEN_ADDRESS, 1234)))
            .collect();
        assert!(accepted.iter().all(|d| refused(d).is_none()));
        assert_eq!(
            refused(&bridge.forwarded_tcpip(&origin(LISTEN_ADDRESS, 1234))),
            Some(ChannelOpenFailure::ResourceShortage)
        );
        // The per-run total holds even when slots are free again.
        bridge.counts.active.store(0, Ordering::Relaxed);
        bridge
            .counts
            .accepted
            .store(MAX_FORWARDED_CONNECTIONS_TOTAL, Ordering::Relaxed);
        assert_eq!(
            refused(&bridge.forwarded_tcpip(&origin(LISTEN_ADDRESS, 1234))),
            Some(ChannelOpenFailure::ResourceShortage)
        );
        let stats = bridge.stats();
        assert_eq!(stats.refused, 6);
    }
}
