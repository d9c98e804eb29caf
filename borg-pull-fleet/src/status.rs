//! `status`: the newest archive per client and its age (`borg list`) and the repository's size
//! (`borg info`), read from the repositories on this server only (no client is contacted), with
//! the last run's result from the [`StateStore`].
//!
//! A client is stale when its repository has no archive, cannot be read, or its newest archive is
//! older than the client's `max_age`.
//!
//! Each reading is kept in the client's state record ([`crate::state::RepoReading`]): the end of
//! `run` reads again only the repositories that may have changed ([`reading_due`],
//! [`may_have_changed`]) and takes the others from there.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::text::escape_for_log;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{Client, Fleet, ServerSettings};
use crate::limits::{BorgLimits, LIST_LOCK_WAIT_SECS, MAX_INFO_JSON, MAX_LIST_JSON, READING_MAX_AGE};
use crate::retention::unix_now;
use crate::schedule::{standing, Standing};
use crate::server_borg::BorgRun;
use crate::state::{Attempt, ClientState, Outcome, RepoReading, RetentionResults, RunRecord, StateStore};
use crate::time_text::utc_minutes;
use tracing::{debug, info, warn};

/// One client's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientStatus {
    /// The client's name.
    pub name: String,
    /// Its repository on this server.
    pub repo: PathBuf,
    /// The newest archive's name (as borg prints it; the client chose it).
    pub newest_archive: Option<String>,
    /// The newest archive's time, Unix seconds.
    pub newest_time: Option<u64>,
    /// How old the newest archive is (0 if its time is in the future); `age_seconds` in JSON.
    #[serde(rename = "age_seconds", serialize_with = "serialize_secs_opt")]
    pub age: Option<Duration>,
    /// The client's `max_age`; `max_age_seconds` in JSON.
    #[serde(rename = "max_age_seconds", serialize_with = "serialize_secs")]
    pub max_age: Duration,
    /// No archive, an unreadable repository, or a newest archive older than `max_age`.
    pub stale: bool,
    /// The last run recorded by `run`.
    pub last_run: Option<RunRecord>,
    /// The last prune, compact and check recorded by `run`.
    pub retention: RetentionResults,
    /// Why the repository could not be read.
    pub error: Option<String>,
    /// The repository's size from `borg info --json`; absent when it could not be read (the
    /// reason is logged; a readable repository is not stale for it).
    pub repository_size: Option<RepoSize>,
    /// Its standing by the schedule ([`crate::schedule::standing`]): in JSON `health`,
    /// `last_success`, `next_due`, `due_now`, `failures_in_a_row` beside the other keys.
    #[serde(flatten)]
    pub standing: Standing,
    /// How long ago its last successful pull started.
    #[serde(rename = "last_success_age_seconds", serialize_with = "serialize_secs_opt")]
    pub last_success_age: Option<Duration>,
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

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn serialize_secs_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// The status of every client of `fleet`, in config order; `server.jobs` repositories are read
/// at once. Each reading is stored in the client's state record (see [`reading_due`]).
pub async fn status(fleet: &Fleet, store: &StateStore) -> Vec<ClientStatus> {
    status_with(fleet, store, &BorgLimits::default()).await
}

/// [`status`] with other timeouts (tests).
pub async fn status_with(fleet: &Fleet, store: &StateStore, limits: &BorgLimits) -> Vec<ClientStatus> {
    let all: Vec<usize> = (0..fleet.clients.len()).collect();
    let readings = read_repositories(fleet, &all, limits).await;
    let readings: Vec<Option<RepoReading>> = readings.into_iter().map(Some).collect();
    store_readings(fleet, store, &readings, SaveFailure::Debug);
    let now = unix_now();
    fleet
        .clients
        .iter()
        .zip(readings)
        .map(|(client, reading)| client_status_read(client, reading.as_ref(), store, now))
        .collect()
}

