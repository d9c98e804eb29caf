//! `pull --via sftp`: Borg's SSHFS method without sshfs, for a client that has only sshd.
//!
//! 1. Connect as for every pull (host key, jump hosts, agent login); open the client's `sftp`
//!    subsystem on that session ([`Session::open_subsystem`]) and start the SFTP client on it.
//!    Nothing else runs on the client: it works with a key limited to `internal-sftp -R`.
//! 2. As root, read the client's `/etc/passwd` and `/etc/group` over SFTP (bounded, parsed to
//!    `name:id`, [`accounts`]); without root, borg gets `--numeric-ids` (logged).
//! 3. Mount the client's `/` read-only with FUSE at `WORK/sftp/<client-id>/root` (0700, the same
//!    path every run, which borg's files cache needs; a stale mount of a killed run is removed
//!    first).
//! 4. Run this server's `borg create` against the local repository, in the mount, with the
//!    user's paths made relative ([`borg_args`]) so the archive looks like one made on the client,
//!    and `--files-cache=mtime,size` (SFTP carries no ctime and no inode numbers). The passphrase
//!    never leaves this server.
//! 5. Unmount on every path: success, failure, cancellation (Ctrl-C/SIGTERM), `--max-runtime`.
//!
//! What SFTP cannot carry, and so the archive lacks: ACLs, xattrs, file flags, ctime, inode
//! numbers (and so hard-link identity: each link is stored as its own file), sub-second times.

mod accounts;
mod borg_args;
mod borg_run;
pub mod error;
mod work_dir;

use std::path::PathBuf;
use std::sync::Arc;

use borg_pull_mount::{Mount, MountOptions};
use borg_pull_sftp::Client;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tracing::{info, warn, Instrument as _};

pub use error::SftpPullError;
pub use work_dir::default_work_dir;

use crate::channels::ForwardStats;
use crate::jobs::pull::{PullOptions, PullOutcome};
use crate::jobs::sftp_pull::borg_args::{ClientView, Owners};
use crate::jobs::sftp_pull::borg_run::{BorgRun, Ended, Namespace};
use crate::limits::CANCEL_GRACE;
use crate::ssh::exec::RemoteExit;
use crate::ssh::incoming::RefuseAll;
use crate::ssh::session::{self, Session};
use crate::{Error, Result};

/// The sftp method's settings.
#[derive(Debug, Clone)]
pub struct SftpVia {
    /// Where the per-client directories (mount point, account files) live on this server; see
    /// [`default_work_dir`].
    pub work_dir: PathBuf,
}

/// Whether this process is root: then the mount uses /dev/fuse and borg gets the client's names.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Refuses what the sftp method cannot do, before anything touches the network.
fn check(options: &PullOptions) -> std::result::Result<(), SftpPullError> {
    let refuse = |what: &str, why: &str| Err(SftpPullError::Usage(format!("{what} cannot be used: {why}")));
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
    // The paths and owners are checked for real once the client is known.
    let probe = ClientView {
        home: b"/",
        hostname: "client",
        owners: Owners::ClientNames,
    };
    borg_args::rewrite(&options.borg_args, &probe).map(drop)
}

/// `check-config`'s look at an sftp client: its `sftp` subsystem starts and answers; returns the
/// SFTP server's working directory (where relative paths start).
pub async fn probe(session: &Session) -> Result<String> {
    let stream = match session.open_subsystem("sftp").await {
        Err(Error::RequestDenied { peer, .. }) => {
            return Err(SftpPullError::SubsystemRefused { host: peer.host }.into())
        }
        other => other?,
    };
    let client = Client::start(stream, borg_pull_sftp::Limits::default())
        .await
        .map_err(SftpPullError::from)?;
    let home = client.realpath(b".").await.map_err(SftpPullError::from);
    let _ = client.shutdown().await;
    Ok(borg_pull_core::text::escape_for_log(&home?))
}

/// Carries out one pull over SFTP; see the module documentation.
pub(crate) async fn pull<O, E>(
    options: &PullOptions,
    via: &SftpVia,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<PullOutcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let span = tracing::info_span!("pull", client = %options.session.host, port = options.session.port, via = "sftp");
    async move {
        check(options)?;
        let cancel = options.cancel.clone();
        let session = tokio::select! {
            s = session::connect(&options.session, Arc::new(RefuseAll)) => s?,
            () = cancel.cancelled() => return Err(Error::Interrupted),
        };
        let result = on_session(options, via, &session, stdout, stderr).await;
        let _ = stderr.flush().await;
        if tokio::time::timeout(crate::limits::CLEANUP_TIMEOUT, session.disconnect())
            .await
            .is_err()
        {
            warn!("the client did not take our disconnect in time");
        }
        let code = result?;
        info!(rc = code, "pull finished");
        Ok(PullOutcome {
            exit: RemoteExit::Status(code as u32),
            forwarded: ForwardStats::default(),
        })
    }
    .instrument(span)
    .await
}

