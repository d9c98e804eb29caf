//! The server's own `borg create`, run in the mount with its output streamed to ours, stopped
//! (SIGTERM to its process group, SIGKILL after a grace) on cancellation or at its deadline.
//!
//! As root it runs in a private mount namespace (util-linux `unshare --mount`, propagation
//! private) in which our `passwd` and `group` files, written from the client's parsed entries,
//! are bound over `/etc/passwd` and `/etc/group`: borg then looks owners up by the client's
//! names. Nothing of that namespace is visible outside it, and it ends with borg.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jobs::sftp_pull::accounts::AccountFiles;
use crate::jobs::sftp_pull::error::SftpPullError;

/// Binds the two files, then becomes borg; the paths are arguments, never part of the script.
const BIND_ACCOUNTS: &str =
    "mount --bind -- \"$1\" /etc/passwd && mount --bind -- \"$2\" /etc/group && shift 2 && exec \"$@\"";

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
    fn command(&self) -> tokio::process::Command {
        let mut command = match &self.namespace {
            Namespace::Shared => tokio::process::Command::new(self.borg),
            Namespace::ClientAccounts(files) => {
                let mut c = tokio::process::Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    BIND_ACCOUNTS,
                    "sh",
                ])
                .arg(&files.passwd)
                .arg(&files.group)
                .arg(self.borg);
                c
            }
        };
        command
            .args(&self.args)
            .current_dir(self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BORG_REPO", self.repo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The environment of a child of ours, never its argv (which every user can read).
        match self.passphrase {
            Some(p) => command.env("BORG_PASSPHRASE", p),
            None => command.env_remove("BORG_PASSPHRASE"),
        };
        command
    }

    /// Runs borg to its end, its deadline or cancellation, writing its output to ours.
    pub(crate) async fn run<O, E>(
        &self,
        stdout: &mut O,
        stderr: &mut E,
        cancel: &CancellationToken,
        deadline: Instant,
        grace: Duration,
    ) -> Result<Ended, SftpPullError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let program: PathBuf = match self.namespace {
            Namespace::Shared => self.borg.to_owned(),
            Namespace::ClientAccounts(_) => "unshare".into(),
        };
        let mut child = self
            .command()
            .spawn()
            .map_err(|source| SftpPullError::SpawnBorg { program, source })?;
        let group = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let finished = async {
            // Our own writers failing (a closed stdout) must not leave borg blocked on a full pipe:
            // the copies end, borg gets EPIPE and exits.
            let _ = tokio::join!(
                tokio::io::copy(&mut out, stdout),
                tokio::io::copy(&mut err, stderr)
            );
            child.wait().await
        };
        tokio::pin!(finished);
        let stopped = tokio::select! {
            status = &mut finished => {
                let status = status.map_err(|source| SftpPullError::Local {
                    context: "waiting for borg".into(),
                    source,
                })?;
                let code = status.code().or_else(|| status.signal().map(|n| 128 + n)).unwrap_or(255);
                return Ok(Ended::Exited(code));
            }
            () = cancel.cancelled() => Ended::Cancelled,
            () = tokio::time::sleep_until(deadline) => Ended::Deadline,
        };
        signal(group, rustix::process::Signal::TERM);
        if tokio::time::timeout(grace, &mut finished).await.is_err() {
            signal(group, rustix::process::Signal::KILL);
            let _ = tokio::time::timeout(grace, &mut finished).await;
        }
        Ok(stopped)
    }
}

fn signal(group: Option<rustix::process::Pid>, signal: rustix::process::Signal) {
    if let Some(group) = group {
        // ESRCH: it has already gone.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}
