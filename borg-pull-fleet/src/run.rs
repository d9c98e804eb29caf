//! `run`: pulls the clients of a [`Fleet`] at most `jobs` at a time in this one process, each
//! client's borg output prefixed with its name, then a summary.
//!
//! - Every pull is a tokio task owned by one `JoinSet`; [`run`] returns only when all have ended,
//!   so nothing keeps running behind the caller.
//! - One client's failure never stops the others: each ends in its own [`ClientResult`].
//! - Cancelling the token (Ctrl-C) ends the clients still waiting for their turn at once and
//!   stops the running ones the way `pull` stops on Ctrl-C (borg on the client gets SIGINT and a
//!   grace period; then everything is cleaned up).
//! - Output is line-buffered per client and written one whole line at a time, so lines of two
//!   clients never mix; a line longer than [`MAX_LINE`] is cut (borg's progress output without
//!   newlines cannot grow our memory). The write itself is a blocking write under a lock: a reader
//!   of our stdout that stalls holds the clients back (backpressure instead of an unbounded
//!   buffer), and may stall a runtime worker while it does.
//! - After a successful `create` (borg rc 0 or 1) retention runs on the server
//!   ([`crate::retention`]); the result is recorded ([`crate::state`]) and the metrics file
//!   rewritten ([`crate::metrics`]) when `[server] prometheus` is set.
//!
//! The exit status of a whole run is [`worst_code`]: any borg-pull error (our codes, 200 and up;
//! the highest of them when several clients failed) beats borg's codes, and among borg's a higher
//! code is worse (2 error > 1 warning > 0 success; modern codes and 128+N signals are above 2).

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borg_pull_tunnel::pull::{pull_with_output, PullEnv};
use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Client, Fleet};
use crate::metrics::write_textfile_after_run;
use crate::retention::after_create;
use crate::state::StateStore;
use crate::state::{ClientState, RunRecord};

/// The longest output line passed on whole; longer lines are cut there and marked. borg's own
/// lines are short; this bounds what a client printing without newlines can make us hold.
pub const MAX_LINE: usize = 64 * 1024;

/// The code of a pull task that panicked: borg-pull's "any other failure" (`exit::FAILURE` of
/// borg-pull-cli).
const INTERNAL_FAILURE: u8 = 201;

/// Maps a pull error to borg-pull's exit code and the message to show (the binary owns both:
/// the code table and the hints naming the fix).
pub type ErrorMapper = fn(&borg_pull_tunnel::Error) -> (u8, String);

/// Where the prefixed output lines of all clients go: borg's stdout lines to `out`, its stderr
/// lines to `err`. Each line is written with one `write_all` under a lock.
#[derive(Clone)]
pub struct OutputSink {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    err: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSink")
    }
}

impl OutputSink {
    /// Lines to the given writers.
    pub fn new(out: Box<dyn Write + Send>, err: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            err: Arc::new(Mutex::new(err)),
        }
    }

    /// Lines to this process's stdout and stderr.
    pub fn stdio() -> Self {
        Self::new(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    }

    fn write_line(&self, stderr: bool, line: &[u8]) {
        let target = if stderr { &self.err } else { &self.out };
        let mut w = target.lock().unwrap_or_else(|p| p.into_inner());
        // A closed stdout (`run | head`) is not a reason to stop backing up.
        let _ = w.write_all(line).and_then(|()| w.flush());
    }
}

/// One client's borg output stream: whole lines prefixed `NAME: ` into the sink; also notes
/// borg's `Archive name:` line (`create --stats`).
struct PrefixWriter {
    prefix: Vec<u8>,
    sink: OutputSink,
    stderr: bool,
    line: Vec<u8>,
    /// The rest of a cut line is being dropped.
    skipping: bool,
    archive: Option<String>,
}

impl PrefixWriter {
    fn new(name: &str, sink: OutputSink, stderr: bool) -> Self {
        Self {
            prefix: format!("{name}: ").into_bytes(),
            sink,
            stderr,
            line: Vec::new(),
            skipping: false,
            archive: None,
        }
    }

