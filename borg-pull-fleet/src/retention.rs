//! Retention and checks, run on this server with its full rights after a successful create: the
//! client's `borg serve` stays append-only, so only the server can prune.
//!
//! [`after_create`] runs, each only when configured and each bounded in time
//! ([`crate::limits`]):
//! 1. `borg prune --keep-… REPO` when some `keep_*` is set (never without one: borg would refuse,
//!    and "prune with no rule" must not come to mean "delete everything"). It prunes every archive
//!    in the repository: one repository per client.
//! 2. `borg compact REPO` when `compact = true` and the prune succeeded (only a prune frees space).
//! 3. `borg check REPO` when the [`CheckPolicy`] says it is due; the client's
//!    [`ClientState::runs_since_check`] and [`ClientState::last_check`] are updated.
//!
//! The repository passphrase comes from the client's `passphrase_file` or `passcommand` through
//! borg's environment, never its arguments.
//!
//! What ran on the client decides whether retention runs, not the arguments it was given (a
//! borgmatic client's `-c FILE create` starts with an option's value, a failed create or an
//! `extract` makes no archive): `run` lists the repository's archive ids before and after the
//! client's job ([`archive_ids`]) and runs [`after_create`] only when one appeared. Every other
//! case is a [`RetentionResult::Skipped`] with its [`SkipReason`], logged and in the summary.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use borg_pull_core::text::escape_for_log;
use tracing::{info, warn};

pub use crate::config::{CheckPolicy, Retention};
use crate::config::{Client, ServerSettings};
use crate::limits::{BorgLimits, MAX_ARCHIVE_IDS, RETENTION_LOCK_WAIT_SECS};
use crate::server_borg::BorgRun;
use crate::state::ClientState;

// Here, not beside the type in `config`: it reads the client's run state, and `config` stays free
// of `state` and `retention` (imports run one way: run → retention → server_borg → config).
impl CheckPolicy {
    /// Whether `borg check` is due after a successful run, given the state with this run already
    /// counted in `runs_since_check`, at `now` (Unix seconds): after every `every_runs` runs, or
    /// when the last check is at least `every_days` days old (or there never was one).
    pub fn is_due(&self, state: &ClientState, now: u64) -> bool {
        let by_runs = self
            .every_runs
            .is_some_and(|n| n > 0 && state.runs_since_check >= n);
        let by_days = self.every_days.is_some_and(|days| {
            days > 0
                && match state.last_check {
                    None => true,
                    Some((at, _)) => now.saturating_sub(at) >= u64::from(days) * 86_400,
                }
        });
        by_runs || by_days
    }
}

/// What [`after_create`] ran: each step's borg exit code (128 + N if ended by signal N, e.g. 143
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

/// Prune, compact and check `client`'s repository after a successful create, as configured; see
/// the [module](self) docs. Counts the run in `state.runs_since_check` and records a check in
/// `state.last_check`. Never fails: what went wrong is in [`RetentionOutcome::errors`].
pub async fn after_create(
    client: &Client,
    server: &ServerSettings,
    state: &mut ClientState,
) -> RetentionOutcome {
    after_create_with(client, server, state, &BorgLimits::default()).await
}

/// [`after_create`] with other timeouts (tests).
pub async fn after_create_with(
    client: &Client,
    server: &ServerSettings,
    state: &mut ClientState,
    limits: &BorgLimits,
) -> RetentionOutcome {
    after_create_observed(client, server, state, limits, &|_| {}).await
}

/// [`after_create_with`], telling `on_step` when each step starts (`run`'s live display).
pub async fn after_create_observed(
    client: &Client,
    server: &ServerSettings,
    state: &mut ClientState,
    limits: &BorgLimits,
    on_step: &(dyn Fn(Step) + Send + Sync),
) -> RetentionOutcome {
    let mut outcome = RetentionOutcome::default();
    state.runs_since_check = state.runs_since_check.saturating_add(1);
    let step = |what: &str, options: Vec<String>, timeout: Duration| {
        let mut args: Vec<OsString> = vec![what.into(), "--lock-wait".into()];
        args.push(RETENTION_LOCK_WAIT_SECS.to_string().into());
        args.extend(options.into_iter().map(OsString::from));
        args.push(client.repo.clone().into());
        BorgRun {
            client,
            borg: &server.borg,
            args,
            timeout,
            kill_grace: limits.kill_grace,
            capture_stdout: None,
            env: &[],
            quiet: false,
        }
    };

    let keep = client.prune.prune_args();
    let mut pruned_ok = false;
    if !keep.is_empty() {
        let mut options = vec!["--list".to_owned()];
        options.extend(keep);
        on_step(Step::Prune);
        let result = step("prune", options, limits.prune).run().await;
        let (rc, ok) = record(&client.name, "prune", result, &mut outcome.errors);
        outcome.pruned = rc;
        pruned_ok = ok;
    }
    if client.compact && pruned_ok {
        on_step(Step::Compact);
        let result = step("compact", Vec::new(), limits.compact).run().await;
        outcome.compacted = record(&client.name, "compact", result, &mut outcome.errors).0;
    }
    if client.check.is_due(state, unix_now()) {
        info!(
            client = %escape_for_log(client.name.as_bytes()),
            "borg check is due ({} runs since the last check)",
            state.runs_since_check
        );
        on_step(Step::Check);
        let result = step("check", Vec::new(), limits.check).run().await;
        let finished = matches!(&result, Ok(f) if !f.timed_out);
        let passed = matches!(&result, Ok(f) if f.succeeded());
        outcome.checked = record(&client.name, "check", result, &mut outcome.errors).0;
        // A check that could not run to its end (not started, timed out) is tried again next run.
        if finished {
            state.last_check = Some((unix_now(), passed));
            state.runs_since_check = 0;
        }
    }
    outcome
}

