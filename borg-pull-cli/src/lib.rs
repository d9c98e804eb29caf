//! What both borg-pull binaries share: the exit-code table, the signal handler, the runtime and
//! logging set-up, and the hints that name command-line flags.
//!
//! The libraries (`borg_pull_core`, `borg_pull_tunnel`) know nothing of flags or exit codes: their
//! errors carry data. This crate is where a failure becomes a line on stderr and an exit code, so
//! `borg-pull-relay` and `borg-pull-server` cannot drift apart.
#![forbid(unsafe_code)]

pub mod exit;
pub mod hint;
pub mod runtime;
pub mod signals;