    fn emit(&mut self, cut: bool) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(name) = text.trim_end_matches(['\r', '\n']).strip_prefix("Archive name: ") {
            self.archive = Some(name.trim().to_owned());
        }
        let mut out = Vec::with_capacity(self.prefix.len() + self.line.len() + 40);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.line);
        if cut {
            out.extend_from_slice(b" [line cut at 64 KiB]\n");
        } else if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        self.sink.write_line(self.stderr, &out);
        self.line.clear();
    }

    fn push(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let newline = buf.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends) = match newline {
                Some(at) => (&buf[..=at], &buf[at + 1..], true),
                None => (buf, &[][..], false),
            };
            buf = rest;
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            let room = MAX_LINE - self.line.len();
            if chunk.len() > room {
                self.line.extend_from_slice(&chunk[..room]);
                self.emit(true);
                self.skipping = !ends;
                continue;
            }
            self.line.extend_from_slice(chunk);
            if ends {
                self.emit(false);
            }
        }
    }

    /// Writes what is left of an unfinished last line.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit(false);
        }
    }
}

impl AsyncWrite for PrefixWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Partial lines stay buffered: flushing them would interleave with other clients.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

/// How one client's pull ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResult {
    /// The client's name.
    pub name: String,
    /// The archive: borg's `Archive name:` line (`create --stats`), else the `::NAME` argument
    /// as written (placeholders unexpanded).
    pub archive: Option<String>,
    /// When its pull started (or was given up, if it never started).
    pub started: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Bytes the client sent to `borg serve`.
    pub bytes_sent: u64,
    /// borg's exit code on the client, if borg ran to the end.
    pub borg_rc: Option<i32>,
    /// borg-pull's own failure: exit code (200 and up) and message.
    pub error: Option<(u8, String)>,
    /// What failed of prune, compact and check on the server after a successful create.
    pub retention_errors: Vec<String>,
}

impl ClientResult {
    /// The exit code this result alone would give: ours, else borg's.
    /// A failed prune, compact or check after a successful create counts as "any other
    /// failure" (201): the backup is there, but the repository needs an operator.
    pub fn code(&self) -> u8 {
        match (&self.error, self.borg_rc) {
            (Some((code, _)), _) => *code,
            (None, Some(0 | 1)) if !self.retention_errors.is_empty() => INTERNAL_FAILURE,
            (None, Some(rc)) => u8::try_from(rc).unwrap_or(255),
            (None, None) => 0,
        }
    }
}

impl serde::Serialize for ClientResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            client: &'a str,
            archive: Option<&'a str>,
            /// Unix seconds.
            started: u64,
            duration_secs: f64,
            bytes_sent: u64,
            borg_rc: Option<i32>,
            error: Option<crate::state::ErrorJson<'a>>,
            retention_errors: &'a [String],
        }
        Json {
            client: &self.name,
            archive: self.archive.as_deref(),
            started: unix_secs(self.started),
            duration_secs: self.duration.as_secs_f64(),
            bytes_sent: self.bytes_sent,
            borg_rc: self.borg_rc,
            error: self.error.as_ref().map(Into::into),
            retention_errors: &self.retention_errors,
        }
        .serialize(s)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The exit status of a run: any borg-pull error beats borg's codes (the highest of ours when
/// several clients failed), then the highest borg code (2 error > 1 warning > 0). 0 for no
/// clients.
pub fn worst_code(results: &[ClientResult]) -> u8 {
    let ours = results.iter().filter_map(|r| r.error.as_ref().map(|e| e.0)).max();
    ours.unwrap_or_else(|| results.iter().map(ClientResult::code).max().unwrap_or(0))
}

/// The clients named (all when `names` is empty), in config order; an unknown name is an error
/// naming it.
pub fn select<'a>(fleet: &'a Fleet, names: &[String]) -> Result<Vec<&'a Client>, String> {
    if let Some(unknown) = names
        .iter()
        .find(|n| !fleet.clients.iter().any(|c| &c.name == *n))
    {
        return Err(format!("no client {unknown:?} in {}", fleet.path.display()));
    }
    Ok(fleet
        .clients
        .iter()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .collect())
}

