//! The SSH side of borg-pull: the backup server logs in to a client with an in-process SSH client
//! (russh, no `ssh` binary), forwards a UNIX socket to the client and runs `borg create` there with
//! `BORG_RSH` pointing at `borg-pull-relay` and that socket. Every connection to the socket comes
//! back as an SSH channel and is bridged to a `borg serve` with server-fixed flags (by borg version) on
//! the server ([`borg_pull_core::serve`]).
//!
//! - [`mod@pull`]: one whole pull ([`pull::pull`] with [`pull::PullOptions`]), orchestration only.
//! - [`session`]: connect, host key verification, public key authentication, the russh handler;
//!   [`session::Session`] is what everything else uses to talk to the client.
//! - [`cipher`]: which cipher we offer (the cheaper for this CPU first, or one forced).
//! - [`jump`]: jump hosts (`ssh -J`), reached one through the other by [`session::connect`].
//! - [`incoming`]: what happens to channels the client's sshd opens (one method per kind).
//! - [`via`]: the three ways borg on the client reaches `borg serve` (socket, agent, TCP).
//! - [`remote`]: the one shell script a pull runs on the client and its reports.
//! - [`restore`]: `restore-tar`: borg export-tar here, streamed into `tar -x` on the client.
//! - [`secret`]: the repository passphrase, its sources and zeroing.
//! - [`identity`]: loading the private key (with a work-around for ssh-key's short ECDSA scalars).
//! - [`known_hosts`]: OpenSSH known_hosts matching (plain, `[host]:port`, hashed, wildcards,
//!   negation, `@revoked`; not `@cert-authority`) and `accept-new` recording.
//! - [`forward`]: one module per forward kind; [`forward::unix`] is the
//!   `streamlocal-forward@openssh.com` request, diagnosis of refusals and the bridges to `borg serve`;
//!   [`forward::agent`] serves the `auth-agent@openssh.com` channels with a [`agent::KeyAgent`].
//! - [`agent`]: an in-process ssh-agent holding exactly one key (list and sign only; add, remove
//!   and lock refused), for the pull method where borg on the client logs in to the server with
//!   the server's key through agent forwarding.
//! - [`exec`]: POSIX shell quoting, helper commands, streaming borg's output, exit status.
//! - [`authorized_keys`]: the `authorized_keys` line that forces a restricted `borg serve` for one
//!   key (quoted for sshd and the login shell), installed idempotently under a lock, and ephemeral
//!   entries removed after their pull (or by the next one when their process is gone).
//! - [`limits`]: windows, keepalives and timeouts, with the reasons for their values.
//! - [`error`]: the one error type.
//!
//! ```no_run
//! # async fn run() -> borg_pull_tunnel::Result<i32> {
//! use borg_pull_tunnel::pull::{pull, PullOptions};
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

pub mod agent;
pub mod authorized_keys;
pub mod cipher;
pub mod error;
pub mod exec;
pub mod forward;
pub mod identity;
pub mod incoming;
pub mod jump;
pub mod known_hosts;
pub mod limits;
mod login;
pub mod pull;
pub mod remote;
pub mod restore;
pub mod secret;
pub mod secret_file;
pub mod session;
pub mod via;
mod wire;

pub use error::{Error, ForwardDenial, RemoteProgram, Result, SecretKind};
pub use pull::{pull, PullEnv, PullOptions};
