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
//!   clients never mix; a line longer than [`MAX_LINE`] is cut. A carriage return ends a line
//!   too: what it ends is borg's progress text (`--progress`), which is not written as a line but
//!   shown as [`crate::progress`] says (now and then in logs, live on a terminal). The write
//!   itself is a blocking write under a lock: a reader of our stdout that stalls holds the
//!   clients back (backpressure instead of an unbounded buffer), and may stall a runtime worker
//!   while it does.
//! - Retention runs on the server when the client's job made an archive: the repository's
//!   archive ids are listed before and after the job, and prune, compact and check run
//!   ([`crate::retention`]) only when the job succeeded (borg rc 0 or 1) and an id appeared.
//!   Otherwise the result says why not ([`RetentionResult`]), in the log, the summary and the
//!   JSON. The run is recorded ([`crate::state`]) and the metrics file rewritten
//!   ([`crate::metrics`]) when `[server] prometheus` is set.
//! - Each client pulled gets one record in its history ([`crate::history`]: duration, bytes,
//!   borg's `--stats` sizes, rc, error); clients not started (Ctrl-C) get none, as in the state.
//!   At the end the status page ([`crate::page`]) is rewritten when `[server] html` is set.
//!
//! The exit status of a whole run is [`worst_code`]: any borg-pull error (our codes, 200 and up;
//! the highest of them when several clients failed) beats borg's codes, and among borg's a higher
//! code is worse (2 error > 1 warning > 0 success; modern codes and 128+N signals are above 2).

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borg_pull_tunnel::jobs::pull::{pull_with_output, PullEnv};
use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::{Client, Fleet};
use crate::history::{ArchiveStats, History, HistoryRecord};
use crate::limits::{BorgLimits, REDRAW_INTERVAL};
use crate::metrics::write_textfile_after_pulls;
use crate::progress::{clean_progress, human_bytes, job_label, short_duration, Display, Phase};
use crate::retention::{
    after_create_observed, archive_ids, is_configured, ArchiveIds, RetentionResult, SkipReason,
};
use crate::schedule::{self, Standing, Zone};
use crate::state::StateStore;
use crate::state::{ClientState, Outcome, RunRecord};
use crate::time_text::utc;

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
/// lines to `err`. Each line is written with one `write_all` under a lock. Progress is shown as
/// its [`Display`] says (by default: logged now and then).
#[derive(Clone)]
pub struct OutputSink {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    err: Arc<Mutex<Box<dyn Write + Send>>>,
    display: Display,
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
            display: Display::default(),
        }
    }

    /// The same sink showing progress as `display` says; with [`Display::Live`] every line goes
    /// through the live display (its writers, above its lines) instead of `out` and `err`.
    pub fn with_display(mut self, display: Display) -> Self {
        self.display = display;
        self
    }

    /// Lines to this process's stdout and stderr.
    pub fn stdio() -> Self {
        Self::new(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    }

    fn write_line(&self, stderr: bool, line: &[u8]) {
        if let Display::Live(live) = &self.display {
            live.line(stderr, line);
            return;
        }
        let target = if stderr { &self.err } else { &self.out };
        let mut w = target.lock().unwrap_or_else(|p| p.into_inner());
        // A closed stdout (`run | head`) is not a reason to stop backing up.
        let _ = w.write_all(line).and_then(|()| w.flush());
    }

    fn phase(&self, index: usize, phase: Phase) {
        if let Display::Live(live) = &self.display {
            live.phase(index, phase);
        }
    }
}

/// One client's borg output stream: whole lines prefixed `NAME: ` into the sink, progress text
/// (what a carriage return ends) to the sink's [`Display`]; also notes borg's `Archive name:`
/// line (`create --stats`).
struct PrefixWriter {
    prefix: Vec<u8>,
    index: usize,
    sink: OutputSink,
    stderr: bool,
    line: Vec<u8>,
    /// The rest of a cut line is being dropped.
    skipping: bool,
    archive: Option<String>,
    /// The last segment ended by a carriage return, kept until the next byte: a line feed right
    /// after it makes it a whole line (CRLF), anything else leaves it progress.
    after_cr: Option<Vec<u8>>,
    /// In logs: when the last progress line was logged (or borg's first progress came).
    progress_mark: Option<Instant>,
    /// borg's `--stats` sizes, for the history.
    stats: ArchiveStats,
    /// The last lines, for `[notify]`'s Healthchecks ping.
    tail: crate::notify::LogTail,
}

