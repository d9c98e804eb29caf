//! The integration tests of borg-pull-fleet, one binary: a module per former test file, and
//! `common`, what retention and status share; `cargo test -p borg-pull-fleet --test it -- MODULE::`
//! runs one.

mod common;
mod example_config;
mod retention;
mod status;
