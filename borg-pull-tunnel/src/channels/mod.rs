//! Forwards the server asks the client's sshd for, one module per kind. Each implements
//! [`crate::ssh::incoming::Incoming`] for the channels its forward produces and uses
//! [`crate::ssh::session::Session`] to set itself up; the session never depends on them.
//!
//! - [`unix`]: a UNIX socket in a private directory on the client
//!   (`streamlocal-forward@openssh.com`), each connection bridged to its own `borg serve`.
//! - [`agent`]: agent channels (`auth-agent@openssh.com`), each served by the run's one-key
//!   [`crate::ssh::key_agent::KeyAgent`].
//! - [`tcp`]: a TCP port on the client's loopback (`tcpip-forward`), each connection bridged to
//!   the server's sshd (the docs' `ssh -R 8022:localhost:22` method).

pub mod agent;
pub mod tcp;
pub mod unix;