impl PrefixWriter {
    fn new(name: &str, index: usize, sink: OutputSink, stderr: bool) -> Self {
        Self {
            prefix: format!("{name}: ").into_bytes(),
            index,
            sink,
            stderr,
            line: Vec::new(),
            skipping: false,
            archive: None,
            after_cr: None,
            progress_mark: None,
            stats: ArchiveStats::default(),
            tail: crate::notify::LogTail::default(),
        }
    }

    /// Writes `line` (without its line end) as one whole prefixed line.
    fn emit(&mut self, line: &[u8], cut: bool) {
        let text = String::from_utf8_lossy(line);
        if let Some(name) = text.strip_prefix("Archive name: ") {
            self.archive = Some(name.trim().to_owned());
        }
        self.stats.read_line(&text);
        if let Display::Live(live) = &self.sink.display {
            let shown = clean_progress(line);
            if !shown.is_empty() {
                live.progress(self.index, &shown);
            }
        }
        let mut out = Vec::with_capacity(self.prefix.len() + line.len() + 40);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(line);
        if cut {
            out.extend_from_slice(b" [line cut at 64 KiB]");
        }
        self.tail.push(line);
        out.push(b'\n');
        self.sink.write_line(self.stderr, &out);
    }

    fn emit_line(&mut self, cut: bool) {
        let line = std::mem::take(&mut self.line);
        self.emit(&line, cut);
        self.line = line;
        self.line.clear();
    }

