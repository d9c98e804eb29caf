//! How one client's pull ended ([`ClientResult`]): what `run` returns, records, summarises and
//! notifies, and `run --json` prints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::retention::RetentionResult;

/// The code of a pull task that panicked: borg-pull's "any other failure" (`exit::FAILURE` of
/// borg-pull-cli).
pub(crate) const INTERNAL_FAILURE: u8 = 201;

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

/// `t` in Unix seconds (0 before 1970).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
