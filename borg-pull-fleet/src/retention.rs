//! Retention and checks, run on this server with its full rights after a successful create: the
//! client's `borg serve` stays append-only, so only the server can prune.

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
