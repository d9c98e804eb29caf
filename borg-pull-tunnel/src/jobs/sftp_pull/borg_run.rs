//! The server's own `borg create`, run in the mount through core's one child helper
//! ([`borg_pull_core::child`]: its own process group, the passphrase in its environment, SIGTERM
//! then SIGKILL), its output relayed to ours, stopped on cancellation or at its deadline.
//!
//! As root it runs in a private mount namespace (util-linux `unshare --mount`, propagation
//! private) in which our `passwd` and `group` files, written from the client's parsed entries,
//! are bound over `/etc/passwd` and `/etc/group`: borg then looks owners up by the client's
//! names. Nothing of that namespace is visible outside it, and it ends with borg. `unshare` execs
//! the shell, which execs borg: one process, the leader of the group the helper signals.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::child::{exit_code, BorgCommand, Environment, Input, Output};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::jobs::sftp_pull::accounts::AccountFiles;
use crate::limits::SFTP_BORG_STDERR_QUEUED;
use crate::Error;

/// Binds the two files, then becomes borg; the paths are arguments, never part of the script.
const BIND_ACCOUNTS: &str =
    "mount --bind -- \"$1\" /etc/passwd && mount --bind -- \"$2\" /etc/group && shift 2 && exec \"$@\"";

/// Secrets not meant for borg, a passcommand already run, and what we set ourselves.
const UNSET: [&str; 5] = [
    "BORG_PULL_IDENTITY_PASSPHRASE",
    "BORG_PASSCOMMAND",
    "BORG_PASSPHRASE_FD",
    "BORG_REPO",
    "BORG_PASSPHRASE",
];

/// Where borg's user and group lookups go.
#[derive(Debug, Clone)]
pub(crate) enum Namespace {
    /// This server's own files (borg runs with `--numeric-ids`).
    Shared,
    /// A private mount namespace with these files over `/etc/passwd` and `/etc/group`.
    ClientAccounts(AccountFiles),
}

/// One run of the server's borg.
pub(crate) struct BorgRun<'a> {
    pub(crate) borg: &'a Path,
    pub(crate) args: Vec<OsString>,
    pub(crate) repo: &'a Path,
    /// The mount root: borg's working directory.
    pub(crate) cwd: &'a Path,
    pub(crate) passphrase: Option<&'a str>,
    pub(crate) namespace: Namespace,
    /// More variables for borg (`--env`); BORG_REPO, BORG_RSH and the passphrase are refused by
    /// the option parsers.
    pub(crate) env: &'a [(String, OsString)],
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// borg exited with this code (128+N for signal N).
    Exited(i32),
    /// We stopped it: the run was cancelled.
    Cancelled,
    /// We stopped it: it reached its deadline.
    Deadline,
}

