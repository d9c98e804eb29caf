//! `--via sftp` from a pull's options: what makes no sense when nothing runs on the client is
//! refused, the rest handed to [`crate::jobs::sftp_pull`].

use tokio::io::AsyncWrite;

use crate::jobs::pull::{PullOptions, PullOutcome};
use crate::jobs::sftp_pull::{self, SftpJob, SftpVia};
use crate::ssh::exec::RemoteExit;
use crate::{Error, Result};

/// Refuses the options of the other methods, before anything touches the network.
fn check(options: &PullOptions) -> Result<()> {
    let refuse = |what: &str, why: &str| {
        Err(Error::InvalidOption(format!(
            "--via sftp: {what} cannot be used: {why}"
        )))
    };
    if options.install_relay.is_some() {
        return refuse("--install-relay", "nothing runs on the client");
    }
    if options.remote_dir.is_some() {
        return refuse(
            "--remote-dir",
            "nothing runs on the client; give the paths to back up instead",
        );
    }
    if options.serve.storage_quota.is_some() {
        return refuse(
            "--storage-quota",
            "no borg serve runs; borg writes the local repository itself",
        );
    }
    sftp_pull::check_args(&options.borg_args)
}

/// One pull over SFTP; borg's exit code in the outcome (nothing is forwarded).
pub(super) async fn pull<O, E>(
    options: &PullOptions,
    via: &SftpVia,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<PullOutcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    check(options)?;
    let job = SftpJob {
        session: &options.session,
        borg: &options.serve.borg,
        repo: &options.serve.repo,
        borg_args: &options.borg_args,
        env: &options.env,
        passphrase: options.passphrase.as_ref().map(|p| p.expose()),
        max_runtime: options.max_runtime,
        cancel: &options.cancel,
        work_dir: &via.work_dir,
    };
    let code = sftp_pull::pull(&job, stdout, stderr).await?;
    Ok(PullOutcome {
        exit: RemoteExit::Status(u32::try_from(code).unwrap_or(255)),
        forwarded: Default::default(),
    })
}