    /// borg's progress text (a segment ended by a carriage return): live on a terminal; in logs
    /// one line per interval at most, the first an interval after borg's first progress.
    fn progress(&mut self) {
        let text = clean_progress(&self.line);
        self.after_cr = Some(std::mem::take(&mut self.line));
        if text.is_empty() {
            return;
        }
        match &self.sink.display {
            Display::Live(live) => live.progress(self.index, &text),
            Display::Log { every } => {
                let now = Instant::now();
                match self.progress_mark {
                    None => self.progress_mark = Some(now),
                    Some(mark) if now.duration_since(mark) >= *every => {
                        self.progress_mark = Some(now);
                        // Logged: a CRLF line feed after it would log it twice.
                        self.after_cr = None;
                        self.emit(text.as_bytes(), false);
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn push(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if let Some(held) = self.after_cr.take() {
                if buf[0] == b'\n' && !self.skipping {
                    // CRLF: that segment was a whole line after all.
                    self.emit(&held, false);
                    buf = &buf[1..];
                    continue;
                }
            }
            let end = buf.iter().position(|&b| b == b'\n' || b == b'\r');
            let (chunk, rest, terminator) = match end {
                Some(at) => (&buf[..at], &buf[at + 1..], Some(buf[at])),
                None => (buf, &[][..], None),
            };
            buf = rest;
            if self.skipping {
                self.skipping = terminator.is_none();
                continue;
            }
            let room = MAX_LINE - self.line.len();
            if chunk.len() > room {
                self.line.extend_from_slice(&chunk[..room]);
                self.emit_line(true);
                self.skipping = terminator.is_none();
                continue;
            }
            self.line.extend_from_slice(chunk);
            match terminator {
                Some(b'\n') => self.emit_line(false),
                Some(_) => self.progress(),
                None => {}
            }
        }
    }

    /// Writes what is left of an unfinished last line (a last progress text is not a line).
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit_line(false);
        }
        self.after_cr = None;
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
    /// What failed of prune, compact and check on the server after a successful create (or
    /// why it could not be told whether the job created an archive).
    pub retention_errors: Vec<String>,
    /// What retention did: ran (with each step's code), skipped and why, or not configured.
    pub retention: RetentionResult,
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
            retention: &'a RetentionResult,
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
            retention: &self.retention,
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

/// What `run --due` makes of the clients it was given, at one moment.
#[derive(Debug, Clone)]
pub struct DueSelection<'a> {
    /// The clients due now ([`Standing::due_now`]), in the order given: these are pulled.
    pub due: Vec<&'a Client>,
    /// The others, with their standing (for the log line naming each and its next due time).
    pub not_due: Vec<(&'a Client, Standing)>,
}

/// Splits `clients` into those due at `now` (Unix seconds, `zone`'s local time for windows and
/// blackouts) and the others, by [`schedule::standing_in`] on what `state_of` returns for each
/// name. `run --due` calls it with the state store, the schedule simulation with its own; both
/// record each attempt with [`ClientState::record_attempt`].
pub fn select_due<'a>(
    clients: impl IntoIterator<Item = &'a Client>,
    now: u64,
    zone: &Zone,
    state_of: impl Fn(&str) -> ClientState,
) -> DueSelection<'a> {
    let mut selection = DueSelection {
        due: Vec::new(),
        not_due: Vec::new(),
    };
    for client in clients {
        let standing = schedule::standing_in(client, &state_of(&client.name), now, zone);
        if standing.due_now {
            selection.due.push(client);
        } else {
            selection.not_due.push((client, standing));
        }
    }
    selection
}

/// `run --due`: the clients named in `names` (all when empty) that are due now, pulled as
/// [`run_clients`] does; one info line per client that is not due (its health and next due
/// time). Returns the results of those pulled and how many were not due.
pub async fn run_due(
    fleet: &Fleet,
    names: &[String],
    jobs: usize,
    env: &PullEnv,
    classify: ErrorMapper,
    cancel: CancellationToken,
    out: OutputSink,
) -> (Vec<ClientResult>, usize) {
    let selected = fleet
        .clients
        .iter()
        .filter(|c| names.is_empty() || names.contains(&c.name));
    let store = StateStore::open(&fleet.server.state_dir).ok();
    let state_of = |name: &str| store.as_ref().map(|s| s.load(name)).unwrap_or_default();
    let now = crate::retention::unix_now();
    let selection = select_due(selected, now, Zone::local(), state_of);
    for (client, standing) in &selection.not_due {
        let next = standing.next_due.map_or_else(|| "-".into(), utc);
        info!(
            client = %client.name,
            health = %standing.health,
            failures_in_a_row = standing.failures_in_a_row,
            "not due; next due {next} UTC"
        );
    }
    info!(
        due = selection.due.len(),
        not_due = selection.not_due.len(),
        "{} of {} clients due",
        selection.due.len(),
        selection.due.len() + selection.not_due.len()
    );
    let due: Vec<Client> = selection.due.iter().map(|c| (*c).clone()).collect();
    let not_due = selection.not_due.len();
    (
        run_clients(fleet, due, jobs, env, classify, cancel, out).await,
        not_due,
    )
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
    run_clients(fleet, clients, jobs, env, classify, cancel, out).await
}

/// Pulls `clients` (of `fleet`) at most `jobs` at a time; one result per client, in their order,
/// once every pull has ended.
pub async fn run_clients(
    fleet: &Fleet,
    clients: Vec<Client>,
    jobs: usize,
    env: &PullEnv,
    classify: ErrorMapper,
    cancel: CancellationToken,
    out: OutputSink,
) -> Vec<ClientResult> {
    // While the first pulls prepare: the server borg's version, which every pull needs.
    let _version =
        (!clients.is_empty()).then(|| crate::config::prefetch_server_borg_version(&fleet.server.borg));
    let store = match StateStore::open(&fleet.server.state_dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            warn!(dir = %fleet.server.state_dir.display(), "cannot open the state directory, results are not recorded: {e}");
            None
        }
    };
    // The live display's owner: redrawn by this task until every pull has ended.
    let redraw = match &out.display {
        Display::Live(live) => {
            let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
            live.begin(&names);
            let live = live.clone();
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                let mut every = tokio::time::interval(REDRAW_INTERVAL);
                loop {
                    every.tick().await;
                    live.tick();
                }
            })))
        }
        Display::Log { .. } => None,
    };
    // `[notify]`: what each client's state was before this run (recovery is judged against it).
    let notifier = crate::notify::Notifier::new(&fleet.notify);
    let before: std::collections::BTreeMap<String, ClientState> = match (&notifier, &store) {
        (Some(_), Some(store)) => clients
            .iter()
            .map(|c| (c.name.clone(), store.load(&c.name)))
            .collect(),
        _ => Default::default(),
    };
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    let mut names_by_task = std::collections::HashMap::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let job = Job {
            index,
            client,
            server: fleet.server.clone(),
            env: env.clone(),
            classify,
            cancel: cancel.child_token(),
            out: out.clone(),
            store: store.clone(),
            notify: notifier.clone(),
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
                job.out.phase(index, Phase::Done);
                return (index, job.not_started(started));
            }
            let result = job.pull().await;
            drop(permit);
            job.out.phase(index, Phase::Done);
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
                    retention: RetentionResult::Skipped(SkipReason::JobFailed),
                });
            }
        }
    }
    drop(redraw);
    if let Display::Live(live) = &out.display {
        live.finish();
    }
    if let (Some(path), Some(store)) = (&fleet.server.prometheus, &store) {
        let pulled: Vec<&str> = results
            .iter()
            .flatten()
            .filter(|r| crate::status::may_have_changed(&store.load(&r.name), unix_secs(r.started)))
            .map(|r| r.name.as_str())
            .collect();
        if let Err(e) = write_textfile_after_pulls(path, fleet, store, &pulled, &cancel).await {
            warn!(file = %path.display(), "cannot write the metrics file: {e}");
        }
    }
    if let (Some(path), Some(store)) = (&fleet.server.html, &store) {
        if let Err(e) = crate::page::write_fleet_page(path, fleet, store) {
            warn!("cannot write the status page: {e}");
        }
    }
    let results: Vec<ClientResult> = results.into_iter().flatten().collect();
    if let Some(notifier) = &notifier {
        if cancel.is_cancelled() {
            // Stopping (SIGTERM): no new alerts; the pings under way get their bound.
            notifier.finish().await;
        } else {
            crate::notify::after_run(notifier, fleet, &results, &before, store.as_deref()).await;
        }
    }
    results
}