/// Why the end of `run` reads a client's repository again instead of using its stored reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReason {
    /// This run pulled the client (its create, and retention after it, may have changed it).
    Pulled,
    /// No reading is stored (a first run, or a state file from before readings were kept).
    NoReading,
    /// The stored reading is older than [`READING_MAX_AGE`] (or from the future: the clock was
    /// set back).
    Old,
    /// The stored reading failed (no list, or no size): it is tried again at once.
    Failed,
}

impl ReadReason {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pulled => "pulled by this run",
            Self::NoReading => "no stored reading",
            Self::Old => "stored reading too old",
            Self::Failed => "stored reading failed",
        }
    }
}

/// Whether (and why) a client's repository is read again at the end of `run` at `now`;
/// `None`: its stored reading stands for it.
pub fn reading_due(state: &ClientState, pulled: bool, now: u64) -> Option<ReadReason> {
    if pulled {
        return Some(ReadReason::Pulled);
    }
    let Some(reading) = &state.repo_reading else {
        return Some(ReadReason::NoReading);
    };
    if reading.at > now || now - reading.at > READING_MAX_AGE.as_secs() {
        return Some(ReadReason::Old);
    }
    if reading.error.is_some() || reading.size.is_none() {
        return Some(ReadReason::Failed);
    }
    None
}

/// Whether this run's attempt at a client, started at `started` (Unix seconds), may have changed
/// its repository: not when it did not even reach the client (no SSH connection, so no `borg
/// serve`) and the stored reading was taken after the client's last success. An unreachable
/// laptop retried every hour then costs no borg start on this server.
pub fn may_have_changed(state: &ClientState, started: u64) -> bool {
    let unreached = matches!(
        state.last_attempt,
        Some(Attempt { ended, outcome: Outcome::Unreachable }) if ended >= started
    );
    let Some(reading) = state.repo_reading.as_ref().filter(|_| unreached) else {
        return true;
    };
    let success_end = state
        .last_success
        .as_ref()
        .map_or(0, |r| r.started.saturating_add(r.duration_ms / 1000));
    reading.at < success_end
}

/// The statuses at the end of `run` that pulled the clients named in `pulled`: the repositories
/// that [`reading_due`] names are read (and their readings stored), every other client comes
/// from its stored reading, ages from now. Clients in the same order as `fleet`.
pub async fn status_after_run(
    fleet: &Fleet,
    store: &StateStore,
    pulled: &[&str],
    limits: &BorgLimits,
) -> Vec<ClientStatus> {
    let start = unix_now();
    let states: Vec<ClientState> = fleet.clients.iter().map(|c| store.load(&c.name)).collect();
    let mut which = Vec::new();
    for (index, (client, state)) in fleet.clients.iter().zip(&states).enumerate() {
        let reason = reading_due(state, pulled.contains(&client.name.as_str()), start);
        match reason {
            Some(reason) => {
                debug!(client = %escape_for_log(client.name.as_bytes()), "reading the repository: {}", reason.as_str());
                which.push(index);
            }
            None => {
                debug!(client = %escape_for_log(client.name.as_bytes()), "repository not read: its stored reading is current")
            }
        }
    }
    info!(
        read = which.len(),
        from_state = fleet.clients.len() - which.len(),
        "reading the repositories the run may have changed ({} of {})",
        which.len(),
        fleet.clients.len()
    );
    let fresh = read_repositories(fleet, &which, limits).await;
    let mut readings: Vec<Option<RepoReading>> = states.into_iter().map(|s| s.repo_reading).collect();
    let mut read: Vec<Option<RepoReading>> = vec![None; fleet.clients.len()];
    for (index, reading) in which.into_iter().zip(fresh) {
        read[index] = Some(reading);
    }
    store_readings(fleet, store, &read, SaveFailure::Warn);
    for (slot, fresh) in readings.iter_mut().zip(read) {
        if fresh.is_some() {
            *slot = fresh;
        }
    }
    let now = unix_now();
    fleet
        .clients
        .iter()
        .zip(readings)
        .map(|(client, reading)| client_status_read(client, reading.as_ref(), store, now))
        .collect()
}

