//! Every run of every client, kept on this server for `status --history NAME` and the status
//! page's charts: `STATE_DIR/history/NAME.jsonl`, one JSON record per line, oldest first.
//!
//! - Bounded: after each append the file keeps at most [`MAX_HISTORY_RECORDS`] records and
//!   [`MAX_HISTORY_BYTES`] bytes (the oldest go first), so a fleet run every hour for years never
//!   grows it; reading it holds at most that much too.
//! - Replaced atomically (temporary file, flush, rename; mode 0600, directory 0700): a crash or a
//!   concurrent `status` sees the old or the new history, never half of it.
//! - A corrupt line (a disk error, a hand edit) is skipped with a warning, never fatal: the rest
//!   of the history is still shown, and the next append drops that line.
//!
//! ```
//! use borg_pull_fleet::history::{History, HistoryRecord};
//! let dir = tempfile::tempdir().unwrap();
//! let history = History::open(dir.path()).unwrap();
//! assert!(history.load("web1").is_empty());
//! let record = HistoryRecord { started: 1_700_000_000, duration_ms: 1500, ..HistoryRecord::default() };
//! history.append("web1", &record).unwrap();
//! assert_eq!(history.load("web1"), [record]);
//! ```

use std::fs::DirBuilder;
use std::io::{self, Read as _, Seek as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use borg_pull_core::text::escape_for_log;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::atomic_file::{lock_exclusive, write_atomically};
use crate::limits::{HISTORY_LOCK_WAIT, MAX_HISTORY_BYTES, MAX_HISTORY_RECORDS};

/// One run of one client, as its history keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Start, Unix seconds.
    pub started: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Bytes the client sent to `borg serve`.
    pub bytes_sent: u64,
    /// borg's `--stats` "original size" of the archive (bytes, as precise as borg printed it).
    #[serde(default)]
    pub original_size: Option<u64>,
    /// borg's `--stats` "compressed size" (borg 1.x only).
    #[serde(default)]
    pub compressed_size: Option<u64>,
    /// borg's `--stats` "deduplicated size": what this archive added to the repository.
    #[serde(default)]
    pub deduplicated_size: Option<u64>,
    /// borg's exit code on the client, if it ran to the end.
    #[serde(default)]
    pub borg_rc: Option<i32>,
    /// borg-pull's own error (exit code and message), if any; `{"code", "message"}` in JSON.
    #[serde(
        serialize_with = "crate::state::serialize_error",
        deserialize_with = "deserialize_error",
        default
    )]
    pub error: Option<(u8, String)>,
}

impl HistoryRecord {
    /// borg's own view of success (0 or 1) and no error of ours.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && matches!(self.borg_rc, Some(0 | 1))
    }
}

fn deserialize_error<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<(u8, String)>, D::Error> {
    #[derive(Deserialize)]
    struct Object {
        code: u8,
        message: String,
    }
    Ok(Option::<Object>::deserialize(d)?.map(|o| (o.code, o.message)))
}

/// The histories of all clients, in `STATE_DIR/history`.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

impl History {
    /// The histories under `state_dir` (its `history` directory, created mode 0700 with missing
    /// parents when it does not exist).
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("history");
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create the history directory {}: {e}", dir.display()),
                    )
                })?;
        }
        Ok(Self { dir })
    }

    /// The histories under `state_dir` without creating anything (for readers: `status`).
    pub fn at(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("history"),
        }
    }

    /// The file of client `name`, `None` for a name that is not a plain file name.
    fn path(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
        plain.then(|| self.dir.join(format!("{name}.jsonl")))
    }

    /// Client `name`'s records, oldest first; empty when it has none. Unreadable files and
    /// corrupt lines are logged at warn and skipped.
    pub fn load(&self, name: &str) -> Vec<HistoryRecord> {
        let Some(path) = self.path(name) else {
            warn!(
                "no history for client {}: not a usable file name",
                escape_for_log(name.as_bytes())
            );
            return Vec::new();
        };
        let bytes = match read_tail(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(
                    "ignoring the history file {}: {e}",
                    escape_for_log(path.as_os_str().as_encoded_bytes())
                );
                return Vec::new();
            }
        };
        parse_lines(&bytes, &path)
    }

    /// Appends `record` to client `name`'s history, dropping the oldest records beyond the
    /// bounds; the file is replaced atomically (mode 0600).
    pub fn append(&self, name: &str, record: &HistoryRecord) -> io::Result<()> {
        let path = self.path(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("client name {name:?} cannot name a history file"),
            )
        })?;
        // Two runs pulling one client (an hourly `run --due` and a `run web1` by hand) would
        // each read the old history and the second rename would drop the first's record.
        let _lock = self.lock(name)?;
        let mut records = self.load(name);
        records.push(record.clone());
        let text = bounded_text(&records)?;
        write_atomically(&path, 0o600, &text)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
    }

    /// An exclusive lock on client `name`'s history (`.NAME.lock`, mode 0600), held while the
    /// returned file is open; waited for at most [`HISTORY_LOCK_WAIT`].
    fn lock(&self, name: &str) -> io::Result<std::fs::File> {
        lock_exclusive(&self.dir.join(format!(".{name}.lock")), HISTORY_LOCK_WAIT)
    }
}

