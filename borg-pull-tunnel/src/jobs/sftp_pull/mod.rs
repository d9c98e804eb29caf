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
//!    `--files-cache=mtime,size` (SFTP carries no ctime and no inode numbers) and `--noflags
//!    --noxattrs --noacls` (it carries none of them either: borg need not ask each file). The
//!    passphrase never leaves this server.
//! 5. Unmount on every path: success, failure, cancellation (Ctrl-C/SIGTERM), `--max-runtime`.
//!
//! What SFTP cannot carry, and so the archive lacks: ACLs, xattrs, file flags, ctime, inode
//! numbers (and so hard-link identity: each link is stored as its own file), sub-second times.

mod accounts;
mod borg_args;
mod borg_run;
mod work_dir;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use borg_pull_mount::{Mount, MountOptions};
use borg_pull_sftp::Client;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument as _};

/// What the mount says in [`Error::SftpMount`], and the SFTP client in [`Error::Sftp`].
pub use borg_pull_mount::Error as MountError;
pub use borg_pull_sftp::Error as SftpError;
pub use work_dir::default_work_dir;

use crate::error::Peer;
use crate::jobs::sftp_pull::borg_args::{ClientView, Owners};
use crate::jobs::sftp_pull::borg_run::{BorgRun, Ended, Namespace};
use crate::limits::CANCEL_GRACE;
use crate::ssh::incoming::RefuseAll;
use crate::ssh::session::{self, Session, SessionOptions};
use crate::{Error, Result};

/// The sftp method's settings.
#[derive(Debug, Clone)]
pub struct SftpVia {
    /// Where the per-client directories (mount point, account files) live on this server; see
    /// [`default_work_dir`].
    pub work_dir: PathBuf,
}

/// What one pull over SFTP needs of a pull's options (`jobs::pull` hands it over; this module
/// knows nothing of the other methods).
pub(crate) struct SftpJob<'a> {
    /// How to reach and log in to the client.
    pub(crate) session: &'a SessionOptions,
    /// This server's borg.
    pub(crate) borg: &'a Path,
    /// The local repository.
    pub(crate) repo: &'a Path,
    /// `create ...` as for the client's borg.
    pub(crate) borg_args: &'a [OsString],
    /// More variables for borg (`--env`).
    pub(crate) env: &'a [(String, OsString)],
    /// The repository passphrase, for this server's borg only.
    pub(crate) passphrase: Option<&'a str>,
    /// The longest borg may run.
    pub(crate) max_runtime: Duration,
    /// Ctrl-C / SIGTERM.
    pub(crate) cancel: &'a CancellationToken,
    /// See [`SftpVia::work_dir`].
    pub(crate) work_dir: &'a Path,
}

/// Whether this process is root: then the mount uses /dev/fuse and borg gets the client's names.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A usage error of the sftp method.
fn usage(text: String) -> Error {
    Error::InvalidOption(format!("--via sftp: {text}"))
}

/// Refuses borg arguments the sftp method cannot run, before anything touches the network (the
/// paths and owners are checked for real once the client is known).
pub(crate) fn check_args(borg_args: &[OsString]) -> Result<()> {
    let probe = ClientView {
        home: b"/",
        hostname: "client",
        owners: Owners::ClientNames,
    };
    borg_args::rewrite(borg_args, &probe).map(drop)
}

/// `check-config`'s look at an sftp client: its `sftp` subsystem starts and answers; returns the
/// SFTP server's working directory (where relative paths start).
pub async fn probe(session: &Session) -> Result<String> {
    let client = start_sftp(session).await?;
    let home = client.realpath(b".").await.map_err(|source| Error::Sftp {
        peer: session.peer(),
        what: "asking the SFTP server for its working directory",
        source,
    });
    let _ = client.shutdown().await;
    Ok(borg_pull_core::text::escape_for_log(&home?))
}

