//! `borg-pull-server pull`: arguments, signals, a call to `borg_pull_tunnel::pull`, exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_core::ServeConfig;
use borg_pull_tunnel::pull::{pull, PullEnv, PullOptions};
use borg_pull_tunnel::secret::Passphrase;
use borg_pull_tunnel::{Error, SecretKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit codes of `pull`, shown in its `--help`.
pub const PULL_EXIT_CODES_HELP: &str = "\
Exit codes: borg's own code passes through unchanged:
    0  success            1  warning (e.g. a file vanished)     2  error
  128+N  borg on the client was killed by signal N
Failures of borg-pull-server itself:
   64  usage error (bad option or argument, NUL byte in an argument)
   65  host key verification failed (unknown host, changed or revoked key)
   66  identity unusable or authentication refused
   67  the repository passphrase could not be obtained
   68  cannot connect to the client (DNS, refused, timeout)
   69  the client's sshd refused the UNIX socket forward, the relay or borg is missing on the
      client, or setting up the private socket directory there failed
   70  internal or SSH protocol error
   74  connection to the client lost (keepalives unanswered)
  130  interrupted (SIGINT/SIGTERM); borg on the client was stopped and cleaned up

On the client: the login shell must be a POSIX shell, borg and borg-pull-relay must be
installed, and the server's key may be limited in authorized_keys with
`restrict,port-forwarding` (pull needs exec and UNIX socket forwarding, nothing else).
Logging goes to stderr; RUST_LOG overrides -v.";

/// Arguments of `borg-pull-server pull`.
///
/// Logs in to the client over SSH, forwards a private UNIX socket there and runs
/// `borg BORG_ARGS...` on the client with BORG_REPO=ssh://borg-pull-server/REPO and
/// BORG_RSH="borg-pull-relay --socket SOCKET"; every connection to the socket is served by
/// `borg serve --append-only --restrict-to-repo REPO` here. So `::NAME` in BORG_ARGS is an archive
/// in REPO, e.g. `borg-pull-server pull --repo /srv/borg/c1 backup@c1 -- create --stats
/// '::{hostname}-{now}' /etc`.
#[derive(Debug, clap::Args)]
#[command(after_help = PULL_EXIT_CODES_HELP)]
pub struct PullArgs {
    /// The client's sshd port.
    #[arg(short = 'p', long, default_value_t = 22)]
    port: u16,

    /// Private key to log in with (ed25519, ecdsa or rsa; default ~/.ssh/id_ed25519, id_ecdsa,
    /// id_rsa). An encrypted key takes its passphrase from --identity-passphrase-file or the
    /// BORG_PULL_IDENTITY_PASSPHRASE environment variable, never from the command line.
    #[arg(short = 'i', long, value_name = "FILE")]
    identity: Option<PathBuf>,

    /// File holding the identity's passphrase (first line).
    #[arg(long, value_name = "FILE")]
    identity_passphrase_file: Option<PathBuf>,

    /// known_hosts file used to verify the client's host key (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,

    /// Record the host key of a client not yet in known_hosts (like StrictHostKeyChecking
    /// accept-new); a changed key is still refused.
    #[arg(long)]
    accept_new_host_key: bool,

    /// Seconds without traffic from the client before a keepalive is sent; after 3 unanswered
    /// ones the client counts as dead and the run ends (exit 74). Like ssh's ServerAliveInterval.
    #[arg(long, value_name = "SECS", default_value_t = borg_pull_tunnel::limits::KEEPALIVE_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    keepalive: u64,

    /// The borg-pull-relay program on the client (looked up on the client's PATH by default).
    #[arg(long, value_name = "PATH", default_value = "borg-pull-relay")]
    relay: OsString,

    /// The borg program on the client.
    #[arg(long, value_name = "PATH", default_value = "borg")]
    remote_borg: OsString,

    /// Directory on the client to run borg in (restores: `extract` writes into it; `/` with
    /// `extract --numeric-ids` for a full restore). Default: the login directory.
    #[arg(long, value_name = "DIR")]
    remote_dir: Option<OsString>,

    /// The repository on this server (absolute path); the only one the client can reach.
    #[arg(long, value_name = "REPO")]
    repo: PathBuf,

    /// The borg program on this server (runs `borg serve`).
    #[arg(long, value_name = "PATH", default_value = "borg")]
    borg: PathBuf,

    /// File holding the repository passphrase (first line). Otherwise this server's
    /// BORG_PASSPHRASE or BORG_PASSCOMMAND is used. It reaches borg on the client through its
    /// stdin, never through an argv or a file.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// Set an environment variable for borg on the client (repeatable), e.g.
    /// --env BORG_FILES_CACHE_TTL=40. BORG_REPO, BORG_RSH and BORG_PASSPHRASE are set by pull.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// The client: [USER@]HOST.
    #[arg(value_name = "[USER@]HOST")]
    destination: String,

    /// Arguments for borg on the client, after `--`, e.g. `create --stats ::NAME /etc`.
    #[arg(last = true, required = true, value_name = "BORG_ARGS")]
    borg_args: Vec<OsString>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if borg_pull_tunnel::exec::is_env_name(name) => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected NAME=VALUE with a shell variable NAME, got {s:?}"
        )),
    }
}