/// One client's pull, owned by its task.
struct Job {
    /// Its place in the run (config order): its line in the live display.
    index: usize,
    client: Client,
    server: crate::config::ServerSettings,
    env: PullEnv,
    classify: ErrorMapper,
    cancel: CancellationToken,
    out: OutputSink,
    store: Option<Arc<StateStore>>,
    /// `[notify]`'s sender, when it configures a channel.
    notify: Option<Arc<crate::notify::Notifier>>,
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
            retention: if is_configured(&self.client) {
                RetentionResult::Skipped(SkipReason::Interrupted)
            } else {
                RetentionResult::NotConfigured
            },
        }
    }

    async fn pull(&self) -> ClientResult {
        let name = &self.client.name;
        let started = SystemTime::now();
        let t0 = Instant::now();
        info!(client = %name, "pull starting");
        if let Some(notify) = &self.notify {
            notify.ping_start(name);
        }
        // What the repository holds before the job, to tell afterwards whether it made an
        // archive; only read when something would run after it.
        let before = if is_configured(&self.client) {
            self.out.phase(self.index, Phase::Listing);
            Some(self.list_archives().await)
        } else {
            None
        };
        self.out
            .phase(self.index, Phase::Job(job_label(&self.client.args)));
        let mut stdout = PrefixWriter::new(name, self.index, self.out.clone(), false);
        let mut stderr = PrefixWriter::new(name, self.index, self.out.clone(), true);
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
        let mut reached = true;
        let mut result = ClientResult {
            name: name.clone(),
            archive,
            started,
            duration: t0.elapsed(),
            bytes_sent: 0,
            borg_rc: None,
            error: None,
            retention_errors: Vec::new(),
            retention: RetentionResult::NotConfigured,
        };
        match outcome {
            Ok(outcome) => {
                result.bytes_sent = outcome.forwarded.to_serve;
                result.borg_rc = Some(outcome.exit.code());
            }
            Err(e) => {
                reached = !unreachable(&e);
                result.error = Some((self.classify)(&e));
            }
        }
        let (sent, took) = (human_bytes(result.bytes_sent), short_duration(result.duration));
        match (&result.error, result.borg_rc) {
            (Some((code, message)), _) => {
                let message = message.replace('\n', " ");
                warn!(client = %name, code, duration = %took, "pull failed: {message}");
            }
            (None, Some(rc)) => info!(client = %name, rc, sent = %sent, duration = %took, "pull finished"),
            (None, None) => info!(client = %name, sent = %sent, duration = %took, "pull finished"),
        }
        (result.retention, result.retention_errors) = self.record(&result, before, reached).await;
        self.append_history(&result, stdout.stats.or(stderr.stats));
        if let Some(notify) = &self.notify {
            let mut log = stdout.tail.text() + &stderr.tail.text();
            if let Some((code, message)) = &result.error {
                log.push_str(&format!("borg-pull error {code}: {message}\n"));
            }
            for e in &result.retention_errors {
                log.push_str(&format!("retention: {e}\n"));
            }
            notify.ping_end(name, result.code() <= 1, &log);
        }
        result
    }

    /// One record of this run in the client's history (what a failure of it costs is a warning:
    /// the run is recorded in the state file all the same).
    fn append_history(&self, result: &ClientResult, stats: ArchiveStats) {
        if self.store.is_none() {
            return;
        }
        let record = HistoryRecord {
            started: unix_secs(result.started),
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            bytes_sent: result.bytes_sent,
            original_size: stats.original,
            compressed_size: stats.compressed,
            deduplicated_size: stats.deduplicated,
            borg_rc: result.borg_rc,
            error: result.error.clone(),
        };
        let appended =
            History::open(&self.server.state_dir).and_then(|h| h.append(&self.client.name, &record));
        if let Err(e) = appended {
            warn!(client = %self.client.name, "cannot record the run in the history: {e}");
        }
    }

    /// The repository's archive ids; stopped (and an error) on Ctrl-C.
    async fn list_archives(&self) -> Result<ArchiveIds, String> {
        tokio::select! {
            ids = archive_ids(&self.client, &self.server) => ids,
            () = self.cancel.cancelled() => Err("interrupted by SIGINT/SIGTERM".into()),
        }
    }

    /// Retention when the job made an archive, and the state file.
    async fn record(
        &self,
        result: &ClientResult,
        before: Option<Result<ArchiveIds, String>>,
        reached: bool,
    ) -> (RetentionResult, Vec<String>) {
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
        let outcome = match (succeeded, reached) {
            (true, _) => Outcome::Succeeded,
            (false, true) => Outcome::Failed,
            (false, false) => Outcome::Unreachable,
        };
        let ended = unix_secs(result.started + result.duration);
        state.record_attempt(outcome, record.started, ended);
        state.last_run = Some(record);
        let (retention, errors) = self.retention(succeeded, before, &mut state).await;
        match &retention {
            RetentionResult::NotConfigured => debug!(client = %name, "retention: not configured"),
            RetentionResult::Skipped(SkipReason::CannotList) => {
                for e in &errors {
                    warn!(client = %name, "retention: skipped, {e}");
                }
            }
            RetentionResult::Skipped(reason) => {
                info!(client = %name, "retention: skipped, {}", reason.as_str());
            }
            RetentionResult::Ran(_) => {
                info!(client = %name, "retention done: {retention}");
                for e in &errors {
                    warn!(client = %name, "retention: {e}");
                }
            }
            RetentionResult::Interrupted => warn!(client = %name, "retention stopped: interrupted"),
        }
        if let Some(store) = &self.store {
            // Loaded before the pull; what other writers changed since (a `status` storing a
            // repository reading, `status --notify` marking an alert) is theirs and stays.
            let saved = store.update(name, |fresh| {
                let (reading, alerted) = (fresh.repo_reading.take(), fresh.overdue_alerted);
                *fresh = state;
                fresh.repo_reading = reading;
                fresh.overdue_alerted = alerted;
            });
            if let Err(e) = saved {
                warn!(client = %name, "cannot record the result: {e}");
            }
        }
        (retention, errors)
    }

    /// Decides from what ran whether retention runs, and runs it.
    async fn retention(
        &self,
        succeeded: bool,
        before: Option<Result<ArchiveIds, String>>,
        state: &mut ClientState,
    ) -> (RetentionResult, Vec<String>) {
        let cannot_list = |e: String| {
            (
                RetentionResult::Skipped(SkipReason::CannotList),
                vec![format!("cannot tell whether the job created an archive: {e}")],
            )
        };
        let Some(before) = before else {
            return (RetentionResult::NotConfigured, Vec::new());
        };
        if self.cancel.is_cancelled() {
            return (RetentionResult::Skipped(SkipReason::Interrupted), Vec::new());
        }
        if !succeeded {
            return (RetentionResult::Skipped(SkipReason::JobFailed), Vec::new());
        }
        let before = match before {
            Ok(ids) => ids,
            Err(e) => return cannot_list(e),
        };
        self.out.phase(self.index, Phase::Listing);
        let after = match self.list_archives().await {
            Ok(ids) => ids,
            Err(_) if self.cancel.is_cancelled() => {
                return (RetentionResult::Skipped(SkipReason::Interrupted), Vec::new())
            }
            Err(e) => return cannot_list(e),
        };
        let created = before.new_in(&after);
        debug!(client = %self.client.name, before = before.len(), after = after.len(), created, "archives listed");
        if created == 0 {
            return (RetentionResult::Skipped(SkipReason::NoNewArchive), Vec::new());
        }
        let on_step = |step| self.out.phase(self.index, Phase::Retention(step));
        let limits = BorgLimits::default();
        // Ctrl-C must not wait for a long check: dropping the retention future kills its
        // borg's process group (borg rolls the transaction back on the next access).
        tokio::select! {
            outcome = after_create_observed(&self.client, &self.server, state, &limits, &on_step) => {
                state.record_retention(&outcome, crate::retention::unix_now());
                let errors = outcome.errors.clone();
                (RetentionResult::Ran(outcome), errors)
            }
            () = self.cancel.cancelled() => (
                RetentionResult::Interrupted,
                vec!["stopped: interrupted by SIGINT/SIGTERM".into()],
            ),
        }
    }
}

