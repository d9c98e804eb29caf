//! The integration tests of borg-pull-tunnel, one binary: a module per former test file, and
//! `hostile`, the in-process hostile sshd that hostile_peer and penalties drive;
//! `cargo test -p borg-pull-tunnel --test it -- MODULE::` runs one.

mod agent;
mod fuzz_known_hosts;
mod hostile;
mod hostile_peer;
mod penalties;