/// Everything between connecting and disconnecting; borg's exit code.
async fn on_session<O, E>(
    options: &PullOptions,
    via: &SftpVia,
    session: &Session,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<i32>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let cancel = &options.cancel;
    let stream = match session.open_subsystem("sftp").await {
        Err(Error::RequestDenied { peer, .. }) => {
            return Err(SftpPullError::SubsystemRefused { host: peer.host }.into())
        }
        other => other?,
    };
    let client = Client::start(stream, borg_pull_sftp::Limits::default())
        .await
        .map_err(SftpPullError::from)?;
    let prepared = tokio::select! {
        r = prepare(options, via, session, &client) => r,
        () = cancel.cancelled() => Err(Error::Interrupted),
    };
    let (dir, view_home, hostname, owners, namespace) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = client.shutdown().await;
            return Err(e);
        }
    };
    let view = ClientView {
        home: &view_home,
        hostname: &hostname,
        owners,
    };
    let args = borg_args::rewrite(&options.borg_args, &view)?;
    let root = dir.join("root");
    let mut mount_options = MountOptions::new(b"/".to_vec());
    mount_options.fs_name = format!("borg-pull-sftp:{}", options.session.host);
    let mount = tokio::select! {
        m = Mount::start(client.clone(), &root, mount_options) => m.map_err(SftpPullError::from),
        () = cancel.cancelled() => {
            let _ = client.shutdown().await;
            return Err(Error::Interrupted);
        }
    };
    let mount = match mount {
        Ok(m) => m,
        Err(e) => {
            let _ = client.shutdown().await;
            return Err(e.into());
        }
    };
    info!(mountpoint = %root.display(), "the client's tree is mounted read-only");
    let passphrase = options.passphrase.as_ref().map(|p| p.expose());
    let run = BorgRun {
        borg: &options.serve.borg,
        args,
        repo: &options.serve.repo,
        cwd: &root,
        passphrase,
        namespace,
        // borg runs here: the variables meant for it (e.g. BORG_FILES_CACHE_TTL) are its.
        env: &options.env,
    };
    let deadline = Instant::now() + options.max_runtime;
    let ended = run.run(stdout, stderr, cancel, deadline, CANCEL_GRACE).await;
    let report = mount.report();
    for problem in &report.problems {
        warn!("{problem}");
    }
    if report.dropped > 0 {
        warn!(
            more = report.dropped,
            "more problems with the client's tree were not listed"
        );
    }
    let unmounted = tokio::task::spawn_blocking(move || mount.stop()).await;
    let _ = client.shutdown().await;
    match unmounted {
        Ok(Ok(())) => info!("unmounted"),
        Ok(Err(e)) => warn!("{e}"),
        Err(e) => warn!("unmounting: {e}"),
    }
    match ended? {
        Ended::Exited(code) => Ok(code),
        Ended::Cancelled => Err(Error::Interrupted),
        Ended::Deadline => Err(SftpPullError::MaxRuntime {
            host: session.host().to_owned(),
            secs: options.max_runtime.as_secs(),
        }
        .into()),
    }
}

type Prepared = (PathBuf, Vec<u8>, String, Owners, Namespace);

/// The client's home, host name and (as root) accounts; the per-client directory.
async fn prepare(
    options: &PullOptions,
    via: &SftpVia,
    session: &Session,
    client: &Client,
) -> Result<Prepared> {
    let home = match client.realpath(b".").await {
        Ok(home) if home.starts_with(b"/") => home,
        _ => b"/".to_vec(),
    };
    let hostname = accounts::read_hostname(client)
        .await
        .unwrap_or_else(|| session.host().to_owned());
    let id = work_dir::client_id(&options.session.user, session.host(), session.port());
    let work = via.work_dir.clone();
    let dir = tokio::task::spawn_blocking(move || work_dir::client_dir(&work, &id))
        .await
        .map_err(|e| Error::InvalidOption(format!("making the work directory: {e}")))??;
    let (owners, namespace) = if running_as_root() {
        match accounts::read(client).await? {
            Some(read) => {
                let files = accounts::write(&read, &dir)?;
                (Owners::ClientNames, Namespace::ClientAccounts(files))
            }
            None => (Owners::NumericOnly, Namespace::Shared),
        }
    } else {
        info!(
            "not root: borg cannot get the client's user and group names (that needs a private mount \
             namespace), so it stores numeric owners only (--numeric-ids)"
        );
        (Owners::NumericOnly, Namespace::Shared)
    };
    Ok((dir, home, hostname, owners, namespace))
}

impl From<SftpPullError> for Error {
    fn from(e: SftpPullError) -> Self {
        Error::SftpPull(Box::new(e))
    }
}
