//! What `run` remembers per client on this server (`[server] state_dir`), for `status`, the
//! metrics and the check schedule: one JSON file per client, `STATE_DIR/NAME.json`, replaced
//! atomically, so a crash or a concurrent `status` never sees half a record.
//!
//! ```
//! use borg_pull_fleet::state::{ClientState, StateStore};
//! let dir = tempfile::tempdir().unwrap();
//! let store = StateStore::open(&dir.path().join("state")).unwrap();
//! assert_eq!(store.load("web1"), ClientState::default()); // nothing recorded yet
//! let state = ClientState { runs_since_check: 3, ..ClientState::default() };
//! store.save("web1", &state).unwrap();
//! assert_eq!(store.load("web1"), state);
//! ```

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use borg_pull_core::text::escape_for_log;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::atomic_file::{lock_exclusive, write_atomically};
use crate::limits::STATE_LOCK_WAIT;

/// The largest state file read: a record is a few hundred bytes (an error message is the longest
/// part); anything much larger is not ours.
const MAX_STATE_FILE: u64 = 1024 * 1024;

/// The per-client records in one directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The store in `dir`, created (mode 0700, with missing parents) when it does not exist. An
    /// existing directory is used as it is.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create the state directory {}: {e}", dir.display()),
                    )
                })?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of client `name`, `None` for a name that is not a plain file name.
    fn path(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
        plain.then(|| self.dir.join(format!("{name}.json")))
    }

    /// What is recorded for client `name`; the default (nothing yet) when there is no file. An
    /// unreadable or corrupt file is logged at warn and read as the default too: the next run
    /// replaces it, and a lost record must not stop backups.
    pub fn load(&self, name: &str) -> ClientState {
        let Some(path) = self.path(name) else {
            warn!(
                "no state for client {}: not a usable file name",
                escape_for_log(name.as_bytes())
            );
            return ClientState::default();
        };
        let shown = || escape_for_log(path.as_os_str().as_encoded_bytes());
        match read_bounded(&path) {
            Ok(None) => ClientState::default(),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!("ignoring the corrupt state file {}: {e}", shown());
                ClientState::default()
            }),
            Err(e) => {
                warn!("ignoring the state file {}: {e}", shown());
                ClientState::default()
            }
        }
    }

    /// Changes client `name`'s record with `change` while holding its lock (`.NAME.lock`), so
    /// writers in other processes (a `status` storing a repository reading, `status --notify`
    /// marking an alert, a second `run`) never replace the file with a copy loaded before
    /// another's write. Waits at most [`STATE_LOCK_WAIT`] for the lock.
    pub fn update<R>(&self, name: &str, change: impl FnOnce(&mut ClientState) -> R) -> io::Result<R> {
        if self.path(name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("client name {name:?} cannot name a state file"),
            ));
        }
        let _lock = lock_exclusive(&self.dir.join(format!(".{name}.lock")), STATE_LOCK_WAIT)?;
        let mut state = self.load(name);
        let before = state.clone();
        let result = change(&mut state);
        if state != before {
            self.save(name, &state)?;
        }
        Ok(result)
    }

    /// Records `state` for client `name`: `NAME.json`, mode 0600, written to a temporary file,
    /// flushed and renamed over the old one.
    pub fn save(&self, name: &str, state: &ClientState) -> io::Result<()> {
        let path = self.path(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("client name {name:?} cannot name a state file"),
            )
        })?;
        let mut json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        json.push(b'\n');
        write_atomically(&path, 0o600, &json)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
    }
}

