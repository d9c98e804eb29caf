//! What `run` shows while it runs: borg's progress lines (`--progress`, redrawn in place with a
//! carriage return) either logged now and then ([`Display::Log`], for journald or a file) or in
//! a live display on a terminal ([`Display::Live`]): one line per running client (its name, its
//! phase, its time so far and borg's latest progress text cut to the terminal's width), redrawn
//! in place below everything else `run` writes, until the summary.
//!
//! - Memory is bounded: one progress text per client ([`MAX_PROGRESS_TEXT`]), one line per
//!   client, whatever the clients print.
//! - What a client prints reaches the live display without control characters: its text cannot
//!   move our cursor or change the terminal.
//! - Everything else written to the terminal while the display is up (borg's whole lines, our
//!   log lines through [`log_writer`]) is written above it: the display is cleared, the line
//!   written and the display drawn again, under one lock, so nothing is drawn over.
//! - No dependency beyond ANSI escapes: `ESC[nA` (cursor up), `ESC[J` (clear to the end of the
//!   screen); the terminal's size comes from `TIOCGWINSZ`.
//!
//! ```
//! use borg_pull_fleet::progress::{human_bytes, short_duration};
//! use std::time::Duration;
//! assert_eq!(human_bytes(1_288_490_189), "1.2 GiB");
//! assert_eq!(human_bytes(512), "512 B");
//! assert_eq!(short_duration(Duration::from_secs(63)), "1m03s");
//! ```

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::limits::{MAX_PROGRESS_TEXT, PROGRESS_LOG_INTERVAL};
use crate::retention::Step;

/// Where a client is in its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a free slot (`--jobs`).
    Waiting,
    /// Listing its repository's archives before the job (to tell afterwards whether one
    /// appeared).
    Listing,
    /// Its job on the client, named by borg's subcommand (`create`, `extract`, ...) or `job`.
    Job(String),
    /// A retention step on this server.
    Retention(Step),
    /// Finished.
    Done,
}

impl Phase {
    fn label(&self) -> &str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Listing => "listing",
            Phase::Job(name) => name,
            Phase::Retention(step) => step.name(),
            Phase::Done => "done",
        }
    }
}

/// The label of a client's job in the display: borg's (or borgmatic's) action in its arguments,
/// else `job`. The first non-option argument is not always it (`-c FILE create`).
pub fn job_label(args: &[String]) -> String {
    const ACTIONS: [&str; 16] = [
        "create",
        "extract",
        "list",
        "info",
        "check",
        "prune",
        "compact",
        "diff",
        "delete",
        "export-tar",
        "rlist",
        "repo-list",
        "rcreate",
        "repo-create",
        "transfer",
        "mount",
    ];
    args.iter()
        .find(|a| ACTIONS.contains(&a.as_str()))
        .cloned()
        .unwrap_or_else(|| "job".to_owned())
}

/// How `run` shows progress.
#[derive(Clone)]
pub enum Display {
    /// Not a terminal: a client's latest progress line is written as a whole line at most once
    /// per interval ([`PROGRESS_LOG_INTERVAL`]), the first one interval after borg's first.
    Log {
        /// At most one progress line per client this often.
        every: Duration,
    },
    /// A terminal: the live display.
    Live(LiveDisplay),
}

impl Default for Display {
    fn default() -> Self {
        Display::Log {
            every: PROGRESS_LOG_INTERVAL,
        }
    }
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Display::Log { every } => write!(f, "Log every {}s", every.as_secs_f64()),
            Display::Live(_) => f.write_str("Live"),
        }
    }
}

/// The terminal's size: (columns, rows).
pub type SizeFn = Box<dyn Fn() -> (usize, usize) + Send>;

/// The live display on a terminal (cheap to clone: one shared state).
#[derive(Clone)]
pub struct LiveDisplay {
    inner: Arc<Mutex<Live>>,
}

struct Live {
    /// The terminal (stderr).
    term: Box<dyn Write + Send>,
    /// Where borg's stdout lines go, and whether that is the same terminal (then the display
    /// is cleared around them too).
    out: Box<dyn Write + Send>,
    out_is_term: bool,
    size: SizeFn,
    rows: Vec<Row>,
    /// Lines of the display now on the screen, above the cursor.
    drawn: usize,
    started: Instant,
    /// Something changed since the last draw.
    dirty: bool,
    /// The whole second of the last draw (the times shown change every second).
    drawn_second: u64,
    state: LiveState,
}

