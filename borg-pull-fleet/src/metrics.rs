//! The node_exporter textfile (`[server] prometheus`): per client, the last run's and the last
//! success's figures, in the Prometheus text exposition format, replaced atomically (mode 0644)
//! so node_exporter never reads half a file.
//!
//! Every metric is a gauge with a `client` label; a client without a recorded run has no sample
//! for the run metrics (rather than a misleading 0).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::atomic_file::write_atomically;
use crate::config::Fleet;
use crate::state::{ClientState, StateStore};
use crate::status::ClientStatus;

/// A metric: name, help text, and its value for one client's state (`None`: no sample).
type Metric = (&'static str, &'static str, fn(&Inputs) -> Option<String>);

/// What one client's samples are made of.
struct Inputs<'a> {
    state: &'a ClientState,
    /// The newest archive's time from `status` (borg list), when it was read.
    newest_from_status: Option<u64>,
}

/// The metrics, in the order they are written.
const METRICS: &[Metric] = &[
    (
        "borg_pull_last_success_timestamp_seconds",
        "When the last successful run of the client ended (Unix time).",
        |i| {
            let run = i.state.last_success.as_ref()?;
            Some((run.started + run.duration_ms / 1000).to_string())
        },
    ),
    (
        "borg_pull_last_run_timestamp_seconds",
        "When the last run of the client started, successful or not (Unix time).",
        |i| Some(i.state.last_run.as_ref()?.started.to_string()),
    ),
    (
        "borg_pull_last_run_duration_seconds",
        "Wall time of the last run of the client.",
        |i| Some(seconds(i.state.last_run.as_ref()?.duration_ms)),
    ),
    (
        "borg_pull_last_run_bytes_sent",
        "Bytes the client sent to borg serve in its last run.",
        |i| Some(i.state.last_run.as_ref()?.bytes_sent.to_string()),
    ),
    (
        "borg_pull_last_run_borg_exit_code",
        "borg's exit code on the client in the last run (0 ok, 1 warning, 2 error, 128+N signal N); \
         absent when borg did not run to its end.",
        |i| Some(i.state.last_run.as_ref()?.borg_rc?.to_string()),
    ),
    (
        "borg_pull_last_run_error",
        "1 when the last run failed (a borg-pull error, or borg exited with 2 or more), else 0.",
        |i| {
            let run = i.state.last_run.as_ref()?;
            let failed = run.error.is_some() || run.borg_rc.is_some_and(|rc| rc >= 2);
            Some(u8::from(failed).to_string())
        },
    ),
    (
        "borg_pull_newest_archive_timestamp_seconds",
        "Time of the newest archive in the client's repository (Unix time): from borg list when \
         written by status, else the start of the last successful run that created an archive.",
        |i| {
            let from_state = || {
                let run = i.state.last_success.as_ref()?;
                run.archive.as_ref().map(|_| run.started)
            };
            Some(i.newest_from_status.or_else(from_state)?.to_string())
        },
    ),
];

/// Writes the textfile for every client of `fleet` from the records in `store`.
pub fn write_textfile(path: &Path, fleet: &Fleet, store: &StateStore) -> io::Result<()> {
    write_textfile_with_status(path, fleet, store, &[])
}

/// [`write_textfile`], with the newest archive times that `status` read from the repositories.
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

/// The textfile's contents (see [`write_textfile_with_status`]).
pub fn render(fleet: &Fleet, store: &StateStore, statuses: &[ClientStatus]) -> String {
    let newest: BTreeMap<&str, u64> = statuses
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.newest_time?)))
        .collect();
    let states: Vec<(&str, ClientState)> = fleet
        .clients
        .iter()
        .map(|c| (c.name.as_str(), store.load(&c.name)))
        .collect();
    let mut out = String::new();
    for (name, help, value) in METRICS {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (client, state) in &states {
            let inputs = Inputs {
                state,
                newest_from_status: newest.get(client).copied(),
            };
            if let Some(v) = value(&inputs) {
                let _ = writeln!(out, "{name}{{client=\"{}\"}} {v}", escape_label(client));
            }
        }
    }
    out
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