/// The archive named in borg's arguments: the `::NAME` or `REPO::NAME` argument, as written.
fn archive_in_args(args: &[String]) -> Option<String> {
    args.iter()
        .skip(1)
        .filter(|a| !a.starts_with('-') || a.starts_with("::"))
        .find_map(|a| a.split_once("::").map(|(_, name)| name.to_owned()))
        .filter(|n| !n.is_empty())
}

/// Pulls the clients named in `names` (all when empty; unknown names are skipped, see
/// [`select`]) at most `jobs` at a time. Returns one result per client in config order once
/// every pull has ended. `classify` maps a pull error to our exit code and message.
pub async fn run(
    fleet: &Fleet,
    names: &[String],
    jobs: usize,
    env: &PullEnv,
    classify: ErrorMapper,
    cancel: CancellationToken,
    out: OutputSink,
) -> Vec<ClientResult> {
    let clients: Vec<Client> = fleet
        .clients
        .iter()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .cloned()
        .collect();
    let store = match StateStore::open(&fleet.server.state_dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            warn!(dir = %fleet.server.state_dir.display(), "cannot open the state directory, results are not recorded: {e}");
            None
        }
    };
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    let mut names_by_task = std::collections::HashMap::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let job = Job {
            client,
            server: fleet.server.clone(),
            env: env.clone(),
            classify,
            cancel: cancel.child_token(),
            out: out.clone(),
            store: store.clone(),
        };
        let permits = permits.clone();
        let handle = tasks.spawn(async move {
            let started = SystemTime::now();
            let permit = tokio::select! {
                biased;
                () = job.cancel.cancelled() => return (index, job.not_started(started)),
                p = permits.acquire_owned() => p,
            };
            if job.cancel.is_cancelled() {
                return (index, job.not_started(started));
            }
            let result = job.pull().await;
            drop(permit);
            (index, result)
        });
        names_by_task.insert(handle.id(), (index, clients[index].name.clone()));
    }
    let mut results: Vec<Option<ClientResult>> = vec![None; clients.len()];
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, (index, result))) => results[index] = Some(result),
            Err(e) => {
                let Some((index, name)) = names_by_task.get(&e.id()).cloned() else {
                    continue;
                };
                results[index] = Some(ClientResult {
                    name,
                    archive: None,
                    started: SystemTime::now(),
                    duration: Duration::ZERO,
                    bytes_sent: 0,
                    borg_rc: None,
                    error: Some((
                        INTERNAL_FAILURE,
                        format!("internal error: the pull task ended abnormally: {e}"),
                    )),
                    retention_errors: Vec::new(),
                });
            }
        }
    }
    if let (Some(path), Some(store)) = (&fleet.server.prometheus, &store) {
        if let Err(e) = write_textfile_after_run(path, fleet, store, &cancel).await {
            warn!(file = %path.display(), "cannot write the metrics file: {e}");
        }
    }
    results.into_iter().flatten().collect()
}

/// One client's pull, owned by its task.
struct Job {
    client: Client,
    server: crate::config::ServerSettings,
    env: PullEnv,
    classify: ErrorMapper,
    cancel: CancellationToken,
    out: OutputSink,
    store: Option<Arc<StateStore>>,
}

impl Job {
    fn not_started(&self, started: SystemTime) -> ClientResult {
        let (code, message) = (self.classify)(&borg_pull_tunnel::Error::Interrupted);
        ClientResult {
            name: self.client.name.clone(),
            archive: None,
            started,
            duration: Duration::ZERO,
            bytes_sent: 0,
            borg_rc: None,
            error: Some((code, format!("not started: {message}"))),
            retention_errors: Vec::new(),
        }
    }