/// The file's bytes, `None` when it does not exist; an error for one over [`MAX_STATE_FILE`].
fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_STATE_FILE} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// One client's record, one JSON file per client (`STATE_DIR/NAME.json`, written atomically).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    /// The last run, successful or not.
    pub last_run: Option<RunRecord>,
    /// The last successful run.
    pub last_success: Option<RunRecord>,
    /// Successful runs since the last `borg check`.
    pub runs_since_check: u32,
    /// When the last `borg check` finished (Unix seconds), and whether it passed.
    pub last_check: Option<(u64, bool)>,
    /// The last `borg prune` after a create (absent in records written before it was kept).
    #[serde(default)]
    pub last_prune: Option<StepRecord>,
    /// The last `borg compact`.
    #[serde(default)]
    pub last_compact: Option<StepRecord>,
    /// The last `borg check` started, finished or not ([`Self::last_check`] keeps only those
    /// that ran to their end, for the schedule).
    #[serde(default)]
    pub last_check_run: Option<StepRecord>,
    /// When the last `overdue` notification for this client was sent (Unix seconds); cleared
    /// once it is no longer overdue. Keeps `[notify]` from repeating it every hour.
    #[serde(default)]
    pub overdue_alerted: Option<u64>,
    /// Failed attempts since the last success (unreachable ones included), for the retry
    /// back-off and `status`.
    #[serde(default)]
    pub failures_in_a_row: u32,
    /// When the first attempt recorded started (Unix seconds): a client never successful is
    /// overdue `max_age` after it.
    #[serde(default)]
    pub first_attempt: Option<u64>,
    /// How the last attempt ended, and when (the schedule's back-off counts from its end).
    #[serde(default)]
    pub last_attempt: Option<Attempt>,
    /// The last reading of the client's repository on this server (`borg list`, `borg info`),
    /// so the end of `run` reads again only what may have changed
    /// ([`crate::status::reading_due`]).
    #[serde(default)]
    pub repo_reading: Option<RepoReading>,
}

/// What reading a client's repository gave, and when: the newest archive (its name and time; its
/// age is computed from the time whenever it is shown), the sizes, or why it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoReading {
    /// When it was read (Unix seconds, as the reading ended).
    pub at: u64,
    /// The newest archive's name, cut to [`MAX_READING_TEXT`] bytes (the client chose it).
    pub newest_archive: Option<String>,
    /// The newest archive's time, Unix seconds.
    pub newest_time: Option<u64>,
    /// The repository's size (`borg info --json`); absent when it could not be read.
    pub size: Option<RepoSize>,
    /// Why the repository could not be listed, cut to [`MAX_READING_TEXT`] bytes.
    pub error: Option<String>,
}

/// The longest archive name or error kept in a [`RepoReading`], in bytes.
///
/// borg's archive names are at most 255 bytes and its errors a line or two; 4 KiB keeps them
/// whole while a client choosing huge names (or a stand-in printing a flood) cannot grow the state
/// file towards [`MAX_STATE_FILE`].
pub const MAX_READING_TEXT: usize = 4096;

impl RepoReading {
    /// A reading taken at `at`: the newest archive (or the error) and the size, texts cut to
    /// [`MAX_READING_TEXT`].
    pub fn new(at: u64, newest: Result<Option<(String, u64)>, String>, size: Option<RepoSize>) -> Self {
        let (newest, error) = match newest {
            Ok(newest) => (newest, None),
            Err(e) => (None, Some(cut(e))),
        };
        let (newest_archive, newest_time) = newest.map_or((None, None), |(n, t)| (Some(cut(n)), Some(t)));
        Self {
            at,
            newest_archive,
            newest_time,
            size,
            error,
        }
    }

    /// The newest archive as `borg list` gave it, or the error.
    pub fn newest(&self) -> Result<Option<(String, u64)>, String> {
        match (&self.error, &self.newest_archive, self.newest_time) {
            (Some(e), _, _) => Err(e.clone()),
            (None, Some(name), Some(time)) => Ok(Some((name.clone(), time))),
            _ => Ok(None),
        }
    }
}

/// `text` cut to at most [`MAX_READING_TEXT`] bytes, at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_READING_TEXT {
        let mut end = MAX_READING_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl StateStore {
    /// Stores `reading` as client `name`'s last repository reading, keeping the rest of its
    /// record: loaded just before it is replaced, so a run recorded meanwhile is kept.
    pub fn record_reading(&self, name: &str, reading: RepoReading) -> io::Result<()> {
        self.update(name, |state| state.repo_reading = Some(reading))
    }

    /// Drops client `name`'s stored repository reading (its repository may have changed since),
    /// so the next end of `run` reads it again. Nothing is written when there is none.
    pub fn forget_reading(&self, name: &str) -> io::Result<()> {
        if self.load(name).repo_reading.is_none() {
            return Ok(());
        }
        self.update(name, |state| state.repo_reading = None)
    }
}

