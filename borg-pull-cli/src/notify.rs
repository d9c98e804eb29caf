//! systemd's readiness protocol (`sd_notify`) for `listen` under `Type=notify`, and its watchdog.
//!
//! systemd passes `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and, with
//! `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). We send `READY=1` once the socket accepts
//! connections, `WATCHDOG=1` at half the interval while the accept loop runs, and `STOPPING=1` on
//! shutdown. Without `NOTIFY_SOCKET` everything here does nothing. Written against the protocol
//! (a datagram of `KEY=VALUE` lines) instead of linking libsystemd.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Where to send notifications, read once from the environment.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours only when
    /// `WATCHDOG_PID` is unset or our pid).
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self::default();
        };
        let target = match address(&path.to_string_lossy()).and_then(|a| Ok((UnixDatagram::unbound()?, a))) {
            Ok(target) => Some(target),
            Err(e) => {
                warn!("NOTIFY_SOCKET={path:?} cannot be used: {e}; systemd will not hear that we are ready");
                None
            }
        };
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// Sends one notification (`READY=1\nSTATUS=…`); failures are logged, never fatal.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            match socket.send_to_addr(message.as_bytes(), addr) {
                Ok(_) => debug!(message, "notified systemd"),
                Err(e) => warn!("cannot notify systemd ({message:?}): {e}"),
            }
        }
    }

    /// Sends `WATCHDOG=1` every half watchdog interval until `stop` is cancelled (a task the
    /// caller owns through `stop`); nothing without `WATCHDOG_USEC`.
    pub async fn watchdog(&self, stop: CancellationToken) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => self.send("WATCHDOG=1"),
                () = stop.cancelled() => return,
            }
        }
    }
}

/// `/path` or `@abstract`.
fn address(socket: &str) -> std::io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(socket),
    }
}