/// The summary's last line after `run --due`: `due: 2 of 5 clients (3 not due)`.
pub fn due_line(due: usize, not_due: usize) -> String {
    format!("due: {due} of {} clients ({not_due} not due)\n", due + not_due)
}

/// Whether `e` says the client could not be reached at all (no SSH connection to it or through
/// its jump hosts): the schedule tries such a client again at the next run, without back-off.
fn unreachable(e: &borg_pull_tunnel::Error) -> bool {
    use borg_pull_tunnel::Error as E;
    match e {
        E::Connect { .. } | E::ConnectTimeout { .. } | E::JumpConnect { .. } => true,
        E::JumpHost { source, .. } => unreachable(source),
        _ => false,
    }
}

/// The summary: one row per client (client, archive, start in UTC, duration, bytes sent (`1.2
/// GiB`), borg's rc, retention's result, our error).
pub fn summary_table(results: &[ClientResult]) -> String {
    let header = [
        "client",
        "archive",
        "start (UTC)",
        "duration",
        "sent",
        "borg rc",
        "retention",
        "error",
    ];
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.archive.clone().unwrap_or_else(|| "-".into()),
                utc(unix_secs(r.started)),
                short_duration(r.duration),
                human_bytes(r.bytes_sent),
                r.borg_rc.map_or_else(|| "-".into(), |rc| rc.to_string()),
                r.retention.to_string(),
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
    crate::progress::text_table(header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn writer(every: Duration) -> (PrefixWriter, Buf) {
        let buf = Buf::default();
        let sink = OutputSink::new(Box::new(buf.clone()), Box::new(buf.clone()))
            .with_display(Display::Log { every });
        (PrefixWriter::new("web1", 0, sink, true), buf)
    }

    fn text(buf: &Buf) -> String {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn progress_lines_are_not_logged_whole_and_lines_still_are() {
        // borg create --progress, as it writes: progress ended by \r, then its log lines.
        let (mut w, buf) = writer(Duration::from_secs(3600));
        for i in 0..1000 {
            w.push(format!("{i} B O 0 B C 0 B D 0 N some/path{:>40}\r", "").as_bytes());
        }
        w.push(b"                    \rArchive name: a1\nThis archive: 1 kB\n");
        w.finish();
        assert_eq!(text(&buf), "web1: Archive name: a1\nweb1: This archive: 1 kB\n");
        assert_eq!(w.archive.as_deref(), Some("a1"));
    }

    #[test]
    fn in_logs_progress_comes_at_most_once_an_interval_without_carriage_returns() {
        let (mut w, buf) = writer(Duration::ZERO);
        w.push(b"first\r");
        w.push(b"second\r");
        w.push(b"thi");
        w.push(b"rd\r\x1b[2K");
        w.finish();
        // The first progress starts the interval; every later one is due at once here.
        assert_eq!(text(&buf), "web1: second\nweb1: third\nweb1: \x1b[2K\n");
    }

    #[test]
    fn select_due_keeps_the_order_and_says_why_the_others_wait() {
        let text = "[defaults]\nargs = [\"create\", \"::x\", \"/\"]\nhost = \"h\"\n\
            [[client]]\nname = \"a\"\nrepo = \"/a\"\n\
            [[client]]\nname = \"b\"\nrepo = \"/b\"\n\
            [[client]]\nname = \"c\"\nrepo = \"/c\"\nblackout = [\"00:00-12:00\"]\n";
        let fleet = crate::config::parse_with_home(text, std::path::Path::new("f.toml"), None).unwrap();
        let now = 20_000 * 86_400 + 3_600; // 01:00 UTC
        let state_of = |name: &str| {
            let mut state = ClientState::default();
            if name == "b" {
                state.last_success = Some(RunRecord {
                    started: now - 3_600,
                    ..RunRecord::default()
                });
                state.record_attempt(Outcome::Succeeded, now - 3_600, now - 3_000);
            }
            state
        };
        let selection = select_due(&fleet.clients, now, &Zone::utc(), state_of);
        let due: Vec<&str> = selection.due.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(due, ["a"]);
        let waiting: Vec<(&str, schedule::Health, Option<u64>)> = selection
            .not_due
            .iter()
            .map(|(c, s)| (c.name.as_str(), s.health, s.next_due))
            .collect();
        assert_eq!(
            waiting,
            [
                (
                    "b",
                    schedule::Health::Ok,
                    Some(now - 3_600 + 23 * 3_600 + 15 * 60)
                ),
                ("c", schedule::Health::Due, Some(now + 11 * 3_600)),
            ]
        );
    }

    #[test]
    fn crlf_lines_are_whole_lines() {
        let (mut w, buf) = writer(Duration::from_secs(3600));
        w.push(b"one\r");
        w.push(b"\ntwo\r\nthree\n");
        w.finish();
        assert_eq!(text(&buf), "web1: one\nweb1: two\nweb1: three\n");
    }

    #[test]
    fn an_endless_line_is_cut_and_the_rest_dropped() {
        let (mut w, buf) = writer(Duration::from_secs(3600));
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..100 {
            w.push(&chunk);
        }
        w.push(b"\rnext\n");
        w.finish();
        let out = text(&buf);
        assert!(
            out.ends_with(" [line cut at 64 KiB]\nweb1: next\n"),
            "{}",
            &out[out.len() - 60..]
        );
        assert_eq!(
            out.len(),
            "web1: ".len() * 2 + MAX_LINE + " [line cut at 64 KiB]\n".len() + 5
        );
    }
}