/// A step of [`after_create_observed`], as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `borg prune`.
    Prune,
    /// `borg compact`.
    Compact,
    /// `borg check`.
    Check,
}

impl Step {
    /// borg's subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Step::Prune => "prune",
            Step::Compact => "compact",
            Step::Check => "check",
        }
    }
}

/// Whether `client` has anything to run after a create: a keep rule (prune, then compact) or a
/// check schedule. Without one `run` lists nothing and reports "not configured".
pub fn is_configured(client: &Client) -> bool {
    let check = &client.check;
    !client.prune.prune_args().is_empty()
        || check.every_runs.is_some_and(|n| n > 0)
        || check.every_days.is_some_and(|n| n > 0)
}

/// What retention did for one client's job in a `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionResult {
    /// No keep rule and no check schedule ([`is_configured`]).
    NotConfigured,
    /// Configured, but nothing ran, for this reason.
    Skipped(SkipReason),
    /// Prune, compact and check ran as configured and due; failures are in its `errors`.
    Ran(RetentionOutcome),
    /// SIGINT/SIGTERM came while it ran; its borg was stopped.
    Interrupted,
}

/// Why retention did not run although configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The job succeeded but the repository holds no archive it did not hold before (an
    /// `extract`, a `list`, a borgmatic action other than create).
    NoNewArchive,
    /// The job failed (our error, or borg's rc 2 and up): a half-made backup is no reason to
    /// delete old ones.
    JobFailed,
    /// The run was interrupted (SIGINT/SIGTERM) before retention began.
    Interrupted,
    /// The repository's archives could not be listed, so whether one appeared is unknown; the
    /// cause is in the result's retention errors.
    CannotList,
}

impl SkipReason {
    /// The reason as the summary and the JSON say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NoNewArchive => "no new archive",
            SkipReason::JobFailed => "the job failed",
            SkipReason::Interrupted => "interrupted",
            SkipReason::CannotList => "cannot list the repository",
        }
    }
}

impl fmt::Display for RetentionResult {
    /// `prune_rc=0 compact_rc=0`, `skipped: no new archive`, `not configured`, ...: the
    /// summary's retention column and the logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetentionResult::NotConfigured => f.write_str("not configured"),
            RetentionResult::Skipped(reason) => write!(f, "skipped: {}", reason.as_str()),
            RetentionResult::Interrupted => f.write_str("stopped: interrupted"),
            RetentionResult::Ran(outcome) => {
                let steps = [
                    ("prune_rc", outcome.pruned),
                    ("compact_rc", outcome.compacted),
                    ("check_rc", outcome.checked),
                ];
                let mut ran = steps
                    .iter()
                    .filter_map(|(name, rc)| rc.map(|rc| format!("{name}={rc}")))
                    .peekable();
                if ran.peek().is_none() {
                    // A step that could not start has no code; its error says why.
                    return f.write_str(if outcome.errors.is_empty() {
                        "nothing due"
                    } else {
                        "failed to start"
                    });
                }
                f.write_str(&ran.collect::<Vec<_>>().join(" "))
            }
        }
    }
}

impl serde::Serialize for RetentionResult {
    /// `{"status": "ran", "prune_rc": 0, "compact_rc": null, "check_rc": null}`,
    /// `{"status": "skipped", "reason": "no new archive"}`, `{"status": "not configured"}`,
    /// `{"status": "interrupted"}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json {
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'static str>,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            ran: Option<Ran>,
        }
        #[derive(serde::Serialize)]
        struct Ran {
            prune_rc: Option<i32>,
            compact_rc: Option<i32>,
            check_rc: Option<i32>,
        }
        let (status, reason, ran) = match self {
            RetentionResult::NotConfigured => ("not configured", None, None),
            RetentionResult::Skipped(r) => ("skipped", Some(r.as_str()), None),
            RetentionResult::Interrupted => ("interrupted", None, None),
            RetentionResult::Ran(o) => (
                "ran",
                None,
                Some(Ran {
                    prune_rc: o.pruned,
                    compact_rc: o.compacted,
                    check_rc: o.checked,
                }),
            ),
        };
        Json { status, reason, ran }.serialize(s)
    }
}

