//! The integration tests of borg-pull-core, one binary: a module per former test file;
//! `cargo test -p borg-pull-core --test it -- MODULE::` runs one.

mod fuzz_rsh;
mod listen_serve;
mod local_borg;
mod relay;
mod serve_env;
mod supervise;
