//! borg run on this server, on a repository it owns: prune, compact and check after a create
//! ([`crate::retention`]) and `list` for [`crate::status`].
//!
//! Each run is a [`borg_pull_core::child`]: it gets the client's repository passphrase in its
//! environment (never in its argv, which every user can read in `/proc`), its stdin from `/dev/null` (borg never waits on a prompt), its
//! output logged line by line with the client's name, and a deadline: past it the run's process
//! group gets SIGTERM, then SIGKILL after a grace, and borg is reaped. Dropping the future (a
//! cancelled run) kills the group too (SIGKILL: a cancelled run does not wait); tokio reaps the
//! child, and the tasks reading its pipes are aborted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borg_pull_core::child::{exit_code, BorgCommand, Environment, Input, Output};
use borg_pull_core::text::{escape_for_log, BoundedLines};
use borg_pull_tunnel::local::secret_file::read_secret_line;
use borg_pull_tunnel::SecretKind;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::{Client, PassphraseSource};
use borg_pull_core::limits::LOG_LINE_MAX;

/// What borg may read its repository passphrase from; each run sets one and removes the others,
/// because borg takes the first it finds in this order.
const PASSPHRASE_VARS: [&str; 3] = ["BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"];

/// One borg command on this server.
#[derive(Debug)]
pub(crate) struct BorgRun<'a> {
    /// The client whose repository it works on (passphrase, log prefix).
    pub client: &'a Client,
    /// The borg program.
    pub borg: &'a Path,
    /// borg's arguments, subcommand first.
    pub args: Vec<OsString>,
    /// Deadline of the whole run.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL once the deadline has passed.
    pub kill_grace: Duration,
    /// Keep at most this much of stdout instead of logging it (`list --json`).
    pub capture_stdout: Option<usize>,
    /// Extra environment (e.g. `TZ=UTC` so that borg 1.2 prints times in UTC).
    pub env: &'a [(&'a str, &'a str)],
    /// Log borg's output at debug instead of info.
    pub quiet: bool,
}

/// How a borg run ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// borg's exit code, or 128 + N when it was ended by signal N.
    pub rc: i32,
    /// Stdout, when captured (at most the cap; [`Finished::stdout_cut`] says whether more came).
    pub stdout: Vec<u8>,
    /// Stdout was longer than the cap.
    pub stdout_cut: bool,
    /// The last non-empty line borg wrote on stderr, escaped (its error message when it failed).
    pub last_error: Option<String>,
    /// It ran past the timeout and was stopped.
    pub timed_out: bool,
}

impl Finished {
    /// borg's own view: 0 success, 1 warning (the work was done), anything else an error.
    pub fn succeeded(&self) -> bool {
        !self.timed_out && (self.rc == 0 || self.rc == 1)
    }
}

