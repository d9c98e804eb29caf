//! `borg-pull-server listen`: arguments, signals, and a call to `borg_pull_core::listen`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use borg_pull_core::limits::{DEFAULT_MAX_CONNECTIONS, LISTEN_SHUTDOWN_GRACE};
use borg_pull_core::listen::{serve_connections_with_abort, ListenLimits, PrivateListener};
use borg_pull_core::serve::looks_like_repository;
use borg_pull_core::ServeConfig;
use tracing::{info, warn};

use crate::UsageError;

/// Arguments of `borg-pull-server listen`.
///
/// Clients connect with BORG_RSH="borg-pull-relay --socket PATH" (directly, or through an ssh
/// forward of PATH) and the URL ssh://borg-pull-server/REPO (borg 2: ssh://borg-pull-server//REPO,
/// and BORGSTORE_RSH as BORG_RSH). Each connection gets its own `borg serve --append-only
/// --restrict-to-repository REPO` (borg 2: `borg serve --rest --backend FILE:REPO
/// --restrict-to-repository REPO --permissions no-delete`); nothing a client sends changes these
/// flags.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// UNIX socket to listen on, e.g. /run/borg-pull/client1.sock.
    ///
    /// Its directory is created with mode 0700 if missing (its parent must exist) and refused if
    /// group or others can write to it, if it is a symbolic link, or if a directory above it is not
    /// owned by root or us or is writable by others (sticky ones like /tmp are fine); the socket is
    /// made 0600, with a lock file .NAME.lock beside it. A stale socket is replaced, a live one
    /// refused. Optional under systemd socket activation (LISTEN_FDS), which provides it.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// The one repository clients may use (absolute path; borg serve --restrict-to-repository).
    #[arg(long, value_name = "REPO")]
    repo: PathBuf,

    /// Let clients delete, prune and compact: run borg serve without --append-only (borg 2:
    /// --permissions all instead of no-delete).
    #[arg(long)]
    allow_delete: bool,

    /// Most the repository may hold, e.g. 500G or 1.5T (borg serve --storage-quota; at least 10M;
    /// borg 1.x only: borg 2's serve has no quota).
    ///
    /// A backup that would go beyond it fails with borg's "storage quota has been exceeded", so a
    /// client cannot fill the server's disk. Overrides the quota stored in the repository.
    #[arg(long, value_name = "QUOTA", value_parser = storage_quota)]
    storage_quota: Option<String>,

    /// Create the repository here first if it does not exist yet (`borg init -e MODE REPO` with
    /// borg 1.x, `borg -r REPO repo-create -e MODE` with borg 2), with --encryption; the
    /// passphrase comes from BORG_PASSPHRASE or BORG_PASSCOMMAND. Clients cannot create it
    /// through the restricted borg serve.
    #[arg(long, requires = "encryption")]
    init: bool,

    /// --init: borg's encryption mode, e.g. repokey-blake2 (borg 1.x) or aes256-ocb (borg 2).
    #[arg(long, value_name = "MODE", requires = "init")]
    encryption: Option<String>,

    /// The borg program to run as `borg serve` (looked up on PATH unless it contains a `/`).
    #[arg(long, value_name = "PATH", default_value = "borg")]
    borg: PathBuf,

    /// Most borg serve sessions at once; further connections wait until one ends.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    max_connections: usize,

    /// Seconds running sessions may continue after SIGINT/SIGTERM before borg serve is killed
    /// (a second signal kills them at once). Keep it below systemd's TimeoutStopSec.
    #[arg(long, value_name = "SECS", default_value_t = LISTEN_SHUTDOWN_GRACE.as_secs())]
    shutdown_grace: u64,
}

/// Checks `--storage-quota` as borg does (also used by `pull`).
pub(crate) fn storage_quota(s: &str) -> Result<String, String> {
    borg_pull_core::serve::parse_storage_quota(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got {s:?}")),
    }
}

