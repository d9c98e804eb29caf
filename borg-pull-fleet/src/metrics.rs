//! The node_exporter textfile (`[server] prometheus`): per client, the last run's and the last
//! success's figures, the retention steps' results and the repository's size, in the Prometheus
//! text exposition format, replaced atomically (mode 0644) so node_exporter never reads half a
//! file.
//!
//! Every metric is a gauge with a `client` label (the retention metrics also a `step` label).
//! Every configured client has `borg_pull_client_configured 1` and a
//! `borg_pull_last_success_timestamp_seconds`, 0 when it never succeeded, so the alert
//! `time() - borg_pull_last_success_timestamp_seconds > 36*3600` fires for a client that never
//! backed up too, without `absent()`. The other metrics have no sample when there is nothing to
//! tell (no run recorded, a step never ran, the repository could not be read), rather than a
//! misleading 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::atomic_file::write_atomically;
use crate::config::Fleet;
use crate::schedule::{standing, Health, Standing};
use crate::state::{ClientState, StateStore};
use crate::status::{ClientStatus, RepoSize};
use crate::time_text::unix_now;

/// One sample of a metric for one client: the `step` label when it has one, and the value.
type Sample = (Option<&'static str>, String);

/// A metric: name, help text, and its samples for one client.
type Metric = (&'static str, &'static str, fn(&Inputs) -> Vec<Sample>);

/// What one client's samples are made of.
struct Inputs<'a> {
    state: &'a ClientState,
    /// What `status` read from the repository, when it was read.
    status: Option<&'a ClientStatus>,
}

impl Inputs<'_> {
    /// The retention steps with a result: (step, when, succeeded, borg's exit code).
    fn steps(&self) -> Vec<(&'static str, u64, bool, Option<i32>)> {
        let results = self.state.retention_results();
        results
            .steps()
            .map(|(step, r)| (step, r.at, r.succeeded, r.rc))
            .collect()
    }

    fn size(&self, field: fn(&RepoSize) -> Option<u64>) -> Vec<Sample> {
        let size = self.status.and_then(|s| s.repository_size.as_ref());
        one(size.and_then(field).map(|v| v.to_string()))
    }
}

/// At most one sample, without a step label.
fn one(value: Option<String>) -> Vec<Sample> {
    value.map(|v| (None, v)).into_iter().collect()
}