/// How an attempt to pull a client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// borg's create ended with 0 or 1.
    Succeeded,
    /// The client answered but the pull failed (borg's error, authentication, time limit...):
    /// retried after the back-off.
    Failed,
    /// No SSH connection to the client (DNS, refused, timeout): tried again at the next run.
    Unreachable,
}

/// The last attempt: when it ended (Unix seconds) and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, Unix seconds.
    pub ended: u64,
    /// How.
    pub outcome: Outcome,
}

impl ClientState {
    /// Records an attempt that started at `started` and ended at `ended` (Unix seconds) for the
    /// schedule: the first attempt, the failures in a row, the last outcome. `run` calls it after
    /// every pull, the schedule simulation too.
    pub fn record_attempt(&mut self, outcome: Outcome, started: u64, ended: u64) {
        self.first_attempt.get_or_insert(started);
        self.failures_in_a_row = match outcome {
            Outcome::Succeeded => 0,
            Outcome::Failed | Outcome::Unreachable => self.failures_in_a_row.saturating_add(1),
        };
        self.last_attempt = Some(Attempt { ended, outcome });
    }

    /// The last attempt's end and outcome; for a record written before attempts were kept, read
    /// from [`Self::last_run`].
    pub fn last_attempt(&self) -> Option<(u64, Outcome)> {
        if let Some(a) = self.last_attempt {
            return Some((a.ended, a.outcome));
        }
        let run = self.last_run.as_ref()?;
        let ended = run.started.saturating_add(run.duration_ms / 1000);
        let succeeded = run.error.is_none() && matches!(run.borg_rc, Some(0 | 1));
        Some((
            ended,
            if succeeded {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
        ))
    }
}

impl ClientState {
    /// Records what retention ran after a create, at `at` (Unix seconds): each step that ran, or
    /// was due and could not be started, replaces that step's last record; a step that was not
    /// due keeps its old one. `run` calls it with the outcome of [`crate::retention::after_create`].
    pub fn record_retention(&mut self, outcome: &RetentionOutcome, at: u64) {
        let steps = [
            ("prune", outcome.pruned, &mut self.last_prune),
            ("compact", outcome.compacted, &mut self.last_compact),
            ("check", outcome.checked, &mut self.last_check_run),
        ];
        for (what, rc, last) in steps {
            // A step that could not be started has no exit code; retention names it so.
            let not_started = format!("borg {what} did not run");
            if rc.is_some() || outcome.errors.iter().any(|e| e.starts_with(&not_started)) {
                *last = Some(StepRecord { at, rc });
            }
        }
    }
}

impl ClientState {
    /// The last result of each retention step, as `status --json` and the metrics show them. A
    /// record written before started checks were kept has the check from [`Self::last_check`]
    /// (exit code unknown).
    pub fn retention_results(&self) -> RetentionResults {
        let result = |r: Option<StepRecord>| {
            r.map(|r| StepResult {
                at: r.at,
                succeeded: r.succeeded(),
                rc: r.rc,
            })
        };
        let old_check = || {
            self.last_check.map(|(at, passed)| StepResult {
                at,
                succeeded: passed,
                rc: None,
            })
        };
        RetentionResults {
            prune: result(self.last_prune),
            compact: result(self.last_compact),
            check: result(self.last_check_run).or_else(old_check),
        }
    }
}

/// The last result of each retention step of a client; `None`: it never ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionResults {
    /// `borg prune`.
    pub prune: Option<StepResult>,
    /// `borg compact`.
    pub compact: Option<StepResult>,
    /// `borg check`.
    pub check: Option<StepResult>,
}