/// The statuses from the stored readings alone, for the clients whose stored reading is current
/// and that are not in `pulled` (their repositories may have changed since): what the end of an
/// interrupted run can still tell without reading a repository.
pub fn stored_statuses(fleet: &Fleet, store: &StateStore, pulled: &[&str]) -> Vec<ClientStatus> {
    let now = unix_now();
    fleet
        .clients
        .iter()
        .filter(|c| !pulled.contains(&c.name.as_str()))
        .filter_map(|client| {
            let state = store.load(&client.name);
            if reading_due(&state, false, now).is_some() {
                return None;
            }
            Some(client_status_read(
                client,
                state.repo_reading.as_ref(),
                store,
                now,
            ))
        })
        .collect()
}

/// What to do when a reading cannot be stored: `status` may run as a user who can read the
/// repositories but not write the state directory (debug); `run` owns it (warn).
#[derive(Debug, Clone, Copy)]
enum SaveFailure {
    Debug,
    Warn,
}

/// Stores each reading taken (`Some`) in its client's state record.
fn store_readings(fleet: &Fleet, store: &StateStore, readings: &[Option<RepoReading>], failure: SaveFailure) {
    for (client, reading) in fleet.clients.iter().zip(readings.iter()) {
        let Some(reading) = reading else { continue };
        if let Err(e) = store.record_reading(&client.name, reading.clone()) {
            let name = escape_for_log(client.name.as_bytes());
            match failure {
                SaveFailure::Debug => debug!(client = %name, "cannot store the repository reading: {e}"),
                SaveFailure::Warn => warn!(client = %name, "cannot store the repository reading: {e}"),
            }
        }
    }
}

/// Reads the repositories of the clients of `fleet` at `indices`, `server.jobs` at once; one
/// reading per index, in their order.
async fn read_repositories(fleet: &Fleet, indices: &[usize], limits: &BorgLimits) -> Vec<RepoReading> {
    let slots = Arc::new(Semaphore::new(fleet.server.jobs.max(1)));
    let server = Arc::new(fleet.server.clone());
    let mut tasks = JoinSet::new();
    for (slot, &index) in indices.iter().enumerate() {
        let client = fleet.clients[index].clone();
        let (server, slots, limits) = (server.clone(), slots.clone(), *limits);
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let newest = newest_archive(&client, &server, &limits).await;
            // Only a repository borg could list is asked for its size: one error per client.
            let size = match &newest {
                Ok(_) => repository_size(&client, &server, &limits)
                    .await
                    .map_err(|e| {
                        tracing::warn!(
                            client = %escape_for_log(client.name.as_bytes()),
                            "the repository's size is not known: {e}"
                        );
                    })
                    .ok(),
                Err(_) => None,
            };
            (slot, RepoReading::new(unix_now(), newest, size))
        });
    }
    let not_read = RepoReading::new(unix_now(), Err("not read".to_owned()), None);
    let mut readings = vec![not_read; indices.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((slot, reading)) => readings[slot] = reading,
            // Only a panic gets here; its slot keeps "not read".
            Err(e) => tracing::error!("reading a repository failed: {e}"),
        }
    }
    readings
}

/// A client's status from a reading of its repository (`None`: not read), ages at `now`.
fn client_status_read(
    client: &Client,
    reading: Option<&RepoReading>,
    store: &StateStore,
    now: u64,
) -> ClientStatus {
    let newest = reading.map_or_else(|| Err("not read".to_owned()), RepoReading::newest);
    let mut status = client_status(client, newest, store, now);
    status.repository_size = reading.and_then(|r| r.size);
    status
}