/// Whether the display is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveState {
    /// Before [`LiveDisplay::begin`].
    NotStarted,
    Drawing,
    /// After [`LiveDisplay::finish`]: lines are written as they come, nothing is drawn.
    Finished,
}

struct Row {
    name: String,
    phase: Phase,
    since: Option<Instant>,
    text: String,
}

/// The display whose block [`log_writer`] writes above, while one is drawn.
static ACTIVE: Mutex<Option<LiveDisplay>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveDisplay {
    /// A display on this process's stderr (a terminal), with borg's stdout lines to our stdout.
    pub fn stderr() -> Self {
        use std::io::IsTerminal as _;
        let out_is_term = io::stdout().is_terminal();
        Self::new(
            Box::new(io::stderr()),
            Box::new(io::stdout()),
            out_is_term,
            Box::new(terminal_size),
        )
    }

    /// A display on `term` with borg's stdout lines to `out` (`out_is_term`: the same
    /// terminal), sized by `size`.
    pub fn new(
        term: Box<dyn Write + Send>,
        out: Box<dyn Write + Send>,
        out_is_term: bool,
        size: SizeFn,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Live {
                term,
                out,
                out_is_term,
                size,
                rows: Vec::new(),
                drawn: 0,
                started: Instant::now(),
                dirty: true,
                drawn_second: 0,
                state: LiveState::NotStarted,
            })),
        }
    }

    /// Starts drawing, one line per client of `names` once it runs; our log lines go above it
    /// from now on ([`log_writer`]).
    pub fn begin(&self, names: &[String]) {
        {
            let mut live = lock(&self.inner);
            live.rows = names
                .iter()
                .map(|name| Row {
                    name: name.clone(),
                    phase: Phase::Waiting,
                    since: None,
                    text: String::new(),
                })
                .collect();
            live.started = Instant::now();
            live.state = LiveState::Drawing;
            live.dirty = true;
        }
        *lock(&ACTIVE) = Some(self.clone());
    }

    /// Clears the display for good (before the summary); later lines are written as they come.
    pub fn finish(&self) {
        let mut active = lock(&ACTIVE);
        if active
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(&a.inner, &self.inner))
        {
            *active = None;
        }
        drop(active);
        let mut live = lock(&self.inner);
        let mut buf = Vec::new();
        live.clear_into(&mut buf);
        live.state = LiveState::Finished;
        let _ = live.term.write_all(&buf).and_then(|()| live.term.flush());
    }

    /// Client `index` is now in `phase`.
    pub fn phase(&self, index: usize, phase: Phase) {
        let mut live = lock(&self.inner);
        if let Some(row) = live.rows.get_mut(index) {
            if row.since.is_none() && !matches!(phase, Phase::Waiting) {
                row.since = Some(Instant::now());
            }
            row.phase = phase;
            live.dirty = true;
        }
    }

    /// borg's latest progress text of client `index` (already cleaned, see [`clean_progress`]).
    pub fn progress(&self, index: usize, text: &str) {
        let mut live = lock(&self.inner);
        if let Some(row) = live.rows.get_mut(index) {
            if row.text != text {
                row.text.clear();
                row.text.push_str(text);
                live.dirty = true;
            }
        }
    }

    /// Writes one whole line (borg's stdout line to our stdout when `stderr` is false) above the
    /// display.
    pub fn line(&self, stderr: bool, line: &[u8]) {
        let mut live = lock(&self.inner);
        if stderr || live.out_is_term {
            let mut buf = Vec::new();
            live.clear_into(&mut buf);
            if stderr {
                buf.extend_from_slice(line);
                live.draw_into(&mut buf);
                let _ = live.term.write_all(&buf).and_then(|()| live.term.flush());
            } else {
                let _ = live.term.write_all(&buf).and_then(|()| live.term.flush());
                let _ = live.out.write_all(line).and_then(|()| live.out.flush());
                let mut buf = Vec::new();
                live.draw_into(&mut buf);
                let _ = live.term.write_all(&buf).and_then(|()| live.term.flush());
            }
        } else {
            let _ = live.out.write_all(line).and_then(|()| live.out.flush());
        }
    }

    /// Redraws when something changed or a second passed (the times shown); called every
    /// [`crate::limits::REDRAW_INTERVAL`].
    pub fn tick(&self) {
        let mut live = lock(&self.inner);
        let second = live.started.elapsed().as_secs();
        if live.state != LiveState::Drawing || (!live.dirty && second == live.drawn_second) {
            return;
        }
        let mut buf = Vec::new();
        live.clear_into(&mut buf);
        live.draw_into(&mut buf);
        let _ = live.term.write_all(&buf).and_then(|()| live.term.flush());
    }
}

