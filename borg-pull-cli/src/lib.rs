//! What both borg-pull binaries share: the exit-code table, the signal handler, the runtime and
//! logging set-up, and the hints that name command-line flags.
//!
//! The libraries (`borg_pull_core`, `borg_pull_tunnel`) return errors that carry data; this crate
//! is where a failure becomes a line on stderr (with a hint naming the flag that fixes it) and an
//! exit code, once for both `borg-pull-relay` and `borg-pull-server`, so they cannot drift apart.
#![forbid(unsafe_code)]

pub mod exit;
pub mod hint;
pub mod notify;
pub mod relay_args;
pub mod runtime;
pub mod signals;