fn client_status(
    client: &Client,
    newest: Result<Option<(String, u64)>, String>,
    store: &StateStore,
    now: u64,
) -> ClientStatus {
    let (newest, error) = match newest {
        Ok(newest) => (newest, None),
        Err(error) => (None, Some(error)),
    };
    let age = newest
        .as_ref()
        .map(|(_, time)| Duration::from_secs(now.saturating_sub(*time)));
    let stale = age.is_none_or(|age| age > client.max_age);
    let (newest_archive, newest_time) = newest.map_or((None, None), |(name, time)| (Some(name), Some(time)));
    let state = store.load(&client.name);
    let standing = standing(client, &state, now);
    let last_success_age = standing
        .last_success
        .map(|at| Duration::from_secs(now.saturating_sub(at)));
    ClientStatus {
        name: client.name.clone(),
        repo: client.repo.clone(),
        newest_archive,
        newest_time,
        age,
        max_age: client.max_age,
        stale,
        last_run: state.last_run.clone(),
        retention: state.retention_results(),
        error,
        repository_size: None,
        standing,
        last_success_age,
    }
}

/// The size of `client`'s repository: `borg info --json REPO` (borg 1.x; the repository, not an
/// archive, so borg adds up nothing per archive).
async fn repository_size(
    client: &Client,
    server: &ServerSettings,
    limits: &BorgLimits,
) -> Result<RepoSize, String> {
    let mut args: Vec<OsString> = ["info", "--json", "--lock-wait"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(LIST_LOCK_WAIT_SECS.to_string().into());
    args.push(client.repo.clone().into());
    let run = BorgRun {
        client,
        borg: &server.borg,
        args,
        timeout: limits.info,
        kill_grace: limits.kill_grace,
        capture_stdout: Some(MAX_INFO_JSON),
        env: &[],
        quiet: true,
    };
    parse_info_json(&run.stdout("borg info").await?)
}

/// The sizes in `borg info --json` output (`cache.stats`); an error when it has none of them.
fn parse_info_json(json: &[u8]) -> Result<RepoSize, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        cache: Cache,
    }
    #[derive(serde::Deserialize)]
    struct Cache {
        stats: RepoSize,
    }
    let info: Info =
        serde_json::from_slice(json).map_err(|e| format!("cannot parse borg info --json: {e}"))?;
    let size = info.cache.stats;
    if size == RepoSize::default() {
        return Err("borg info --json gave no size".to_owned());
    }
    Ok(size)
}

