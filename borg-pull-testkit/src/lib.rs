//! What borg-pull's integration tests share; a dev-dependency only, never published.
//!
//! - [`TestCommand`]: the one way tests run a program: its own process group, a deadline, a
//!   readable report on failure; [`Spawned`] is one running in the background.
//! - [`TestDir`]: a private temp dir with its own HOME and BORG_BASE_DIR, so borg's caches and
//!   security dirs never collide and tests run in parallel.
//! - [`sshd::Sshd`]: a private OpenSSH sshd on 127.0.0.1 with its own config, keys and log.
//! - [`PullFixture`]: that sshd as the client, a repository and borg state for both ends, and
//!   `borg-pull-server pull` pointed at them.
//! - [`server_bin`], [`relay_bin`]: our binaries as cargo built them.
//! - [`fuzz::Fuzzer`]: proptest fuzzing with a hang watchdog and kept regressions.
//! - [`require_tool`] and friends: a missing dependency skips a test, or fails it under
//!   `BORG_PULL_REQUIRE_DEPS=1`.
//! - [`wait_until`]: poll a condition with a deadline; tests never sleep a fixed time.
//! - [`procs`]: what is left running, read from /proc.

mod bins;
mod command;
mod deps;
mod dir;
pub mod fuzz;
pub mod procs;
mod pull;
pub mod sshd;

pub use bins::{reachable_relay, relay_bin, server_bin};
pub use command::{assert_ok, output, wait_until, Outcome, Spawned, TestCommand, COMMAND_DEADLINE, DEADLINE};
pub use deps::{
    borg14, borg2, deps_required, find_on_path, missing, require_tool, trixie_root, BORG14_DEFAULT,
    BORG2_DEFAULT, TRIXIE_ROOT_DEFAULT,
};
pub use dir::TestDir;
pub use procs::{
    assert_no_process_mentions, children_of, descendants, pending_connections, process_exists,
    processes_mentioning,
};
pub use pull::PullFixture;