/// The ids of a repository's archives (checkpoints not counted, as borg lists them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveIds(HashSet<String>);

impl ArchiveIds {
    /// How many archives of `after` are not in `self`: archives the job created. A deleted or
    /// renamed-away archive does not count, so a job that only deleted never triggers a prune.
    pub fn new_in(&self, after: &ArchiveIds) -> usize {
        after.0.difference(&self.0).count()
    }

    /// How many archives.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No archive.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids in `borg list --format '{id}{NL}'` output: one 64-digit hex id a line.
    pub fn parse(stdout: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(stdout)
            .map_err(|_| "borg list printed something that is not UTF-8".to_owned())?;
        let mut ids = HashSet::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "borg list printed {:?} where an archive id was expected",
                    escape_for_log(&line.as_bytes()[..line.len().min(100)])
                ));
            }
            ids.insert(line.to_owned());
        }
        Ok(Self(ids))
    }
}

/// Every archive id of `client`'s repository: `borg list --format '{id}{NL}'` on this server.
pub async fn archive_ids(client: &Client, server: &ServerSettings) -> Result<ArchiveIds, String> {
    archive_ids_with(client, server, &BorgLimits::default()).await
}

/// [`archive_ids`] with other timeouts (tests).
pub async fn archive_ids_with(
    client: &Client,
    server: &ServerSettings,
    limits: &BorgLimits,
) -> Result<ArchiveIds, String> {
    let mut args: Vec<OsString> = vec!["list".into(), "--lock-wait".into()];
    args.push(RETENTION_LOCK_WAIT_SECS.to_string().into());
    args.extend(["--format".into(), "{id}{NL}".into()]);
    args.push(client.repo.clone().into());
    let run = BorgRun {
        client,
        borg: &server.borg,
        args,
        timeout: limits.list,
        kill_grace: limits.kill_grace,
        capture_stdout: Some(MAX_ARCHIVE_IDS),
        env: &[],
        quiet: true,
    };
    ArchiveIds::parse(&run.stdout("borg list").await?)
}

/// Logs the end of a step and notes a failure; returns borg's code and whether it succeeded.
fn record(
    name: &str,
    what: &str,
    result: Result<crate::server_borg::Finished, crate::server_borg::BorgError>,
    errors: &mut Vec<String>,
) -> (Option<i32>, bool) {
    let name = escape_for_log(name.as_bytes());
    match result {
        Ok(finished) if finished.succeeded() => {
            info!(client = %name, "borg {what} done (exit code {})", finished.rc);
            (Some(finished.rc), true)
        }
        Ok(finished) => {
            let said = finished.last_error.map(|e| format!(": {e}")).unwrap_or_default();
            let message = if finished.timed_out {
                format!(
                    "borg {what} ran past its time limit and was stopped (exit code {}){said}",
                    finished.rc
                )
            } else {
                format!("borg {what} exited with {}{said}", finished.rc)
            };
            warn!(client = %name, "{message}");
            errors.push(message);
            (Some(finished.rc), false)
        }
        Err(e) => {
            let message = format!("borg {what} did not run: {e}");
            warn!(client = %name, "{message}");
            errors.push(message);
            (None, false)
        }
    }
}

/// Seconds since the Unix epoch (0 for a clock before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keep_rule_means_no_prune() {
        assert!(Retention::default().prune_args().is_empty());
        let zeros = Retention {
            keep_daily: Some(0),
            keep_within: Some(String::new()),
            ..Retention::default()
        };
        assert!(zeros.prune_args().is_empty());
        let policy = Retention {
            keep_within: Some("2d".into()),
            keep_daily: Some(7),
            keep_monthly: Some(6),
            keep_weekly: Some(0),
            ..Retention::default()
        };
        assert_eq!(
            policy.prune_args(),
            ["--keep-within", "2d", "--keep-daily", "7", "--keep-monthly", "6"]
        );
    }

    #[test]
    fn check_is_due_by_runs_or_by_days() {
        let now = 100 * 86_400;
        let state = |runs, last| ClientState {
            runs_since_check: runs,
            last_check: last,
            ..ClientState::default()
        };
        let runs = CheckPolicy {
            every_runs: Some(3),
            every_days: None,
        };
        assert!(!runs.is_due(&state(2, None), now));
        assert!(runs.is_due(&state(3, None), now));
        assert!(runs.is_due(&state(4, Some((now, true))), now));
        let days = CheckPolicy {
            every_runs: None,
            every_days: Some(7),
        };
        assert!(days.is_due(&state(1, None), now), "never checked");
        assert!(!days.is_due(&state(1, Some((now - 6 * 86_400, true))), now));
        assert!(days.is_due(&state(1, Some((now - 7 * 86_400, false))), now));
        assert!(!CheckPolicy::default().is_due(&state(1000, None), now));
    }
}