/// The metrics, in the order they are written.
const METRICS: &[Metric] = &[
    (
        "borg_pull_client_configured",
        "1 for every client in the config, whatever its state.",
        |_| one(Some("1".to_owned())),
    ),
    (
        "borg_pull_last_success_timestamp_seconds",
        "When the last successful run of the client ended (Unix time); 0 when it never succeeded.",
        |i| {
            let end = i
                .state
                .last_success
                .as_ref()
                .map(|r| r.started + r.duration_ms / 1000);
            one(Some(end.unwrap_or(0).to_string()))
        },
    ),
    (
        "borg_pull_last_run_timestamp_seconds",
        "When the last run of the client started, successful or not (Unix time).",
        |i| one(i.state.last_run.as_ref().map(|r| r.started.to_string())),
    ),
    (
        "borg_pull_last_run_duration_seconds",
        "Wall time of the last run of the client.",
        |i| one(i.state.last_run.as_ref().map(|r| seconds(r.duration_ms))),
    ),
    (
        "borg_pull_last_run_bytes_sent",
        "Bytes the client sent to borg serve in its last run.",
        |i| one(i.state.last_run.as_ref().map(|r| r.bytes_sent.to_string())),
    ),
    (
        "borg_pull_last_run_borg_exit_code",
        "borg's exit code on the client in the last run (0 ok, 1 warning, 2 error, 128+N signal N); \
         absent when borg did not run to its end.",
        |i| {
            one(i
                .state
                .last_run
                .as_ref()
                .and_then(|r| r.borg_rc)
                .map(|rc| rc.to_string()))
        },
    ),
    (
        "borg_pull_last_run_error",
        "1 when the last run failed (a borg-pull error, or borg exited with 2 or more), else 0.",
        |i| {
            one(i.state.last_run.as_ref().map(|run| {
                let failed = run.error.is_some() || run.borg_rc.is_some_and(|rc| rc >= 2);
                u8::from(failed).to_string()
            }))
        },
    ),
    (
        "borg_pull_newest_archive_timestamp_seconds",
        "Time of the newest archive in the client's repository (Unix time): from borg list when \
         the repository was read, else the start of the last successful run that created an \
         archive.",
        |i| {
            let from_state = || {
                let run = i.state.last_success.as_ref()?;
                run.archive.as_ref().map(|_| run.started)
            };
            let from_status = i.status.and_then(|s| s.newest_time);
            one(from_status.or_else(from_state).map(|t| t.to_string()))
        },
    ),
    (
        "borg_pull_retention_last_timestamp_seconds",
        "When the client's last prune, compact or check (label step) on this server was recorded, \
         as the run's retention ended (Unix time).",
        |i| {
            i.steps()
                .into_iter()
                .map(|(step, at, _, _)| (Some(step), at.to_string()))
                .collect()
        },
    ),
    (
        "borg_pull_retention_last_success",
        "1 when the client's last prune, compact or check (label step) succeeded (borg 0 or 1), 0 \
         when it failed, timed out or could not be started.",
        |i| {
            let samples = i.steps().into_iter();
            samples
                .map(|(step, _, ok, _)| (Some(step), u8::from(ok).to_string()))
                .collect()
        },
    ),
    (
        "borg_pull_retention_last_exit_code",
        "borg's exit code of the client's last prune, compact or check (label step) on this \
         server (128+N signal N, 143 when its time limit stopped it); absent when borg could not \
         be started.",
        |i| {
            let samples = i.steps().into_iter();
            samples
                .filter_map(|(step, _, _, rc)| Some((Some(step), rc?.to_string())))
                .collect()
        },
    ),
    (
        "borg_pull_repository_unique_csize_bytes",
        "What the client's repository holds: deduplicated and compressed, archive metadata \
         included (borg info's unique_csize); absent when it could not be read. After run, the \
         sizes of a client it did not pull come from the last reading, up to a day old.",
        |i| i.size(|s| s.unique_csize),
    ),
    (
        "borg_pull_repository_unique_size_bytes",
        "The client's repository deduplicated, before compression (borg info's unique_size).",
        |i| i.size(|s| s.unique_size),
    ),
    (
        "borg_pull_repository_total_csize_bytes",
        "The files of every archive of the client's repository compressed, added up as if \
         nothing were shared (borg info's total_csize).",
        |i| i.size(|s| s.total_csize),
    ),
    (
        "borg_pull_repository_total_size_bytes",
        "The files of every archive of the client's repository at their original size, added \
         up (borg info's total_size).",
        |i| i.size(|s| s.total_size),
    ),
];

/// Writes the textfile for every client of `fleet` from the records in `store` alone (no
/// repository is read: no newest archive from borg list, no size).
pub fn write_textfile(path: &Path, fleet: &Fleet, store: &StateStore) -> io::Result<()> {
    write_textfile_with_status(path, fleet, store, &[])
}