impl RetentionResults {
    /// The steps with a result, named as borg names them.
    pub fn steps(&self) -> impl Iterator<Item = (&'static str, StepResult)> {
        [
            ("prune", self.prune),
            ("compact", self.compact),
            ("check", self.check),
        ]
        .into_iter()
        .filter_map(|(step, result)| Some((step, result?)))
    }
}

/// One retention step's last result, for people and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepResult {
    /// When it was recorded (Unix seconds).
    pub at: u64,
    /// borg's 0 or 1.
    pub succeeded: bool,
    /// borg's exit code; `None` when borg could not be started, or unknown.
    pub rc: Option<i32>,
}

/// One retention step's last result, as recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// When it was recorded: as the run's retention (all its steps) ended (Unix seconds).
    pub at: u64,
    /// borg's exit code (128 + N after signal N, e.g. 143 when its time limit stopped it);
    /// `None`: borg could not be started (e.g. the passphrase file could not be read).
    pub rc: Option<i32>,
}

impl StepRecord {
    /// borg's own view: 0 success, 1 warning (the work was done).
    pub fn succeeded(&self) -> bool {
        matches!(self.rc, Some(0 | 1))
    }
}

/// A borg-pull error as every JSON output shows it: `{"code": 213, "message": "…"}` (`run
/// --json`, `status --json` and the state files share this one shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorJson<'a> {
    /// borg-pull's exit code (200 and up).
    pub code: u8,
    /// What failed and what to do, as the summary shows it.
    pub message: &'a str,
}

impl<'a> From<&'a (u8, String)> for ErrorJson<'a> {
    fn from((code, message): &'a (u8, String)) -> Self {
        Self { code: *code, message }
    }
}

/// Serialises an `Option<(code, message)>` as [`ErrorJson`] (or `null`).
pub fn serialize_error<S: serde::Serializer>(error: &Option<(u8, String)>, s: S) -> Result<S::Ok, S::Error> {
    error.as_ref().map(ErrorJson::from).serialize(s)
}

/// Reads an error as [`serialize_error`] writes it, or as `[213, "…"]`, the shape of the state
/// files written before it (so an upgrade keeps the last results).
fn deserialize_error<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<(u8, String)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Object { code: u8, message: String },
        Pair(u8, String),
    }
    Ok(Option::<Shape>::deserialize(d)?.map(|shape| match shape {
        Shape::Object { code, message } | Shape::Pair(code, message) => (code, message),
    }))
}

/// One run of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start, Unix seconds.
    pub started: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The archive created, when borg's output named it.
    pub archive: Option<String>,
    /// Bytes the client sent to `borg serve`.
    pub bytes_sent: u64,
    /// borg's exit code on the client, if it ran to the end.
    pub borg_rc: Option<i32>,
    /// borg-pull's own error (exit code and message), if any; `{"code", "message"}` in JSON.
    #[serde(
        serialize_with = "serialize_error",
        deserialize_with = "deserialize_error",
        default
    )]
    pub error: Option<(u8, String)>,
}

/// What [`crate::retention::after_create`] ran: each step's borg exit code (128 + N if ended by signal N, e.g. 143
/// after a timeout), `None` when the step did not run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// `borg prune`.
    pub pruned: Option<i32>,
    /// `borg compact`.
    pub compacted: Option<i32>,
    /// `borg check`.
    pub checked: Option<i32>,
    /// One message per step that failed (could not start, timed out, or borg reported an error),
    /// e.g. `"borg prune exited with 2: Repository /srv/borg/x is locked"`; also logged.
    pub errors: Vec<String>,
}

impl RetentionOutcome {
    /// Every step that ran succeeded (borg's 0 or 1).
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A repository's size as borg's `info --json` gives it (`cache.stats`, bytes). borg 1.x gives
/// all four; a field borg does not give (borg 2 dropped the compressed sizes) stays absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RepoSize {
    /// Deduplicated and compressed: what the repository holds on disk.
    pub unique_csize: Option<u64>,
    /// Deduplicated, before compression.
    pub unique_size: Option<u64>,
    /// Every archive's compressed size added up, as if nothing were shared.
    pub total_csize: Option<u64>,
    /// Every archive's original size added up.
    pub total_size: Option<u64>,
}