/// Why borg could not be run at all. Printed as one line (in a run's report), so each variant
/// names its cause rather than handing it out as a source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BorgError {
    /// The passphrase file could not be read.
    #[error("cannot read the repository passphrase: {}", borg_pull_core::error::Chain(.0))]
    Passphrase(borg_pull_tunnel::Error),
    /// borg could not be started.
    #[error("cannot start {}: {cause}", .borg.display())]
    Spawn {
        /// The program.
        borg: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Waiting for borg failed.
    #[error("waiting for {}: {cause}", .borg.display())]
    Wait {
        /// The program.
        borg: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

impl BorgRun<'_> {
    /// Runs a borg that reports on stdout (`list`, `info`) and returns what it printed, or why
    /// there is nothing to read: it could not start, ran past its deadline, failed, or printed
    /// more than its cap. `what` names it in that reason, e.g. "borg list".
    pub async fn stdout(self, what: &str) -> Result<Vec<u8>, String> {
        let timeout = self.timeout;
        let cap = self.capture_stdout.unwrap_or(0);
        let finished = self.run().await.map_err(|e| format!("{what} did not run: {e}"))?;
        if finished.timed_out {
            return Err(format!(
                "{what} ran longer than {}s and was stopped",
                timeout.as_secs()
            ));
        }
        if finished.rc != 0 {
            let said = finished.last_error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(format!("{what} exited with {}{said}", finished.rc));
        }
        if finished.stdout_cut {
            return Err(format!("{what} printed more than {cap} bytes"));
        }
        Ok(finished.stdout)
    }

    /// Runs borg to the end or the deadline. Errors only when it could not be started.
    pub async fn run(self) -> Result<Finished, BorgError> {
        let name = escape_for_log(self.client.name.as_bytes());
        let what = self
            .args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        // borg takes the first passphrase source it finds: the one we set must be the only one.
        let unset = match &self.client.passphrase {
            PassphraseSource::Inherited => Vec::new(),
            PassphraseSource::File(_) | PassphraseSource::Command(_) => {
                PASSPHRASE_VARS.iter().map(OsString::from).collect()
            }
        };
        let quiet = self.quiet;
        let mut cmd = BorgCommand::new(self.borg, Environment::InheritedWithout(unset))
            .args(&self.args)
            .stdin(Input::Null)
            .stdout(Output::Piped)
            .on_stderr_line({
                let (name, what) = (name.clone(), what.clone());
                move |line| log_line(&name, &what, quiet, line)
            });
        // The server names the repository itself, so borg's question about a repository it has
        // not seen before (asked on the first local access to an unencrypted repository that
        // clients wrote) has one answer; without a tty borg would take it as "no".
        if std::env::var_os("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK").is_none() {
            cmd = cmd.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes");
        }
        for (key, value) in self.env {
            cmd = cmd.env(key, value);
        }
        match &self.client.passphrase {
            PassphraseSource::Inherited => {}
            PassphraseSource::File(path) => {
                let secret =
                    read_secret_line(path, SecretKind::RepoPassphrase).map_err(BorgError::Passphrase)?;
                cmd = cmd.secret_env("BORG_PASSPHRASE", secret.as_str());
            }
            PassphraseSource::Command(command) => {
                cmd = cmd.env("BORG_PASSCOMMAND", command);
            }
        }
        debug!(client = %name, "running {} {}", self.borg.display(), what);
        let mut child = cmd.spawn().map_err(|cause| BorgError::Spawn {
            borg: self.borg.to_owned(),
            cause,
        })?;
        let stdout = child.take_stdout().expect("stdout is piped");

        // Read by a task of its own, which keeps reading while a timed-out borg cleans up: a
        // closed pipe would make its last messages fail and could stop it before it has removed
        // its lock. (stderr is read by the child's owner.)
        let stdout_task = AbortOnDropHandle::new(tokio::spawn({
            let (name, what, capture) = (name.clone(), what.clone(), self.capture_stdout);
            async move {
                match capture {
                    Some(max) => read_capped(stdout, max).await,
                    None => {
                        log_lines(stdout, &name, &what, quiet).await;
                        (Vec::new(), false)
                    }
                }
            }
        }));
        let wait = |cause| BorgError::Wait {
            borg: self.borg.to_owned(),
            cause,
        };
        let (status, timed_out) = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => (status.map_err(wait)?, false),
            Err(_) => {
                warn!(
                    client = %name,
                    "borg {what} ran longer than {}s, stopping it",
                    self.timeout.as_secs_f64()
                );
                (child.stop(self.kill_grace).await.map_err(wait)?.status, true)
            }
        };
        // What is still in the pipe is read; only a process that left the group (setsid) could
        // hold it open longer, and it is not waited for.
        let (stdout, stdout_cut) = match tokio::time::timeout(self.kill_grace, stdout_task).await {
            Ok(read) => read.unwrap_or_default(),
            Err(_) => {
                warn!(client = %name, "borg {what}'s output was still open after it exited; not read to its end");
                (Vec::new(), true)
            }
        };
        let last_error = child.stderr_tail().await.last_line().map(str::to_owned);
        let rc = exit_code(status);
        debug!(client = %name, "borg {what} exited with {rc}");
        Ok(Finished {
            rc,
            stdout,
            stdout_cut,
            last_error,
            timed_out,
        })
    }
}

/// Logs one line of borg's output with the client's name.
fn log_line(name: &str, what: &str, quiet: bool, line: &str) {
    if quiet {
        debug!(client = %name, "borg {what}: {line}");
    } else {
        info!(client = %name, "borg {what}: {line}");
    }
}

/// Logs every line of `reader` (escaped, bounded) to its end.
async fn log_lines(reader: impl AsyncRead + Unpin, name: &str, what: &str, quiet: bool) {
    let mut lines = BoundedLines::new(reader, LOG_LINE_MAX);
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => log_line(name, what, quiet, &line.to_string()),
            Ok(None) => return,
            Err(e) => {
                warn!(client = %name, "reading borg {what}'s output: {e}");
                return;
            }
        }
    }
}

/// At most `max` bytes of `reader`, reading (and dropping) the rest to EOF so borg never gets
/// EPIPE; `true` when something was dropped.
async fn read_capped(mut reader: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, cut),
            Ok(n) => {
                let room = max - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capped_read_keeps_the_start_and_drains_the_rest() {
        let input = vec![b'x'; 100_000];
        assert_eq!(read_capped(&input[..], 10).await, (vec![b'x'; 10], true));
        assert_eq!(read_capped(&b"abc"[..], 10).await, (b"abc".to_vec(), false));
    }
}