/// The newest archive of `client`'s repository and its time: `borg list --json --last 1`.
async fn newest_archive(
    client: &Client,
    server: &ServerSettings,
    limits: &BorgLimits,
) -> Result<Option<(String, u64)>, String> {
    let mut args: Vec<OsString> = ["list", "--json", "--last", "1", "--lock-wait"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(LIST_LOCK_WAIT_SECS.to_string().into());
    args.push(client.repo.clone().into());
    let run = BorgRun {
        client,
        borg: &server.borg,
        args,
        timeout: limits.list,
        kill_grace: limits.kill_grace,
        capture_stdout: Some(MAX_LIST_JSON),
        // borg 1.2 prints local time without a zone: make local time UTC.
        env: &[("TZ", "UTC")],
        quiet: true,
    };
    parse_list_json(&run.stdout("borg list").await?)
}

/// The newest archive in `borg list --json` output: its name and time (Unix seconds).
///
/// Archives carry `time` (borg 1.x, 2) and `start`; borg 1.2 prints them in local time without a
/// zone (read as UTC: borg runs with `TZ=UTC`), borg 1.4 and 2 with an offset.
fn parse_list_json(json: &[u8]) -> Result<Option<(String, u64)>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        archives: Vec<Archive>,
    }
    #[derive(serde::Deserialize)]
    struct Archive {
        name: Option<String>,
        archive: Option<String>,
        time: Option<String>,
        start: Option<String>,
    }
    let list: List =
        serde_json::from_slice(json).map_err(|e| format!("cannot parse borg list --json: {e}"))?;
    let mut newest: Option<(String, u64)> = None;
    for archive in list.archives {
        let name = archive.name.or(archive.archive).unwrap_or_default();
        let when = archive.time.or(archive.start).ok_or_else(|| {
            format!(
                "borg list --json gave no time for archive {}",
                escape_for_log(name.as_bytes())
            )
        })?;
        let time = parse_iso_time(&when).ok_or_else(|| {
            format!(
                "borg list --json: cannot read the time {:?}",
                escape_for_log(when.as_bytes())
            )
        })?;
        if newest.as_ref().is_none_or(|(_, t)| time >= *t) {
            newest = Some((name, time));
        }
    }
    Ok(newest)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` as Unix seconds (no zone: UTC); fractions
/// are dropped. `None` for anything else or a time before 1970.
pub(crate) fn parse_iso_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let zone = rest[1..].replace(':', "");
            if zone.len() != 4 || !zone.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let (h, m): (i64, i64) = (zone[..2].parse().ok()?, zone[2..].parse().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let seconds =
        crate::time_text::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
            - offset;
    u64::try_from(seconds).ok()
}

/// A duration for people: `45m`, `5h07m`, `3d04h`.
fn format_age(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    match minutes {
        m if m < 60 => format!("{m}m"),
        m if m < 48 * 60 => format!("{}h{:02}m", m / 60, m % 60),
        m => format!("{}d{:02}h", m / 1440, m % 1440 / 60),
    }
}

/// The last run in a few words: `ok`, `warning (borg 1)`, `borg 2`, `error 213`.
fn describe_run(run: &RunRecord) -> String {
    let result = match (&run.error, run.borg_rc) {
        (Some((code, _)), _) => format!("error {code}"),
        (None, Some(0)) => "ok".to_owned(),
        (None, Some(1)) => "warning (borg 1)".to_owned(),
        (None, Some(rc)) => format!("borg {rc}"),
        (None, None) => "unknown".to_owned(),
    };
    format!("{} {result}", utc_minutes(run.started))
}

/// The statuses as a table for people, one line per client and a header; text that came from a
/// repository (archive names) or an error is escaped.
pub fn status_table(statuses: &[ClientStatus]) -> String {
    let header = [
        "CLIENT",
        "NEWEST ARCHIVE",
        "TIME (UTC)",
        "AGE",
        "MAX AGE",
        "STATE",
        "LAST RUN",
        "HEALTH",
        "LAST SUCCESS (UTC)",
        "NEXT DUE (UTC)",
        "FAILS",
        "ERROR",
    ];
    let mut rows: Vec<[String; 12]> = vec![header.map(str::to_owned)];
    for s in statuses {
        let state = match (&s.error, s.stale) {
            (Some(_), _) => "UNREADABLE",
            (None, true) => "STALE",
            (None, false) => "ok",
        };
        let error = s
            .error
            .clone()
            .or_else(|| {
                s.last_run
                    .as_ref()?
                    .error
                    .as_ref()
                    .map(|(_, message)| message.clone())
            })
            .unwrap_or_default();
        rows.push([
            escape_for_log(s.name.as_bytes()),
            s.newest_archive
                .as_deref()
                .map_or("-".to_owned(), |n| escape_for_log(n.as_bytes())),
            s.newest_time.map_or("-".to_owned(), utc_minutes),
            s.age.map_or("-".to_owned(), format_age),
            format_age(s.max_age),
            state.to_owned(),
            s.last_run.as_ref().map_or("-".to_owned(), describe_run),
            s.standing.health.as_str().to_owned(),
            match (s.standing.last_success, s.last_success_age) {
                (Some(at), Some(age)) => format!("{} ({} ago)", utc_minutes(at), format_age(age)),
                _ => "never".to_owned(),
            },
            s.standing.next_due.map_or("now".to_owned(), utc_minutes),
            s.standing.failures_in_a_row.to_string(),
            escape_for_log(error.as_bytes()),
        ]);
    }
    let mut widths = [0; 12];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_with_and_without_zone() {
        assert_eq!(parse_iso_time("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_iso_time("2026-01-01T12:00:00.000000"), Some(1_767_268_800));
        assert_eq!(parse_iso_time("2026-01-01T12:00:00Z"), Some(1_767_268_800));
        assert_eq!(
            parse_iso_time("2026-01-01T13:00:00.123+01:00"),
            Some(1_767_268_800)
        );
        assert_eq!(parse_iso_time("2026-01-01T07:00:00-0500"), Some(1_767_268_800));
        assert_eq!(parse_iso_time("2024-02-29T00:00:00"), Some(1_709_164_800));
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00",
            "2026-01-01T00:00:00.",
            "2026-01-01T00:00:00+1",
            "x026-01-01T00:00:00",
            "1969-12-31T23:59:59",
        ] {
            assert_eq!(parse_iso_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn utc_formatting_round_trips() {
        assert_eq!(utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(utc_minutes(1_767_268_800), "2026-01-01 12:00");
        assert_eq!(utc_minutes(1_709_164_800 + 61), "2024-02-29 00:01");
        for t in (0..4_000_000_000u64).step_by(86_400 * 97 + 3_607) {
            assert_eq!(
                parse_iso_time(&format!("{}:00", utc_minutes(t).replace(' ', "T"))),
                Some(t - t % 60)
            );
        }
    }

    #[test]
    fn list_json_of_borg_1_2_and_2() {
        let v12 = br#"{"archives": [{"archive": "a1", "barchive": "a1", "id": "c7", "name": "a1",
            "start": "2026-01-01T12:00:00.000000", "time": "2026-01-01T12:00:00.000000"}],
            "encryption": {"mode": "none"}, "repository": {"id": "55", "location": "/r"}}"#;
        assert_eq!(parse_list_json(v12), Ok(Some(("a1".into(), 1_767_268_800))));
        let v2 = br#"{"archives": [{"name": "b", "time": "2026-01-01T13:00:00.000000+01:00"}]}"#;
        assert_eq!(parse_list_json(v2), Ok(Some(("b".into(), 1_767_268_800))));
        let start_only = br#"{"archives": [{"name": "c", "start": "2026-01-01T12:00:00"}]}"#;
        assert_eq!(parse_list_json(start_only), Ok(Some(("c".into(), 1_767_268_800))));
        assert_eq!(parse_list_json(br#"{"archives": []}"#), Ok(None));
        assert!(parse_list_json(b"not json").is_err());
        assert!(parse_list_json(br#"{"archives": [{"name": "d"}]}"#).is_err());
    }

    #[test]
    fn info_json_of_borg_1_2_and_partial() {
        let v12 = br#"{"cache": {"path": "/c", "stats": {"total_chunks": 3, "total_csize": 6,
            "total_size": 3, "total_unique_chunks": 3, "unique_csize": 609, "unique_size": 690}},
            "encryption": {"mode": "none"}, "repository": {"id": "e8", "location": "/r"}}"#;
        assert_eq!(
            parse_info_json(v12),
            Ok(RepoSize {
                unique_csize: Some(609),
                unique_size: Some(690),
                total_csize: Some(6),
                total_size: Some(3),
            })
        );
        let no_csize = br#"{"cache": {"stats": {"total_size": 10, "unique_size": 7}}}"#;
        assert_eq!(
            parse_info_json(no_csize),
            Ok(RepoSize {
                unique_size: Some(7),
                total_size: Some(10),
                ..RepoSize::default()
            })
        );
        assert!(parse_info_json(br#"{"cache": {"stats": {}}}"#).is_err());
        assert!(parse_info_json(br#"{"repository": {}}"#).is_err());
        assert!(parse_info_json(br#"{"cache": {"stats": {"unique_csize": -1}}}"#).is_err());
    }

    #[test]
    fn a_stored_reading_stands_while_current_complete_and_not_pulled() {
        let now = 1_767_268_800;
        let size = RepoSize {
            unique_csize: Some(1),
            ..RepoSize::default()
        };
        let with = |reading: Option<RepoReading>| ClientState {
            repo_reading: reading,
            ..ClientState::default()
        };
        let read_at = |at: u64| RepoReading::new(at, Ok(Some(("a".into(), at - 60))), Some(size));
        let bound = READING_MAX_AGE.as_secs();
        let cases = [
            (with(Some(read_at(now - 3600))), false, None),
            (with(Some(read_at(now - bound))), false, None),
            (with(Some(read_at(now - 3600))), true, Some(ReadReason::Pulled)),
            (with(None), false, Some(ReadReason::NoReading)),
            (with(Some(read_at(now - bound - 1))), false, Some(ReadReason::Old)),
            (with(Some(read_at(now + 60))), false, Some(ReadReason::Old)),
            (
                with(Some(RepoReading::new(now, Err("locked".into()), None))),
                false,
                Some(ReadReason::Failed),
            ),
            (
                with(Some(RepoReading::new(now, Ok(None), None))),
                false,
                Some(ReadReason::Failed),
            ),
        ];
        for (i, (state, pulled, expected)) in cases.into_iter().enumerate() {
            assert_eq!(reading_due(&state, pulled, now), expected, "case {i}");
        }
        // What is stored is bounded, whatever borg (or a stand-in) printed.
        let long = RepoReading::new(now, Err("é".repeat(5000)), None);
        let error = long.error.unwrap();
        assert!(error.len() <= crate::state::MAX_READING_TEXT && error.len() > 4000);
        let named = RepoReading::new(now, Ok(Some(("n".repeat(9000), 5))), Some(size));
        assert_eq!(
            named.newest().unwrap().unwrap().0.len(),
            crate::state::MAX_READING_TEXT
        );
    }

    #[test]
    fn only_an_unreachable_attempt_after_the_reading_leaves_the_repository_as_read() {
        let started = 1_767_268_800;
        let state = |outcome, reading_at: Option<u64>, success: Option<u64>| ClientState {
            last_attempt: Some(Attempt {
                ended: started + 10,
                outcome,
            }),
            last_success: success.map(|at| RunRecord {
                started: at,
                duration_ms: 60_000,
                ..RunRecord::default()
            }),
            repo_reading: reading_at.map(|at| RepoReading::new(at, Ok(None), None)),
            ..ClientState::default()
        };
        let hour_ago = Some(started - 3600);
        let day_ago = Some(started - 86_400);
        assert!(!may_have_changed(
            &state(Outcome::Unreachable, hour_ago, day_ago),
            started
        ));
        assert!(!may_have_changed(
            &state(Outcome::Unreachable, hour_ago, None),
            started
        ));
        assert!(may_have_changed(
            &state(Outcome::Succeeded, hour_ago, day_ago),
            started
        ));
        assert!(may_have_changed(
            &state(Outcome::Failed, hour_ago, day_ago),
            started
        ));
        // No reading, or a success after it (a run that ended before reading it again).
        assert!(may_have_changed(
            &state(Outcome::Unreachable, None, day_ago),
            started
        ));
        assert!(may_have_changed(
            &state(Outcome::Unreachable, day_ago, hour_ago),
            started
        ));
        // The unreachable attempt recorded is an older run's: this one's was not recorded.
        assert!(may_have_changed(
            &state(Outcome::Unreachable, hour_ago, day_ago),
            started + 60
        ));
    }

    #[test]
    fn ages_for_people() {
        assert_eq!(format_age(Duration::from_secs(59 * 60)), "59m");
        assert_eq!(format_age(Duration::from_secs(36 * 3600)), "36h00m");
        assert_eq!(format_age(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
    }
}
