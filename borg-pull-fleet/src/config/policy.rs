//! What the server does to a client's repository after a create, as configured: which archives
//! `borg prune` keeps and when `borg check` runs. Data only: [`crate::retention`] runs them.

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