impl BorgRun<'_> {
    /// The program that is started: borg, or `unshare` wrapping it.
    fn program(&self) -> PathBuf {
        match self.namespace {
            Namespace::Shared => self.borg.to_owned(),
            Namespace::ClientAccounts(_) => "unshare".into(),
        }
    }

    fn command(&self) -> BorgCommand {
        let unset = Environment::InheritedWithout(UNSET.iter().map(OsString::from).collect());
        let command = match &self.namespace {
            Namespace::Shared => BorgCommand::new(self.borg, unset),
            Namespace::ClientAccounts(files) => BorgCommand::new("unshare", unset)
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    BIND_ACCOUNTS,
                    "sh",
                ])
                .args([
                    files.passwd.as_os_str(),
                    files.group.as_os_str(),
                    self.borg.as_os_str(),
                ]),
        };
        let mut command = command
            .args(&self.args)
            .current_dir(self.cwd)
            .stdin(Input::Null)
            .stdout(Output::Piped);
        for (name, value) in self.env {
            command = command.env(name, value);
        }
        let command = command.env("BORG_REPO", self.repo);
        // The environment of a child of ours, never its argv (which every user can read).
        match self.passphrase {
            Some(p) => command.secret_env("BORG_PASSPHRASE", p),
            None => command,
        }
    }

    /// Runs borg to its end, its deadline or cancellation, writing its output to ours (stderr
    /// line by line, escaped and cut by the helper).
    pub(crate) async fn run<O, E>(
        &self,
        stdout: &mut O,
        stderr: &mut E,
        cancel: &CancellationToken,
        deadline: Instant,
        grace: Duration,
    ) -> Result<Ended, Error>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let (queue, mut said) = LineQueue::new(SFTP_BORG_STDERR_QUEUED);
        let dropped = queue.dropped_count();
        let mut child = self
            .command()
            .on_stderr_line(move |line| queue.push(line))
            .spawn()
            .map_err(|source| borg_pull_core::Error::SpawnBorg {
                program: self.program(),
                source,
            })?;
        let mut out = child.take_stdout().expect("stdout is piped");
        let stopped = {
            let relay_out = async {
                // Our stdout failing (closed) must not leave borg blocked on a full pipe: the
                // copy ends, borg gets EPIPE.
                if let Err(e) = tokio::io::copy(&mut out, stdout).await {
                    warn!("writing borg's output: {e}");
                }
            };
            let relay_err = relay_lines(&mut said, stderr);
            let finished = async {
                let ((), (), status) = tokio::join!(relay_out, relay_err, child.wait());
                status
            };
            tokio::select! {
                status = finished => {
                    let status = status.map_err(|source| Error::Io {
                        context: "waiting for borg create".into(),
                        source,
                    })?;
                    report_dropped(&dropped);
                    return Ok(Ended::Exited(exit_code(status)));
                }
                () = cancel.cancelled() => Ended::Cancelled,
                () = tokio::time::sleep_until(deadline) => Ended::Deadline,
            }
        };
        if let Err(e) = child.stop(grace).await {
            warn!("stopping borg create: {e}");
        }
        // Its last words after SIGTERM (what it rolled back), as far as they have arrived.
        while let Ok(line) = said.try_recv() {
            let _ = write_line(stderr, &line).await;
        }
        report_dropped(&dropped);
        Ok(stopped)
    }
}

/// borg's stderr lines on their way to ours: at most a bounded number wait; the ones past it are
/// dropped and counted, so borg never waits on us and a slow stderr of ours never grows memory.
struct LineQueue {
    lines: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl LineQueue {
    fn new(bound: usize) -> (Self, mpsc::Receiver<String>) {
        let (lines, said) = mpsc::channel(bound);
        let dropped = Arc::new(AtomicU64::new(0));
        (Self { lines, dropped }, said)
    }

    fn dropped_count(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }

    fn push(&self, line: &str) {
        if self.lines.try_send(line.to_owned()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn report_dropped(dropped: &AtomicU64) {
    let n = dropped.load(Ordering::Relaxed);
    if n > 0 {
        warn!("{n} lines of borg's stderr were dropped: our stderr did not keep up");
    }
}

/// Writes each line of borg's stderr to ours until borg's stderr ends; a failing writer of ours
/// only drops the lines.
async fn relay_lines<E: AsyncWrite + Unpin>(said: &mut mpsc::Receiver<String>, stderr: &mut E) {
    let mut broken = false;
    while let Some(line) = said.recv().await {
        if !broken && write_line(stderr, &line).await.is_err() {
            warn!("our stderr is gone; borg's messages are dropped");
            broken = true;
        }
    }
}

async fn write_line<E: AsyncWrite + Unpin>(stderr: &mut E, line: &str) -> std::io::Result<()> {
    stderr.write_all(line.as_bytes()).await?;
    stderr.write_all(b"\n").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted_never_queued() {
        let (queue, mut said) = LineQueue::new(8);
        let dropped = queue.dropped_count();
        for i in 0..100 {
            queue.push(&format!("line {i}"));
        }
        let mut kept = Vec::new();
        while let Ok(line) = said.try_recv() {
            kept.push(line);
        }
        assert_eq!(kept.len(), 8);
        assert_eq!(kept[0], "line 0");
        assert_eq!(dropped.load(Ordering::Relaxed), 92);
        // Room again once ours has written some.
        queue.push("after");
        assert_eq!(said.try_recv().unwrap(), "after");
    }
}
