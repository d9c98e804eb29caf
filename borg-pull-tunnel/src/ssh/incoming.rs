//! What happens to the channels the client's sshd opens towards us.
//!
//! The connection layer ([`crate::ssh::session`]) knows nothing of borg: it asks an [`Incoming`] value
//! about every channel the peer opens and carries out the [`Decision`]. Each forward kind (built
//! above this module, which never names them) implements the method for its channel kind; every
//! method refuses by default, so a kind nobody asked for is always refused. A peer that keeps
//! opening refused channels is cut off by the session (see [`MAX_REFUSED_CHANNEL_OPENS`](crate::limits::MAX_REFUSED_CHANNEL_OPENS)).

use russh::client::Msg;
use russh::{Channel, ChannelOpenFailure};

/// Runs an accepted channel. Called right after the open confirmation was sent, from the
/// connection's handler: it must return at once (spawn a task that owns and drains the channel).
pub type Start = Box<dyn FnOnce(Channel<Msg>) + Send>;

/// The answer to a channel open request.
pub enum Decision {
    /// Confirm the channel and hand it to this function.
    Accept(Start),
    /// Refuse it with this reason code; `why` goes into the (bounded) log.
    Refuse(ChannelOpenFailure, String),
}

impl Decision {
    /// Refused as administratively prohibited: what every kind nobody asked for gets.
    pub fn prohibited() -> Self {
        Decision::Refuse(
            ChannelOpenFailure::AdministrativelyProhibited,
            "nothing asked for it".into(),
        )
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Accept(_) => f.write_str("Accept"),
            Decision::Refuse(reason, why) => write!(f, "Refuse({reason:?}, {why:?})"),
        }
    }
}

/// Where a `forwarded-tcpip` channel came from and which of our forwards it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOrigin {
    /// The address the sshd listens on for us (as we asked in `tcpip-forward`).
    pub connected_address: String,
    /// The port it listens on.
    pub connected_port: u32,
    /// The peer that connected to it.
    pub originator_address: String,
    /// Its port.
    pub originator_port: u32,
}

/// Decides about channels the client's sshd opens. Every method refuses unless overridden.
///
/// Methods run inside the connection's handler: they must not block or wait; anything long-lived
/// belongs in the task that [`Decision::Accept`] starts.
pub trait Incoming: Send + Sync + 'static {
    /// A connection to a UNIX socket we asked the sshd to listen on
    /// (`forwarded-streamlocal@openssh.com`).
    fn forwarded_streamlocal(&self, socket_path: &str) -> Decision {
        let _ = socket_path;
        Decision::prohibited()
    }

    /// A connection to a TCP port we asked the sshd to listen on (`forwarded-tcpip`).
    fn forwarded_tcpip(&self, origin: &TcpOrigin) -> Decision {
        let _ = origin;
        Decision::prohibited()
    }

    /// An agent connection (`auth-agent@openssh.com`), only after we requested agent forwarding.
    fn agent(&self) -> Decision {
        Decision::prohibited()
    }
}

/// Refuses everything: for sessions that only run commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseAll;

impl Incoming for RefuseAll {}

/// One [`Incoming`] per channel kind, for a session that serves several kinds (a pull through the
/// agent method answers agent channels and, with `--via tcp`, forwarded TCP connections). A kind
/// left `None` is refused.
#[derive(Default, Clone)]
pub struct ByKind {
    /// Answers `forwarded-streamlocal@openssh.com`.
    pub streamlocal: Option<std::sync::Arc<dyn Incoming>>,
    /// Answers `forwarded-tcpip`.
    pub tcpip: Option<std::sync::Arc<dyn Incoming>>,
    /// Answers `auth-agent@openssh.com`.
    pub agent: Option<std::sync::Arc<dyn Incoming>>,
}

impl Incoming for ByKind {
    fn forwarded_streamlocal(&self, socket_path: &str) -> Decision {
        self.streamlocal
            .as_ref()
            .map_or_else(Decision::prohibited, |i| i.forwarded_streamlocal(socket_path))
    }

    fn forwarded_tcpip(&self, origin: &TcpOrigin) -> Decision {
        self.tcpip
            .as_ref()
            .map_or_else(Decision::prohibited, |i| i.forwarded_tcpip(origin))
    }

    fn agent(&self) -> Decision {
        self.agent
            .as_ref()
            .map_or_else(Decision::prohibited, |i| i.agent())
    }
}
