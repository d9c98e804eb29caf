//! The SSH side of borg-pull: the backup server logs in to a client with an in-process SSH client
//! (russh, no `ssh` binary), forwards a UNIX socket to the client and runs `borg create` there with
//! `BORG_RSH` pointing at `borg-pull-relay` and that socket. Every connection to the socket comes
//! back as an SSH channel and is bridged to a `borg serve` with server-fixed flags (by borg version) on
//! the server ([`borg_pull_core::serve`]).
//!
//! Where a thing goes (imports run one way: jobs → channels → ssh → local, with [`error`] and
//! [`limits`] underneath everything):
//! - speaks SSH and knows nothing of borg → [`ssh`] (connection, login, identity, known hosts,
//!   jump hosts, remote commands, the in-process agent, the cipher choice);
//! - answers a channel that the client's sshd opens → `channels` (crate-private: `UnixForward`,
//!   `TcpForward`, `AgentForward`, one API; a job builds the ones it needs);
//! - a borg job carried out over one SSH session → [`jobs`] (pull, restore-tar);
//! - reads or edits a file on this server → [`local`] (authorized_keys, secret files, the one
//!   secret type, the passphrase).
//!
//! `scripts/check-module-graph` (in the test command) fails on an import against that direction
//! and on any module cycle.
//!
//! ```no_run
//! # async fn run() -> borg_pull_tunnel::Result<i32> {
//! use borg_pull_tunnel::jobs::pull::{pull, PullOptions};
//! let mut options = PullOptions::from_env(
//!     "backup@client.example",
//!     "/srv/borg/client",
//!     vec!["create".into(), "--stats".into(), "::{hostname}-{now}".into(), "/etc".into()],
//! )?;
//! options.session.port = 2222;
//! let code = pull(options).await?; // borg's own exit code
//! # Ok(code) }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub(crate) mod channels;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod local;
pub mod ssh;

pub use error::{Error, ForwardDenial, RemoteProgram, Result, SecretKind};
pub use jobs::pull::{pull, PullEnv, PullOptions};
