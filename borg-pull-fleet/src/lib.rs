//! borg-pull for a fleet: many clients from one TOML config, pulled N at a time by one process,
//! with retention, checks and status handled on the server (which owns the repositories; the
//! clients' `borg serve` stays append-only).
//!
//! - [`config`]: the config file (`[defaults]` + `[[client]]`), validated with file, line and key
//!   in every error; `~/.ssh/config` aliases.
//! - [`run`]: pulling the clients N at a time, output prefixed per client, the summary.
//! - [`retention`]: `prune`, `compact` and `check` on the server after a successful create.
//! - [`state`]: the last run's result per client, kept on the server.
//! - [`status`]: newest archive and its age per client, read from the repositories only.
//! - [`metrics`]: the node_exporter textfile (written atomically).
//! - [`progress`]: borg's progress lines in logs, the live display on a terminal, readable sizes.
//! - [`check`]: what `check-config --connect` judges here: the repository opens with its
//!   passphrase; a relay's version.
//! - [`notify`]: `[notify]`: webhook, ntfy, Healthchecks pings and mail on failure, recovery,
//!   overdue or every run; never blocking or failing a backup.
//! - [`schedule`]: when a client is due (`every`, window, blackout, retry back-off) and its
//!   health (ok, due, failing, overdue), for `run --due`, `status` and the metrics.
//! - [`limits`]: the time limits of the borg runs on this server, with their reasons.
//! - [`history`]: every run of every client, bounded, for `status --history` and the page.
//! - [`page`]: the self-contained HTML status page (`status --html`, `[server] html`).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod atomic_file;
pub mod check;
pub mod config;
pub mod history;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod progress;
pub mod retention;
pub mod run;
pub mod schedule;
mod server_borg;
pub mod state;
pub mod status;
pub mod time_text;