/// Runs `pull` and returns borg's exit code, or our own (64 and up) for our failures.
pub fn run(args: PullArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(async {
        match run_async(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("borg-pull-server: error: {e}");
                exit_code(&e)
            }
        }
    });
    // Do not wait for blocking stdin/stdout tasks of the runtime.
    runtime.shutdown_background();
    ExitCode::from(code)
}

async fn run_async(args: PullArgs) -> Result<u8, Error> {
    let env = PullEnv::from_process();
    let mut options = PullOptions::with_env(&args.destination, &args.repo, args.borg_args, &env)?;
    options.session.port = args.port;
    options.session.identity = args.identity;
    options.session.accept_new_host_key = args.accept_new_host_key;
    options.session.keepalive_interval = std::time::Duration::from_secs(args.keepalive);
    if let Some(kh) = args.known_hosts {
        options.session.known_hosts = kh;
    }
    if let Some(path) = args.identity_passphrase_file {
        options.session.identity_passphrase = Some(first_line(&path).await?);
    }
    options.relay = args.relay;
    options.remote_borg = args.remote_borg;
    options.remote_dir = args.remote_dir;
    options.env = args.env.into_iter().map(|(n, v)| (n, v.into())).collect();
    let mut serve = ServeConfig::new(&args.repo)?;
    serve.borg = args.borg;
    options.serve = serve;
    options.passphrase = Passphrase::from_sources(&env.secret_sources(args.passphrase_file)).await?;

    let cancel = CancellationToken::new();
    options.cancel = cancel.clone();
    spawn_signal_watch(cancel.clone())?;
    let code = pull(options).await?;
    Ok(u8::try_from(code).unwrap_or(255))
}

async fn first_line(path: &std::path::Path) -> Result<String, Error> {
    borg_pull_tunnel::identity::ensure_private(path, SecretKind::IdentityPassphrase)?;
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot read identity passphrase file {path:?}"),
            source,
        })?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// SIGINT/SIGTERM cancel the pull: borg on the client gets SIGINT, then everything is cleaned up.
fn spawn_signal_watch(cancel: CancellationToken) -> Result<(), Error> {
    let io = |source| Error::Io {
        context: "cannot install signal handlers".into(),
        source,
    };
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("signal received: stopping borg on the client and cleaning up");
        cancel.cancel();
    });
    Ok(())
}

/// Our own failures map to codes 64 and up (see [`PULL_EXIT_CODES_HELP`]).
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidOption(_) | Error::NulInArgument(_) => 64,
        Error::Serve(borg_pull_core::Error::RepoNotAbsolute { .. }) => 64,
        e if e.is_host_key() => 65,
        Error::KnownHostsIo { .. } => 65,
        Error::SecretFileTooOpen {
            kind: SecretKind::RepoPassphrase,
            ..
        } => 67,
        Error::Identity { .. }
        | Error::IdentityEncrypted { .. }
        | Error::NoIdentity { .. }
        | Error::SecretFileTooOpen { .. }
        | Error::AuthFailed { .. } => 66,
        Error::Passphrase(_) => 67,
        Error::Connect { .. } | Error::ConnectTimeout { .. } => 68,
        Error::ForwardDenied { .. }
        | Error::RemoteProgramMissing { .. }
        | Error::RemoteHelper { .. }
        | Error::RemoteHelperTimeout { .. } => 69,
        Error::ConnectionLost { .. }
        | Error::NoAnswer { .. }
        | Error::OversizedPacket { .. }
        | Error::ChannelOpenFlood { .. }
        | Error::RemoteOutputTooLarge { .. } => 74,
        Error::Interrupted => 130,
        _ => 70,
    }
}