impl Live {
    /// Moves up over the display and clears it to the end of the screen.
    fn clear_into(&mut self, buf: &mut Vec<u8>) {
        if self.drawn > 0 {
            buf.extend_from_slice(format!("\r\x1b[{}A\x1b[J", self.drawn).as_bytes());
            self.drawn = 0;
        }
    }

    /// The display's lines, each shorter than the terminal is wide (so none wraps and the
    /// cursor-up count stays right) and no more than fit on the screen.
    fn draw_into(&mut self, buf: &mut Vec<u8>) {
        if self.state != LiveState::Drawing {
            return;
        }
        let (columns, screen_rows) = (self.size)();
        let width = columns.max(20) - 1;
        let now = Instant::now();
        let running: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !matches!(r.phase, Phase::Waiting | Phase::Done))
            .collect();
        let done = self.rows.iter().filter(|r| r.phase == Phase::Done).count();
        let waiting = self.rows.iter().filter(|r| r.phase == Phase::Waiting).count();
        // The status line, and the running clients in what is left of the screen.
        let room = screen_rows.max(3) - 2;
        let shown = running.len().min(room);
        let name_width = running[..shown]
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut lines = Vec::with_capacity(shown + 1);
        for row in &running[..shown] {
            let elapsed = row.since.map(|s| now - s).unwrap_or_default();
            lines.push(format!(
                "{:<name_width$}  {:<8} {:>7}  {}",
                row.name,
                row.phase.label(),
                whole_seconds(elapsed),
                row.text
            ));
        }
        let mut status = format!(
            "borg-pull run: {done}/{} done, {} running, {waiting} waiting, {}",
            self.rows.len(),
            running.len(),
            whole_seconds(now - self.started)
        );
        if shown < running.len() {
            status.push_str(&format!(" ({} running not shown)", running.len() - shown));
        }
        lines.push(status);
        for line in &lines {
            buf.extend_from_slice(fit(line, width).as_bytes());
            buf.push(b'\n');
        }
        self.drawn = lines.len();
        self.dirty = false;
        self.drawn_second = self.started.elapsed().as_secs();
    }
}

/// `text` cut to at most `width` columns, counting every non-ASCII character as two (wide
/// characters take two; a line that is cut too short never wraps).
fn fit(text: &str, width: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += if c.is_ascii() { 1 } else { 2 };
        if used > width {
            return &text[..at];
        }
    }
    text
}

/// The terminal size of stderr (columns, rows), else `COLUMNS`/`LINES`, else 80x24.
pub fn terminal_size() -> (usize, usize) {
    let from_env = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(default)
    };
    match rustix::termios::tcgetwinsize(io::stderr()) {
        Ok(size) if size.ws_col > 0 && size.ws_row > 0 => {
            (usize::from(size.ws_col), usize::from(size.ws_row))
        }
        _ => (from_env("COLUMNS", 80), from_env("LINES", 24)),
    }
}