/// Runs the listener until SIGINT or SIGTERM; `Ok(())` after a clean stop.
pub fn run(args: ListenArgs) -> anyhow::Result<()> {
    // First, while single-threaded: this reads and clears LISTEN_FDS/LISTEN_PID.
    let activated = PrivateListener::from_systemd()?;
    let notifier = borg_pull_cli::notify::Notifier::from_env();

    let mut config = ServeConfig {
        borg: args.borg,
        allow_delete: args.allow_delete,
        storage_quota: args.storage_quota,
        ..ServeConfig::new(args.repo)?
    };
    let borg = config.find_program()?;
    let version = config.learn_version()?.clone();
    tracing::debug!(borg = %borg.display(), %version, "found borg");
    // Fails now, not at the first connection, if this borg has no flag for a setting.
    let argv = config.args()?;
    info!(
        "each connection runs: {} {}",
        config.borg.display(),
        argv.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(encryption) = args.encryption.as_deref() {
        if config.create_repository(encryption, None)? {
            info!(repo = %config.repo.display(), encryption, "repository created");
        }
    }
    if !looks_like_repository(&config.repo) {
        warn!(
            repo = %config.repo.display(),
            "not a borg repository (yet); clients get borg's error until --init (or borg init / repo-create) creates it"
        );
    }
    if config.allow_delete {
        warn!("--allow-delete: clients may delete archives (borg serve runs without --append-only)");
    }
    let limits = ListenLimits {
        max_connections: args.max_connections,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };

    borg_pull_cli::runtime::block_on(async {
        // Signal handlers before the socket exists, so a signal sent once it appears is never fatal.
        let shutdown = borg_pull_cli::signals::install(SIGNAL_MESSAGES)
            .context("cannot install the SIGINT/SIGTERM handlers")?;
        let (cancel, abort) = (shutdown.graceful, shutdown.forced);
        let listener = match (activated, args.socket) {
            (Some(listener), requested) => {
                if let Some(requested) = requested {
                    if listener.path() != Some(requested.as_path()) {
                        warn!(
                            requested = %requested.display(),
                            inherited = ?listener.path(),
                            "--socket differs from the socket systemd passed; using systemd's"
                        );
                    }
                }
                listener
            }
            (None, Some(path)) => PrivateListener::bind(&path)?,
            (None, None) => {
                return Err(UsageError(
                    "no --socket given and no socket passed by systemd (LISTEN_FDS); \
                     pass --socket /run/borg-pull/NAME.sock"
                        .into(),
                )
                .into())
            }
        };
        info!(
            repo = %config.repo.display(),
            append_only = !config.allow_delete,
            max_connections = limits.max_connections,
            storage_quota = config.storage_quota.as_deref().unwrap_or("none"),
            "serving"
        );
        // Type=notify: ready once the socket accepts; the watchdog pings while the loop runs.
        notifier.send(&format!("READY=1\nSTATUS=serving {}", config.repo.display()));
        let watchdog_stop = tokio_util::sync::CancellationToken::new();
        let shutting_down = cancel.clone();
        let (served, (), ()) = tokio::join!(
            async {
                let served = serve_connections_with_abort(listener, config, limits, cancel, abort).await;
                watchdog_stop.cancel();
                served
            },
            notifier.watchdog(watchdog_stop.clone()),
            async {
                tokio::select! {
                    () = shutting_down.cancelled() => notifier.send("STOPPING=1"),
                    () = watchdog_stop.cancelled() => {}
                }
            },
        );
        served?;
        info!("stopped");
        anyhow::Ok(())
    })
    .context("cannot start the async runtime")?
}

/// The first SIGINT/SIGTERM stops gracefully, the second stops running sessions now.
const SIGNAL_MESSAGES: borg_pull_cli::signals::Messages = borg_pull_cli::signals::Messages {
    first: "shutting down (again to stop running sessions now)",
    second: "stopping running sessions now",
};
