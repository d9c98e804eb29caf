//! What answers the channels the client's sshd opens to us: one forward per kind, each named
//! `<Kind>Forward` and used the same way.
//!
//! - [`unix::UnixForward`]: a UNIX socket in a private directory on the client
//!   (`streamlocal-forward@openssh.com`), each connection bridged to its own `borg serve`.
//! - [`tcp::TcpForward`]: a TCP port on the client's loopback (`tcpip-forward`), each connection
//!   bridged to the server's sshd (the docs' `ssh -R 8022:localhost:22` method).
//! - [`agent::AgentForward`]: agent channels (`auth-agent@openssh.com`), each served by the run's
//!   one-key [`crate::ssh::key_agent::KeyAgent`].
//!
//! The one API: `KindForward::new(..) -> Arc<Self>` (what serves its channels), handed to
//! [`crate::ssh::session::connect`] as the [`Incoming`] for its kind (through
//! [`crate::ssh::incoming::ByKind`]); then the client's sshd is asked to open such channels
//! (`UnixForward::listen`, `TcpForward::listen`; agent forwarding is asked with the command,
//! `Session::exec_forwarding_agent`); at the end [`Forward::drain`] or [`Forward::stop`]. Every
//! forward admits a bounded number of channels at once and per run (refused beyond, never
//! queued), serves each in a task it owns and that always drains the channel, and counts them
//! in [`ForwardStats`].
//!
//! To add a fourth kind: a file here with `FooForward` implementing the one [`Incoming`] method
//! of its channel kind (add the method and a [`crate::ssh::incoming::ByKind`] field in `ssh/` if
//! the kind is new) and [`Forward`]; its limits in `limits.rs`; the job that needs it builds it.
//! Nothing in `ssh/` may name it: imports run jobs → channels → ssh → local
//! (`scripts/check-module-graph`).

use std::time::Duration;

use crate::ssh::incoming::Incoming;

pub mod agent;
pub mod tcp;
pub mod unix;

/// Totals over all channels of one forward during a run (`to_serve`/`from_serve`: bytes to and
/// from what the channels are bridged to).
pub type ForwardStats = borg_pull_core::supervise::SupervisorStats;

/// What the job that owns a forward does with it besides answering channels.
#[allow(async_fn_in_trait)] // Called on concrete types only; no `Send` bound needed.
pub trait Forward: Incoming {
    /// Totals so far.
    fn stats(&self) -> ForwardStats;

    /// Lets every channel's task finish on its own for up to `grace`, then stops the rest.
    async fn drain(&self, grace: Duration) -> ForwardStats;

    /// Stops every channel's task now and waits for them; later channels are refused.
    async fn stop(&self) -> ForwardStats;
}
