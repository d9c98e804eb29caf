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

use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use borg_pull_core::text::escape_for_log;
use tracing::{info, warn};

use crate::config::{Client, ServerSettings};
use crate::limits::{BorgLimits, RETENTION_LOCK_WAIT_SECS};
use crate::server_borg::BorgRun;
use crate::state::ClientState;

/// borg prune's `--keep-*` options, named as borg names them; all unset: no prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// `--keep-within` (e.g. `2d`).
    pub keep_within: Option<String>,
    /// `--keep-last`.
    pub keep_last: Option<u32>,
    /// `--keep-hourly`.
    pub keep_hourly: Option<u32>,
    /// `--keep-daily`.
    pub keep_daily: Option<u32>,
    /// `--keep-weekly`.
    pub keep_weekly: Option<u32>,
    /// `--keep-monthly`.
    pub keep_monthly: Option<u32>,
    /// `--keep-yearly`.
    pub keep_yearly: Option<u32>,
}

/// When `borg check` runs: every N successful runs, or when the last check is N days old.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckPolicy {
    /// `check_every_runs`.
    pub every_runs: Option<u32>,
    /// `check_every_days`.
    pub every_days: Option<u32>,
}

impl Retention {
    /// borg prune's `--keep-*` options for this policy, in borg's order; empty when nothing is
    /// kept by any rule (unset, 0 or an empty `keep_within`), which means: no prune at all.
    pub fn prune_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(within) = self.keep_within.as_deref().filter(|w| !w.is_empty()) {
            args.push("--keep-within".to_owned());
            args.push(within.to_owned());
        }
        let counts = [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ];
        for (option, count) in counts {
            if let Some(n) = count.filter(|&n| n > 0) {
                args.push(option.to_owned());
                args.push(n.to_string());
            }
        }
        args
    }
}

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
        let result = step("prune", options, limits.prune).run().await;
        let (rc, ok) = record(&client.name, "prune", result, &mut outcome.errors);
        outcome.pruned = rc;
        pruned_ok = ok;
    }
    if client.compact && pruned_ok {
        let result = step("compact", Vec::new(), limits.compact).run().await;
        outcome.compacted = record(&client.name, "compact", result, &mut outcome.errors).0;
    }
    if client.check.is_due(state, unix_now()) {
        info!(
            client = %escape_for_log(client.name.as_bytes()),
            "borg check is due ({} runs since the last check)",
            state.runs_since_check
        );
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
