//! Speaking SSH, knowing nothing of borg: the connection and its login, the host key check, the
//! private key, jump hosts, remote commands, the in-process agent and the cipher choice.
//!
//! - [`session`]: connect, host key verification, public key authentication, the russh handler;
//!   [`session::Session`] is what everything else uses to talk to the client, and
//!   [`session::SessionOptions`] says where and how to log in (with OpenSSH's defaults from
//!   [`session::SshEnv`]: HOME, USER, SSH_AUTH_SOCK, the identity's passphrase).
//!
//! Nothing here imports `channels/` or `jobs/` (checked by `scripts/check-module-graph`): what
//! answers a channel plugs in through [`incoming::Incoming`].
//! - [`cipher`]: which cipher we offer (the cheaper for this CPU first, or one forced).
//! - [`jump`]: jump hosts (`ssh -J`), reached one through the other by [`session::connect`].
//! - [`incoming`]: what happens to channels the client's sshd opens (one method per kind).
//! - [`identity`]: loading the private key (with a work-around for ssh-key's short ECDSA scalars).
//! - [`known_hosts`]: OpenSSH known_hosts matching (plain, `[host]:port`, hashed, wildcards,
//!   negation, `@revoked`; not `@cert-authority`) and `accept-new` recording.
//! - [`key_agent`]: an in-process ssh-agent holding exactly one key (list and sign only; add,
//!   remove and lock refused).
//! - [`exec`]: POSIX shell quoting, helper commands, streaming a remote command's output, exit
//!   status.

pub mod cipher;
pub mod exec;
pub mod identity;
pub mod incoming;
pub mod jump;
pub mod key_agent;
pub mod known_hosts;
pub mod session;
pub(crate) mod wire;
