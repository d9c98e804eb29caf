//! What `run` remembers per client on this server (`[server] state_dir`), for `status`, the
//! metrics and the check schedule.

use serde::{Deserialize, Serialize};

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
    /// borg-pull's own error (exit code and message), if any.
    pub error: Option<(u8, String)>,
}