/// The JSON lines of the newest records that fit both bounds.
fn bounded_text(records: &[HistoryRecord]) -> io::Result<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    for record in records.iter().rev().take(MAX_HISTORY_RECORDS) {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        if total + line.len() > MAX_HISTORY_BYTES {
            break;
        }
        total += line.len();
        lines.push(line);
    }
    Ok(lines.into_iter().rev().flatten().collect())
}

/// The file's last [`MAX_HISTORY_BYTES`] (a larger file was not written by us, or by an older
/// bound): its first, partial line is dropped. Empty when it does not exist.
fn read_tail(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let limit = MAX_HISTORY_BYTES as u64;
    let cut = len > limit;
    if cut {
        file.seek(io::SeekFrom::Start(len - limit))?;
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    if cut {
        let start = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..start);
    }
    Ok(bytes)
}

fn parse_lines(bytes: &[u8], path: &Path) -> Vec<HistoryRecord> {
    let mut records = Vec::new();
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => records.push(record),
            Err(e) => warn!(
                "skipping line {} of the history file {}: {e}",
                number + 1,
                escape_for_log(path.as_os_str().as_encoded_bytes())
            ),
        }
    }
    records
}

/// borg's `--stats` sizes of the archive, read from its output lines.
///
/// borg 1.x prints `This archive:   1.23 MB   800.00 kB   12.00 kB` (original, compressed,
/// deduplicated), borg 2 `Original size: 1.23 MB` and `Deduplicated size: 12.00 kB`. borg rounds
/// to three significant digits or so; that is what is kept (the charts need no more).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Original size.
    pub original: Option<u64>,
    /// Compressed size (borg 1.x).
    pub compressed: Option<u64>,
    /// Deduplicated size.
    pub deduplicated: Option<u64>,
}

impl ArchiveStats {
    /// Each size of `self`, or where it has none, `other`'s (borg prints `--stats` on stderr
    /// or, with `--log-json` and such, elsewhere: both streams are read).
    pub fn or(self, other: Self) -> Self {
        Self {
            original: self.original.or(other.original),
            compressed: self.compressed.or(other.compressed),
            deduplicated: self.deduplicated.or(other.deduplicated),
        }
    }

    /// Notes the sizes in one line of borg's output (anything else is ignored).
    pub fn read_line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("This archive:") {
            let sizes = sizes_in(rest);
            if let [original, compressed, deduplicated] = sizes[..] {
                *self = Self {
                    original: Some(original),
                    compressed: Some(compressed),
                    deduplicated: Some(deduplicated),
                };
            }
        } else if let Some(rest) = line.strip_prefix("Original size:") {
            self.original = sizes_in(rest).first().copied();
        } else if let Some(rest) = line.strip_prefix("Deduplicated size:") {
            self.deduplicated = sizes_in(rest).first().copied();
        }
    }
}

/// The sizes written as borg writes them (`123 B`, `1.23 kB`, `4.5 MiB`) in `text`, in order.
fn sizes_in(text: &str) -> Vec<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut sizes = Vec::new();
    let mut i = 0;
    while i + 1 < words.len() {
        let (Ok(number), Some(factor)) = (words[i].parse::<f64>(), unit_factor(words[i + 1])) else {
            i += 1;
            continue;
        };
        if number.is_finite() && number >= 0.0 {
            sizes.push((number * factor).round() as u64);
        }
        i += 2;
    }
    sizes
}

fn unit_factor(unit: &str) -> Option<f64> {
    let decimal = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let binary = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if let Some(p) = decimal.iter().position(|u| *u == unit) {
        return Some(1000f64.powi(p as i32));
    }
    binary
        .iter()
        .position(|u| *u == unit)
        .map(|p| 1024f64.powi(p as i32))
}