/// Opens the client's `sftp` subsystem and starts the SFTP session on it.
async fn start_sftp(session: &Session) -> Result<Client> {
    let stream = match session.open_subsystem("sftp").await {
        Err(Error::RequestDenied { peer, .. }) => return Err(Error::SftpSubsystemRefused { peer }),
        other => other?,
    };
    Client::start(stream, borg_pull_sftp::Limits::default())
        .await
        .map_err(|source| Error::Sftp {
            peer: session.peer(),
            what: "starting the SFTP session",
            source,
        })
}

/// Carries out one pull over SFTP; see the module documentation.
pub(crate) async fn pull<O, E>(job: &SftpJob<'_>, stdout: &mut O, stderr: &mut E) -> Result<i32>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let span = tracing::info_span!("pull", client = %job.session.host, port = job.session.port, via = "sftp");
    async move {
        check_args(job.borg_args)?;
        let session = tokio::select! {
            s = session::connect(job.session, Arc::new(RefuseAll)) => s?,
            () = job.cancel.cancelled() => return Err(Error::Interrupted),
        };
        let result = on_session(job, &session, stdout, stderr).await;
        let _ = stderr.flush().await;
        session.disconnect_within(crate::limits::CLEANUP_TIMEOUT).await;
        let code = result?;
        info!(rc = code, "pull finished");
        Ok(code)
    }
    .instrument(span)
    .await
}

/// Everything between connecting and disconnecting; borg's exit code.
async fn on_session<O, E>(job: &SftpJob<'_>, session: &Session, stdout: &mut O, stderr: &mut E) -> Result<i32>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let cancel = job.cancel;
    let client = start_sftp(session).await?;
    let prepared = tokio::select! {
        r = prepare(job, session, &client) => r,
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
    let args = borg_args::rewrite(job.borg_args, &view)?;
    let root = dir.join("root");
    let mut mount_options = MountOptions::new(b"/".to_vec());
    mount_options.fs_name = format!("borg-pull-sftp:{}", job.session.host);
    let mount = tokio::select! {
        m = Mount::start(client.clone(), &root, mount_options) => m.map_err(|source| Error::SftpMount {
            peer: session.peer(),
            source,
        }),
        () = cancel.cancelled() => {
            let _ = client.shutdown().await;
            return Err(Error::Interrupted);
        }
    };
    let mount = match mount {
        Ok(m) => m,
        Err(e) => {
            let _ = client.shutdown().await;
            return Err(e);
        }
    };
    info!(mountpoint = %root.display(), "the client's tree is mounted read-only");
    let run = BorgRun {
        borg: job.borg,
        args,
        repo: job.repo,
        cwd: &root,
        passphrase: job.passphrase,
        namespace,
        // borg runs here: the variables meant for it (e.g. BORG_FILES_CACHE_TTL) are its.
        env: job.env,
    };
    let deadline = Instant::now() + job.max_runtime;
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
        Ended::Deadline => Err(Error::SftpMaxRuntime {
            peer: session.peer(),
            secs: job.max_runtime.as_secs(),
        }),
    }
}

type Prepared = (PathBuf, Vec<u8>, String, Owners, Namespace);

/// The client's home, host name and (as root) accounts; the per-client directory.
async fn prepare(job: &SftpJob<'_>, session: &Session, client: &Client) -> Result<Prepared> {
    let peer: Peer = session.peer();
    let as_root = running_as_root();
    let client_accounts = async {
        match as_root {
            true => accounts::read(client, &peer).await,
            false => Ok(None),
        }
    };
    // All at once: each is a few round trips, which add up at a distance.
    let (home, hostname, client_accounts) = tokio::join!(
        client.realpath(b"."),
        accounts::read_hostname(client, &peer),
        client_accounts
    );
    let home = match home {
        Ok(home) if home.starts_with(b"/") => home,
        _ => b"/".to_vec(),
    };
    let hostname = hostname.unwrap_or_else(|| session.host().to_owned());
    let id = work_dir::client_id(&job.session.user, session.host(), session.port());
    let work = job.work_dir.to_owned();
    let dir = tokio::task::spawn_blocking(move || work_dir::client_dir(&work, &id))
        .await
        .map_err(|source| Error::BackgroundTask {
            task: "making the per-client directory",
            source,
        })??;
    let (owners, namespace) = if as_root {
        match client_accounts? {
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