    async fn pull(&self) -> ClientResult {
        let name = &self.client.name;
        let started = SystemTime::now();
        let t0 = Instant::now();
        let mut stdout = PrefixWriter::new(name, self.out.clone(), false);
        let mut stderr = PrefixWriter::new(name, self.out.clone(), true);
        info!(client = %name, "pull starting");
        let outcome = match self
            .client
            .pull_options(&self.server, &self.env, self.cancel.clone())
            .await
        {
            Ok(options) => pull_with_output(options, &mut stdout, &mut stderr).await,
            Err(e) => Err(e),
        };
        stdout.finish();
        stderr.finish();
        // borg's own line if it printed one; else the argument, but only if borg ran at all.
        let archive = stdout.archive.take().or(stderr.archive.take()).or_else(|| {
            outcome
                .is_ok()
                .then(|| archive_in_args(&self.client.args))
                .flatten()
        });
        let mut result = ClientResult {
            name: name.clone(),
            archive,
            started,
            duration: t0.elapsed(),
            bytes_sent: 0,
            borg_rc: None,
            error: None,
            retention_errors: Vec::new(),
        };
        match outcome {
            Ok(outcome) => {
                result.bytes_sent = outcome.forwarded.to_serve;
                result.borg_rc = Some(outcome.exit.code());
            }
            Err(e) => result.error = Some((self.classify)(&e)),
        }
        info!(client = %name, rc = ?result.borg_rc, error = ?result.error.as_ref().map(|e| e.0), "pull finished");
        result.retention_errors = self.record(&result).await;
        result
    }

    /// Retention after a successful create, and the state file.
    async fn record(&self, result: &ClientResult) -> Vec<String> {
        let name = &self.client.name;
        let mut state = match &self.store {
            Some(store) => store.load(name),
            None => ClientState::default(),
        };
        let record = RunRecord {
            started: unix_secs(result.started),
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            archive: result.archive.clone(),
            bytes_sent: result.bytes_sent,
            borg_rc: result.borg_rc,
            error: result.error.clone(),
        };
        let succeeded = result.error.is_none() && matches!(result.borg_rc, Some(0 | 1));
        if succeeded {
            state.last_success = Some(record.clone());
        }
        state.last_run = Some(record);
        // borg's subcommand: its first argument that is not an option.
        let created = self
            .client
            .args
            .iter()
            .find(|a| !a.starts_with('-'))
            .map(String::as_str)
            == Some("create");
        let mut retention_errors = Vec::new();
        if succeeded && created && !self.cancel.is_cancelled() {
            // Ctrl-C must not wait for a long check: dropping the retention future kills its
            // borg's process group (borg rolls the transaction back on the next access).
            let retention = tokio::select! {
                outcome = after_create(&self.client, &self.server, &mut state) => Some(outcome),
                () = self.cancel.cancelled() => None,
            };
            match retention {
                Some(outcome) => {
                    state.record_retention(&outcome, crate::retention::unix_now());
                    info!(client = %name, pruned = ?outcome.pruned, compacted = ?outcome.compacted, checked = ?outcome.checked, "retention done");
                    for e in &outcome.errors {
                        warn!(client = %name, "retention: {e}");
                    }
                    retention_errors = outcome.errors;
                }
                None => {
                    warn!(client = %name, "retention stopped: interrupted");
                    retention_errors.push("stopped: interrupted by SIGINT/SIGTERM".into());
                }
            }
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.save(name, &state) {
                warn!(client = %name, "cannot record the result: {e}");
            }
        }
        retention_errors
    }
}

/// The summary: one row per client (client, archive, start in UTC, duration, bytes sent, borg's
/// rc, our error).
pub fn summary_table(results: &[ClientResult]) -> String {
    let header = [
        "client",
        "archive",
        "start (UTC)",
        "duration",
        "bytes sent",
        "borg rc",
        "error",
    ];
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.archive.clone().unwrap_or_else(|| "-".into()),
                utc(r.started),
                format_duration(r.duration),
                r.bytes_sent.to_string(),
                r.borg_rc.map_or_else(|| "-".into(), |rc| rc.to_string()),
                match (&r.error, r.retention_errors.is_empty()) {
                    (Some((code, m)), _) => format!("{code}: {}", m.replace('\n', " ")),
                    (None, false) => format!(
                        "{INTERNAL_FAILURE}: retention: {}",
                        r.retention_errors.join("; ").replace('\n', " ")
                    ),
                    (None, true) => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// `1h02m03s`, `2m05s`, `4.2s`.
fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