/// `status --history NAME`: one row per run, oldest first (start in UTC, duration, bytes sent,
/// borg's `--stats` original and deduplicated sizes, borg's rc, our error).
pub fn history_table(records: &[HistoryRecord]) -> String {
    use crate::progress::{human_bytes, short_duration};
    let header = [
        "start (UTC)",
        "duration",
        "sent",
        "size",
        "deduplicated",
        "borg rc",
        "error",
    ];
    let dash = || "-".to_owned();
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                crate::time_text::utc(r.started),
                short_duration(std::time::Duration::from_millis(r.duration_ms)),
                human_bytes(r.bytes_sent),
                r.original_size.map_or_else(dash, human_bytes),
                r.deduplicated_size.map_or_else(dash, human_bytes),
                r.borg_rc.map_or_else(dash, |rc| rc.to_string()),
                r.error.as_ref().map_or_else(dash, |(code, m)| {
                    // One line per run, whatever the message holds (a terminal control
                    // sequence from a client is shown, not obeyed).
                    format!("{code}: {}", escape_for_log(m.replace('\n', " ").as_bytes()))
                }),
            ]
        })
        .collect();
    crate::progress::text_table(header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn record(i: u64) -> HistoryRecord {
        HistoryRecord {
            started: 1_700_000_000 + i * 3600,
            duration_ms: 1000 + i,
            bytes_sent: i * 10,
            borg_rc: Some(0),
            ..HistoryRecord::default()
        }
    }

    #[test]
    fn keeps_the_newest_records_within_the_count_bound() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        let total = MAX_HISTORY_RECORDS as u64 + 25;
        for i in 0..total {
            history.append("web1", &record(i)).unwrap();
        }
        let kept = history.load("web1");
        assert_eq!(kept.len(), MAX_HISTORY_RECORDS);
        assert_eq!(kept.first(), Some(&record(25)));
        assert_eq!(kept.last(), Some(&record(total - 1)));
        let file = dir.path().join("history/web1.jsonl");
        assert_eq!(fs_mode(&file), 0o600);
        assert_eq!(fs_mode(&dir.path().join("history")), 0o700);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("history"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names
            .iter()
            .for_each(|n| assert!(n == "web1.jsonl" || n == ".web1.lock", "{n:?} left"));
    }

    fn fs_mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn keeps_the_newest_records_within_the_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        // Long error messages: far fewer than the count bound fit in the size bound.
        let long = "x".repeat(MAX_HISTORY_BYTES / 30);
        for i in 0..70 {
            let mut r = record(i);
            r.error = Some((213, format!("{i} {long}")));
            history.append("web1", &r).unwrap();
        }
        let size = std::fs::metadata(dir.path().join("history/web1.jsonl"))
            .unwrap()
            .len();
        assert!(size <= MAX_HISTORY_BYTES as u64, "{size}");
        let kept = history.load("web1");
        assert!(kept.len() < 31 && kept.len() > 20, "{}", kept.len());
        assert_eq!(kept.last().unwrap().started, record(69).started);
    }

    #[test]
    fn concurrent_appends_lose_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let history = history.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        history.append("web1", &record(t * 100 + i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(history.load("web1").len(), 100);
    }

    #[test]
    fn a_corrupt_line_is_skipped_and_dropped_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        history.append("web1", &record(1)).unwrap();
        let file = dir.path().join("history/web1.jsonl");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("{\"started\": oops\n\u{0}\u{1}garbage\n");
        std::fs::write(&file, text).unwrap();
        assert_eq!(history.load("web1"), [record(1)]);
        history.append("web1", &record(2)).unwrap();
        assert_eq!(history.load("web1"), [record(1), record(2)]);
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    }

    #[test]
    fn an_oversized_file_is_read_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        let file = dir.path().join("history/web1.jsonl");
        let mut text = "x".repeat(3 * MAX_HISTORY_BYTES);
        text.push('\n');
        for i in 0..3 {
            text.push_str(&serde_json::to_string(&record(i)).unwrap());
            text.push('\n');
        }
        std::fs::write(&file, text).unwrap();
        assert_eq!(history.load("web1"), [record(0), record(1), record(2)]);
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        assert!(history.append("../x", &record(1)).is_err());
        assert!(history.load("..").is_empty());
        assert!(History::at(&dir.path().join("none")).load("web1").is_empty());
    }

    #[test]
    fn the_table_has_a_line_per_run_and_escapes_control_characters() {
        let mut failed = record(2);
        failed.borg_rc = None;
        failed.error = Some((213, "cannot connect\n\u{1b}[2Jto web1".into()));
        let mut ok = record(1);
        ok.original_size = Some(2048);
        let table = history_table(&[ok, failed]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("start (UTC)"));
        assert!(
            lines[1].starts_with("2023-11-14 23:13:20") && lines[1].contains("2.0 KiB"),
            "{table}"
        );
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(
            lines[2].ends_with("213: cannot connect \\x1b[2Jto web1"),
            "{table}"
        );
    }

    #[test]
    fn borg_stats_lines_of_borg_1_and_2() {
        let mut stats = ArchiveStats::default();
        stats.read_line("                       Original size      Compressed size    Deduplicated size");
        stats.read_line("This archive:                1.23 MB            800.50 kB               579 B");
        assert_eq!(
            stats,
            ArchiveStats {
                original: Some(1_230_000),
                compressed: Some(800_500),
                deduplicated: Some(579),
            }
        );
        let mut stats = ArchiveStats::default();
        stats.read_line("Original size: 2.00 GiB");
        stats.read_line("Deduplicated size: 12 B");
        assert_eq!(stats.original, Some(2 * 1024 * 1024 * 1024));
        assert_eq!(stats.deduplicated, Some(12));
        assert_eq!(stats.compressed, None);
        let mut stats = ArchiveStats::default();
        stats.read_line("This archive: lots");
        stats.read_line("All archives:   9 GB  8 GB  7 GB");
        assert_eq!(stats, ArchiveStats::default());
    }
}
