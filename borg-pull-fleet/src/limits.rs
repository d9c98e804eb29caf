//! Every timeout and size of the borg runs on this server (retention, checks, status), with the
//! reason for its value. Tests shorten the timeouts through [`BorgLimits`].

use std::time::Duration;

/// How long `borg prune` may run after a create.
///
/// Prune deletes archive metadata and updates the chunk reference counts through the cache: a
/// few seconds for a small repository, minutes for one with millions of chunks and a cold cache
/// (the first prune on this server builds the cache from every archive). Two hours is far beyond
/// that; past it borg is stuck (e.g. on a dead NFS mount) and is stopped so the run can finish.
pub const PRUNE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// How long `borg compact` may run after a prune.
///
/// Compact rewrites every segment with freed space: after a large prune it copies up to the whole
/// repository once, at disk speed (a 1 TB repository at 100 MB/s: under 3 hours). Six hours
/// leaves room for slow disks and still ends before the next nightly run.
pub const COMPACT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// How long `borg check` may run.
///
/// A full check (repository and archives) reads and decrypts every chunk: 4 TB at 200 MB/s is
/// about 5.5 hours, slower with encryption on a small CPU. A day is the bound after which it can
/// no longer be what the operator wants to wait for.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long `status`'s `borg list --json --last 1` may run per client.
///
/// It reads the manifest and one archive's metadata: about a second (python start-up) locally.
/// A minute allows for a busy disk; beyond that `status`, often a monitoring check with its own
/// timeout, must answer rather than hang.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `status`'s `borg info --json` (the repository's size) may run per client.
///
/// It reads borg's chunks cache on this server: about a second when the cache is current (a
/// prune on this server, or the previous `status`, brought it up to date). When it is not, borg
/// first fetches the metadata of every archive it has not seen (seconds per archive of a large
/// client); what it fetched stays in the cache, so a run cut short here is continued by the next.
/// Five minutes keeps `status` answering; the size is then absent for that client (logged).
pub const INFO_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most stdout of `borg info --json` that is read.
///
/// The answer is under 2 KiB (paths of the cache and security directories, ids, six numbers).
/// 1 MiB is far more; anything larger is not borg's answer.
pub const MAX_INFO_JSON: usize = 1024 * 1024;

/// `--lock-wait` of prune, compact and check (seconds).
///
/// The create before them has released the lock; what may still hold it briefly is a `status`
/// reading the same repository (a shared lock held for about a second). A minute covers that
/// without waiting on a lock that some hung process will never release.
pub const RETENTION_LOCK_WAIT_SECS: u64 = 60;

/// `--lock-wait` of `status`'s `borg list` (seconds).
///
/// While a backup runs, the repository is locked exclusively for hours; `status` then reports it
/// as unreadable (naming the lock) after this short wait instead of blocking a monitoring check.
pub const LIST_LOCK_WAIT_SECS: u64 = 10;

/// How long a borg that ran past its timeout gets after SIGTERM before SIGKILL.
///
/// On SIGTERM borg rolls back its transaction and removes its lock, which takes a second or two;
/// killed at once it would leave a lock that blocks the next backup until `borg break-lock`.
pub const KILL_GRACE: Duration = Duration::from_secs(30);

/// The most stdout of `borg list --json --last 1` that is read.
///
/// The answer for one archive is under 1 KiB (archive name up to 255 bytes, ids, times, the
/// repository's location). 1 MiB is far more; anything larger is not borg's answer.
pub const MAX_LIST_JSON: usize = 1024 * 1024;

/// The timeouts of one set of borg runs, so tests can shorten them; [`Default`] is the constants
/// above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BorgLimits {
    /// See [`PRUNE_TIMEOUT`].
    pub prune: Duration,
    /// See [`COMPACT_TIMEOUT`].
    pub compact: Duration,
    /// See [`CHECK_TIMEOUT`].
    pub check: Duration,
    /// See [`LIST_TIMEOUT`].
    pub list: Duration,
    /// See [`INFO_TIMEOUT`].
    pub info: Duration,
    /// See [`KILL_GRACE`].
    pub kill_grace: Duration,
}