/// [`write_textfile`], with what `status` read from the repositories (newest archive, size).
pub fn write_textfile_with_status(
    path: &Path,
    fleet: &Fleet,
    store: &StateStore,
    statuses: &[ClientStatus],
) -> io::Result<()> {
    let text = render(fleet, store, statuses);
    write_atomically(path, 0o644, text.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// The textfile with every repository read as `status` reads it (and each reading stored), unless
/// `cancel` fires: then at once from the records alone, as is a part not read by then. `run`
/// reads less: [`write_textfile_after_pulls`].
pub async fn write_textfile_after_run(
    path: &Path,
    fleet: &Fleet,
    store: &StateStore,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let statuses = if cancel.is_cancelled() {
        Vec::new()
    } else {
        tokio::select! {
            statuses = crate::status::status(fleet, store) => statuses,
            () = cancel.cancelled() => Vec::new(),
        }
    };
    write_textfile_with_status(path, fleet, store, &statuses)
}

/// The textfile at the end of `run` that pulled the clients named in `pulled`: only their
/// repositories are read, and those without a current stored reading
/// ([`crate::status::reading_due`]); every other client's newest archive and sizes come from its
/// stored reading (ages from now). Interrupted: at once, from the records and the current stored
/// readings of the clients not pulled; the pulled ones' readings are dropped, so the next run
/// reads their repositories.
pub async fn write_textfile_after_pulls(
    path: &Path,
    fleet: &Fleet,
    store: &StateStore,
    pulled: &[&str],
    cancel: &CancellationToken,
) -> io::Result<()> {
    let limits = crate::limits::BorgLimits::default();
    let stored = || {
        for name in pulled {
            if let Err(e) = store.forget_reading(name) {
                tracing::warn!(client = %name, "cannot drop the stored repository reading: {e}");
            }
        }
        crate::status::stored_statuses(fleet, store, pulled)
    };
    let statuses = if cancel.is_cancelled() {
        stored()
    } else {
        tokio::select! {
            statuses = crate::status::status_after_run(fleet, store, pulled, &limits) => statuses,
            () = cancel.cancelled() => stored(),
        }
    };
    write_textfile_with_status(path, fleet, store, &statuses)
}

/// The textfile's contents (see [`write_textfile_with_status`]).
pub fn render(fleet: &Fleet, store: &StateStore, statuses: &[ClientStatus]) -> String {
    let read: BTreeMap<&str, &ClientStatus> = statuses.iter().map(|s| (s.name.as_str(), s)).collect();
    let states: Vec<(&str, ClientState)> = fleet
        .clients
        .iter()
        .map(|c| (c.name.as_str(), store.load(&c.name)))
        .collect();
    let mut out = String::new();
    for (name, help, samples) in METRICS {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (client, state) in &states {
            let inputs = Inputs {
                state,
                status: read.get(client).copied(),
            };
            for (step, value) in samples(&inputs) {
                let step = step.map(|s| format!(",step=\"{s}\"")).unwrap_or_default();
                let _ = writeln!(out, "{name}{{client=\"{}\"{step}}} {value}", escape_label(client));
            }
        }
    }
    render_standing(&mut out, fleet, &states, unix_now());
    out
}

/// The schedule's metrics of every client: its health one-hot (label `state`), when it is due
/// next, its failures in a row, from [`crate::schedule::standing`] at `now`.
fn render_standing(out: &mut String, fleet: &Fleet, states: &[(&str, ClientState)], now: u64) {
    let standings: Vec<(&str, Standing)> = fleet
        .clients
        .iter()
        .zip(states)
        .map(|(client, (name, state))| (*name, standing(client, state, now)))
        .collect();
    let mut metric = |name: &str, help: &str, samples: &dyn Fn(&Standing) -> Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (client, standing) in &standings {
            for (labels, value) in samples(standing) {
                let _ = writeln!(
                    out,
                    "{name}{{client=\"{}\"{labels}}} {value}",
                    escape_label(client)
                );
            }
        }
    };
    metric(
        "borg_pull_client_health",
        "1 for the client's state (label state): ok (backed up within its every), due (not within \
         every), failing (its last attempt failed), overdue (no success within max_age); 0 for the \
         others.",
        &|s| {
            Health::ALL
                .iter()
                .map(|h| (format!(",state=\"{h}\""), u8::from(*h == s.health).to_string()))
                .collect()
        },
    );
    metric(
        "borg_pull_client_next_due_timestamp_seconds",
        "When run --due pulls the client next (Unix time; its every, window, blackout and retry \
         back-off); the time of writing when it is due now.",
        &|s| vec![(String::new(), s.next_due.unwrap_or(now).to_string())],
    );
    metric(
        "borg_pull_client_failures_in_a_row",
        "Failed attempts of the client since its last success (unreachable ones included).",
        &|s| vec![(String::new(), s.failures_in_a_row.to_string())],
    );
}

/// Milliseconds as decimal seconds (`12.345`).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A label value in the exposition format: `\`, `"` and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A HELP text in the exposition format: `\` and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_the_exposition_format_says() {
        assert_eq!(escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        assert_eq!(escape_help("x\\y\nz\""), r#"x\\y\nz""#);
        assert_eq!(seconds(12_345), "12.345");
        assert_eq!(seconds(7), "0.007");
    }
}