/// A client's progress text as shown: control characters (the carriage returns, escapes a
/// client might send) become spaces, surrounding blanks go, and it is cut to
/// [`MAX_PROGRESS_TEXT`] bytes at a character boundary. Empty when borg only cleared its line.
pub fn clean_progress(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len().min(MAX_PROGRESS_TEXT));
    for c in text.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_PROGRESS_TEXT {
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

/// A writer for our log lines (`tracing_subscriber`'s `with_writer`): each event is written to
/// stderr whole, above the live display while one is drawn.
pub fn log_writer() -> LogWriter {
    LogWriter { buf: Vec::new() }
}

/// See [`log_writer`]: holds one event and writes it when flushed or dropped.
#[derive(Debug)]
pub struct LogWriter {
    buf: Vec<u8>,
}

impl LogWriter {
    fn emit(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let active = lock(&ACTIVE).clone();
        match active {
            Some(display) => display.line(true, &self.buf),
            None => {
                let _ = io::stderr().write_all(&self.buf);
            }
        }
        self.buf.clear();
    }
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit();
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

/// `512 B`, `1.2 KiB`, `1.2 GiB` (binary units, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `42s`, then `2m05s`, `1h02m03s`: the live display's times, which change once a second.
fn whole_seconds(d: Duration) -> String {
    if d.as_secs() < 60 {
        format!("{}s", d.as_secs())
    } else {
        short_duration(d)
    }
}

/// `4.2s` under a minute, then `2m05s`, `1h02m03s`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

/// A plain-text table for people: columns padded to their widest cell (two spaces between), the
/// last column unpadded, trailing blanks trimmed; `run`'s summary and `status --history`.
pub(crate) fn text_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
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
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024 + 300 * 1024 * 1024), "5.3 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(short_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(short_duration(Duration::from_secs(63)), "1m03s");
        assert_eq!(short_duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn progress_text_has_no_control_characters_and_is_bounded() {
        assert_eq!(clean_progress(b"  1.2 GB O 3 N /etc\r"), "1.2 GB O 3 N /etc");
        assert_eq!(clean_progress(b"\x1b[2J\x1b]0;pwned\x07x"), "[2J ]0;pwned x");
        assert_eq!(clean_progress(b"        "), "");
        let long = "\u{e9}".repeat(MAX_PROGRESS_TEXT);
        let cut = clean_progress(long.as_bytes());
        assert!(cut.len() <= MAX_PROGRESS_TEXT && cut.len() >= MAX_PROGRESS_TEXT - 1);
    }

    #[test]
    fn the_job_is_named_by_its_action() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(job_label(&args(&["create", "--stats", "::x", "/etc"])), "create");
        assert_eq!(
            job_label(&args(&["-c", "/etc/borgmatic.yaml", "create"])),
            "create"
        );
        assert_eq!(job_label(&args(&["--progress", "extract", "::a"])), "extract");
        assert_eq!(job_label(&args(&["-c", "x.yaml"])), "job");
    }

    /// A shared buffer standing for the terminal.
    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Screen {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *lock(&self.0))).unwrap()
        }
    }

    #[test]
    fn the_display_is_drawn_in_place_cut_to_the_width_and_lines_go_above_it() {
        let screen = Screen::default();
        let live = LiveDisplay::new(
            Box::new(screen.clone()),
            Box::new(screen.clone()),
            true,
            Box::new(|| (60, 10)),
        );
        live.begin(&["web1".into(), "db2".into(), "mail3".into()]);
        live.phase(0, Phase::Job("create".into()));
        live.progress(0, &clean_progress(&[b'x'; 300]));
        live.phase(1, Phase::Retention(Step::Prune));
        live.tick();
        let first = screen.take();
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3, "{first:?}");
        assert!(lines[0].starts_with("web1  create "), "{first:?}");
        assert!(lines[1].starts_with("db2   prune "), "{first:?}");
        assert!(lines[2].starts_with("borg-pull run: 0/3 done, 2 running, 1 waiting"));
        assert!(lines.iter().all(|l| l.chars().count() <= 59), "{first:?}");
        assert_eq!(lines[0].chars().count(), 59, "cut to the width: {first:?}");
        // Nothing changed within the second: nothing drawn.
        live.tick();
        assert_eq!(screen.take(), "");
        // A line goes above: the display is cleared (3 lines up), the line written, redrawn.
        live.line(true, b"web1: Archive name: a\n");
        let second = screen.take();
        assert!(
            second.starts_with("\r\x1b[3A\x1b[Jweb1: Archive name: a\nweb1  create"),
            "{second:?}"
        );
        live.phase(0, Phase::Done);
        live.phase(1, Phase::Done);
        live.tick();
        let third = screen.take();
        assert!(
            third.contains("\x1b[Jborg-pull run: 2/3 done, 0 running, 1 waiting, "),
            "{third:?}"
        );
        assert_eq!(third.lines().count(), 1, "only the status line: {third:?}");
        live.finish();
        assert_eq!(screen.take(), "\r\x1b[1A\x1b[J");
        live.tick();
        live.line(true, b"after\n");
        assert_eq!(screen.take(), "after\n");
    }
}