impl Default for BorgLimits {
    fn default() -> Self {
        Self {
            prune: PRUNE_TIMEOUT,
            compact: COMPACT_TIMEOUT,
            check: CHECK_TIMEOUT,
            list: LIST_TIMEOUT,
            info: INFO_TIMEOUT,
            kill_grace: KILL_GRACE,
        }
    }
}

/// The most stdout of `run`'s `borg list --format {id}` (every archive id of a client's
/// repository, read before and after its job to see whether an archive appeared).
///
/// One id is 65 bytes (64 hex digits and a newline): 4 MiB is about 64,000 archives, an hourly
/// backup kept for seven years. A longer answer is refused (retention is then skipped and said
/// so) rather than held: `run` holds one such list per client in flight.
pub const MAX_ARCHIVE_IDS: usize = 4 * 1024 * 1024;

/// How often, at most, `run` logs a client's latest borg progress line (`--progress`) when its
/// output is not a terminal (journald, a file).
///
/// borg redraws its progress line about five times a second with a carriage return; logged
/// whole, a night's run filled the journal with one long line of `^M`. One line a minute shows a
/// long create moving (480 lines for 8 hours) and costs nothing for a short one, which logs none.
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The longest progress text kept per client (borg's latest `--progress` line, for the log or
/// the live display), in bytes; the rest is cut.
///
/// borg's progress line is its terminal's width plus a path; a terminal line shows at most a few
/// hundred characters. Bounds what a client printing an endless line without newline makes us hold
/// beyond [`crate::run::MAX_LINE`].
pub const MAX_PROGRESS_TEXT: usize = 512;

/// How often the live display on a terminal is redrawn.
///
/// Four times a second reads as live (borg itself redraws about five times a second) while a
/// run of 32 clients writes at most a few KiB a second to the terminal.
pub const REDRAW_INTERVAL: Duration = Duration::from_millis(250);
/// How long the relay `run` would install may take to answer `--version` (`check-config`).
///
/// The relay is a static binary that prints one line and exits, in milliseconds. Ten seconds
/// covers a loaded machine; a program that takes longer is not the relay.
pub const RELAY_VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one notification may take (`[notify]`): the whole HTTP request (resolve, connect,
/// TLS, send, answer) or the `sendmail` program's run.
///
/// A webhook, ntfy or Healthchecks answers in well under a second; sendmail queues the message
/// and returns in milliseconds. Ten seconds covers a slow link and a loaded MTA; past it the
/// receiver is down, and a notification must never hold up the run (tried twice, so a receiver
/// that never answers costs at most twice this plus [`NOTIFY_RETRY_DELAY`], beside the pulls).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause before a failed notification's second attempt.
///
/// Long enough for a receiver that answered 502/503 while restarting, short enough not to
/// matter at the end of a run.
pub const NOTIFY_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long the end of `run` (and `status --notify`) waits for the notifications still being
/// sent before stopping them.
///
/// Every send ends by itself within two attempts ([`NOTIFY_TIMEOUT`] twice plus
/// [`NOTIFY_RETRY_DELAY`]: 21 s); 30 s is that with slack, so this bound only stops a send that
/// hangs despite its own timeout.
pub const NOTIFY_DRAIN: Duration = Duration::from_secs(30);

/// The most of Healthchecks' ping body (the client's last log lines) that is sent, in bytes.
///
/// Healthchecks keeps the first 10,000 bytes of a ping's body (its `PING_BODY_LIMIT` default);
/// the end of the log (the error, borg's `--stats`) is what matters, so the end is kept.
pub const MAX_PING_BODY: usize = 10_000;

/// The most of `sendmail`'s stderr read (for the warn line when it fails).
///
/// An MTA's complaint is one or two lines; 4 KiB holds them and bounds a program that floods it.
pub const MAX_NOTIFY_STDERR: usize = 4096;

/// How long after an `overdue` alert the same client is alerted again while it stays overdue.
///
/// `run --due` runs hourly and `status --notify` from cron as often: one alert per client per
/// day reminds without flooding; a recovery clears the mark at once.
pub const OVERDUE_REPEAT: Duration = Duration::from_secs(24 * 3600);

/// The system's CA bundle (Debian's `ca-certificates`), trusted for `https://` notifications
/// unless `[notify] ca_file` names another; the roots built into the program are the fallback
/// where it is missing.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client is due this fraction of its `every` early (`every / 32`: 45 minutes of a day).
///
/// `every` is counted from the start of the last successful pull, and an hourly `run --due`
/// starts a few seconds to minutes late (systemd's timer accuracy, clients waiting for a free
/// slot of `jobs`). Without slack a daily client pulled at 02:00:40 would not be due at 02:00:05
/// the next night and would slip an hour later every day; with 3% it stays at its hour, as
/// BackupPC's `IncrPeriod = 0.97` does.
pub const DUE_EARLY_DIVISOR: u32 = 32;

/// The most records a client's run history keeps (`STATE_DIR/history/NAME.jsonl`); older ones
/// are dropped as new ones come.
///
/// 400 runs are more than a year of nightly runs and over two weeks of hourly `--due` attempts,
/// enough for the status page's charts to show a trend and for `status --history` to show when
/// a client started failing. At a few hundred bytes a record the file stays well under
/// [`MAX_HISTORY_BYTES`], and rewriting it on each append (for an atomic replace) costs
/// milliseconds.
pub const MAX_HISTORY_RECORDS: usize = 400;

/// The most bytes a client's run history keeps (and the most of it that is read).
///
/// A record is about 200 bytes; a long error message (borg's, or ours with its hint) can make one
/// a few KiB. 1 MiB bounds the file, what `status` and the page read per client (a fleet of 100
/// clients: at most 100 MiB, in practice 400 records of 200 bytes: 8 MiB) and the rewrite per
/// append, whatever a client makes its error messages.
pub const MAX_HISTORY_BYTES: usize = 1024 * 1024;

/// The most runs per client the status page charts (the newest ones).
///
/// A chart 300 pixels wide shows 120 bars of 2 pixels or more; beyond that bars merge into a
/// blur. It also bounds the page: a fleet of 100 clients with three charts of 120 points each is
/// a few hundred KiB of SVG.
pub const PAGE_CHART_RUNS: usize = 120;

/// The longest error text the status page shows per client, in characters; the rest is cut (the
/// whole message is in `status --history NAME --json`).
///
/// Errors are a sentence or two with a hint (under 500 characters); borg's own output can be
/// longer. A page meant for a glance stays readable, and its size bounded whatever a client
/// prints.
pub const PAGE_MAX_ERROR_CHARS: usize = 600;

/// How long appending to a client's history waits for another process's append to that
/// client's history to end.
///
/// An append reads, trims and rewrites at most [`MAX_HISTORY_BYTES`]: milliseconds. Five seconds
/// covers a slow disk; past it the record is not written (a warning) rather than holding up the
/// run's end.
pub const HISTORY_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How old a stored repository reading (newest archive, sizes) may be before the end of `run`
/// reads that repository again although the run did not pull the client.
///
/// Only our own pulls and retention write to a repository, and the end of `run` reads again
/// every client it pulled, so a stored reading stays true until someone works on the
/// repository by hand (`borg prune`, `borg delete`, a restored copy). Reading each repository
/// once a day bounds how long such a change goes unseen in the textfile, at one `borg list` and
/// one `borg info` per client a day instead of every hour of `run --due`. `status` always reads
/// every repository.
pub const READING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long a change to a client's state record waits for another process's change to end.
///
/// A change loads, edits and atomically rewrites a file of a few hundred bytes: milliseconds. Five
/// seconds covers a slow disk; past it the change fails with a warning (a lost record is logged,
/// never fatal to a backup) rather than holding up a run.
pub const STATE_LOCK_WAIT: Duration = Duration::from_secs(5);
