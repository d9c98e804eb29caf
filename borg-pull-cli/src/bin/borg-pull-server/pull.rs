//! `borg-pull-server pull`: arguments, signals, a call to `borg_pull_tunnel::jobs::pull`, exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_cli::exit;
use borg_pull_cli::{hint, signals};
use borg_pull_core::ServeConfig;
use borg_pull_tunnel::jobs::pull::{pull, AgentKey, PullEnv, PullOptions, ServerLogin, ServerVersion, Via};
use borg_pull_tunnel::local::passphrase::Passphrase;
use borg_pull_tunnel::Error;
use clap::builder::TypedValueParser as _;

use crate::connect_args::ConnectArgs;

/// Exit codes of `pull` (from the shared table) and what the client needs, shown in its `--help`.
pub fn after_help() -> String {
    format!(
        "Exit codes: borg's own code passes through unchanged: 0 success, 1 warning (e.g. a file
vanished), 2 error; with BORG_EXIT_CODES=modern (borg 1.4 and later) 3-99 for specific errors
and 100-127 for warnings; 128+N when borg on the client was killed by signal N (130: SIGINT).
Failures of borg-pull-server itself:
{}

{}

On the client: the login shell must be a POSIX shell and borg installed. --via socket needs
borg-pull-relay there and exec plus UNIX socket forwarding from its sshd (the server's key may
be limited with `restrict,port-forwarding`); --via agent needs ssh there and agent forwarding
(`restrict,agent-forwarding`); --via tcp needs ssh, agent and TCP forwarding
(`restrict,agent-forwarding,port-forwarding`). For agent and tcp, the server's authorized_keys
must force borg serve for the agent key (`borg-pull-server authorize`), or use --ephemeral-key.
--via sftp needs nothing on the client but its SFTP server (the key may be limited with
`restrict,command=\"internal-sftp -R\"`): only `create` runs, here, over a read-only FUSE mount
of the client's / (root: /dev/fuse; other users: fusermount3 from fuse3). SFTP cannot carry ACLs,
xattrs, file flags, ctime, inode numbers, hard-link identity (each link is stored as a file) or
sub-second times; owners get the client's names as root, numeric ids only otherwise.
Logging goes to stderr; {var} (e.g. {var}=debug) overrides -v.",
        exit::lines(exit::PULL).trim_end(),
        exit::range_note(),
        var = borg_pull_cli::runtime::LOG_VAR,
    )
}

/// Arguments of `borg-pull-server pull`.
///
/// Logs in to the client over SSH, forwards a private UNIX socket there and runs
/// `borg BORG_ARGS...` on the client with BORG_REPO=ssh://borg-pull-server/REPO and
/// BORG_RSH="borg-pull-relay --socket SOCKET"; every connection to the socket is served by
/// `borg serve --append-only --restrict-to-repository REPO` here (borg 2 on the server:
/// BORG_REPO=ssh://borg-pull-server//REPO, BORGSTORE_RSH as BORG_RSH, and `borg serve --rest
/// --backend FILE:REPO --restrict-to-repository REPO --permissions no-delete`; the client's borg
/// must have the server's major version). So `::NAME` in BORG_ARGS is an archive in REPO, e.g. `borg-pull-server pull --repo /srv/borg/c1 backup@c1 -- create --stats
/// '::{hostname}-{now}' /etc`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    connect: ConnectArgs,

    /// The borg-pull-relay program on the client (looked up on the client's PATH by default).
    #[arg(long, value_name = "PATH", default_value = "borg-pull-relay")]
    relay: OsString,

    /// Copy this server's relay to the client when it has none of this version: into the login
    /// user's ${XDG_CACHE_HOME:-~/.cache}/borg-pull/relay-VERSION-SHA256 (0700, written to a temp
    /// name, checksum verified, then renamed), used instead of --relay. Costs nothing when it is
    /// already there. Alone, it copies the borg-pull-relay next to this program (the package's is
    /// statically linked, so it runs on any x86_64 Linux client); another file only as
    /// --install-relay=FILE (with `=`: a word after a bare --install-relay is never taken as FILE).
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        require_equals = true,
        value_parser = clap::builder::OsStringValueParser::new().try_map(relay_file)
    )]
    install_relay: Option<Option<PathBuf>>,

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

    /// Create the repository on this server first if it does not exist yet (`borg init -e MODE
    /// REPO` with borg 1.x, `borg -r REPO repo-create -e MODE` with borg 2), with --encryption and
    /// the passphrase pull uses: the client cannot create it through the restricted borg serve.
    #[arg(long, requires = "encryption")]
    init: bool,

    /// --init: borg's encryption mode, e.g. repokey-blake2 (borg 1.x) or aes256-ocb (borg 2).
    #[arg(long, value_name = "MODE", requires = "init")]
    encryption: Option<String>,

    /// The borg program on this server (runs `borg serve`).
    #[arg(long, value_name = "PATH", default_value = "borg")]
    borg: PathBuf,

    /// Most the repository may hold, e.g. 500G (borg serve --storage-quota; at least 10M): a
    /// backup beyond it fails with borg's "storage quota has been exceeded", so one append-only
    /// client cannot fill the disk that holds everyone's repositories.
    #[arg(long, value_name = "QUOTA", value_parser = crate::listen::storage_quota)]
    storage_quota: Option<String>,

    /// File holding the repository passphrase (first line). Otherwise this server's
    /// BORG_PASSPHRASE or BORG_PASSCOMMAND is used. It reaches borg on the client through its
    /// stdin, never through an argv or a file.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// Set an environment variable for borg on the client (repeatable), e.g.
    /// --env BORG_FILES_CACHE_TTL=40. BORG_REPO, BORG_RSH and BORG_PASSPHRASE are set by pull.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// How borg on the client reaches borg serve on this server. `socket` (recommended): a
    /// private UNIX socket forwarded to the client, borg-pull-relay there, borg serve run by pull
    /// itself; needs only exec and UNIX socket forwarding on the client. `agent` (borg docs'
    /// ssh-agent method): the client's own ssh logs in to this server's sshd (--server-ssh) with a
    /// key held by pull's in-process agent and forwarded to the client; the server's
    /// authorized_keys forces borg serve for that key (see `authorize`). Pick it when the client
    /// may only reach the server's sshd or the server's admin allows borg serve only as a forced
    /// command. `tcp` (the docs' `ssh -R 8022:localhost:22` method): like agent, through a TCP
    /// port forwarded on the client's loopback to --server-ssh; pick it when the client's sshd
    /// forbids UNIX socket forwarding but allows TCP forwarding, or the client cannot reach the
    /// server. `sftp` (the docs' SSHFS method without sshfs): no borg on the client; its tree
    /// is mounted here read-only over its SFTP server and this server's borg runs `create` in it
    /// (see below for what SFTP cannot carry).
    #[arg(long, value_enum, default_value = "socket")]
    via: ViaArg,

    /// sftp: where the per-client mount points live (the same path every run, which borg's files
    /// cache needs). Default: $RUNTIME_DIRECTORY, or /run/borg-pull for root, else
    /// $XDG_RUNTIME_DIR/borg-pull or ~/.local/state/borg-pull.
    #[arg(long, value_name = "DIR")]
    sftp_dir: Option<PathBuf>,

    /// agent/tcp: the server's sshd as USER@HOST[:PORT]: as the client reaches it (agent), or as
    /// this server reaches it (tcp).
    #[arg(long, value_name = "USER@HOST[:PORT]")]
    server_ssh: Option<String>,

    /// agent/tcp: the private key the in-process agent holds (loaded from this file only), whose
    /// authorized_keys line on the server forces borg serve.
    #[arg(long, value_name = "FILE", conflicts_with = "ephemeral_key")]
    agent_key: Option<PathBuf>,

    /// agent/tcp: a fresh ed25519 key for this pull only, added to --authorized-keys with the
    /// forced command and `restrict` and removed afterwards (also after a failure or Ctrl-C; a
    /// killed run's entry is removed by the next run).
    #[arg(long)]
    ephemeral_key: bool,

    /// --ephemeral-key: the server user's authorized_keys file (default ~/.ssh/authorized_keys).
    #[arg(long, value_name = "FILE", requires = "ephemeral_key")]
    authorized_keys: Option<PathBuf>,

    /// agent/tcp: this server's public host key, pinned for the client's ssh (a temporary
    /// known_hosts file with this one key, StrictHostKeyChecking=yes).
    #[arg(
        long,
        value_name = "FILE.pub",
        default_value = "/etc/ssh/ssh_host_ed25519_key.pub"
    )]
    server_host_key: PathBuf,

    /// agent/tcp: the ssh program on the client.
    #[arg(long, value_name = "PATH", default_value = "ssh")]
    remote_ssh: OsString,

    /// The client: [USER@]HOST.
    #[arg(value_name = "[USER@]HOST")]
    destination: String,

    /// Arguments for borg on the client, after `--`, e.g. `create --stats ::NAME /etc`.
    #[arg(last = true, required = true, value_name = "BORG_ARGS")]
    borg_args: Vec<OsString>,
}

/// `--via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ViaArg {
    Socket,
    Agent,
    Tcp,
    Sftp,
}

/// The method from `--via` and its options; an option of another method is a usage error.
fn via(args: &PullArgs, env: &PullEnv) -> Result<Via, Error> {
    let usage = |m: &str| Err(Error::InvalidOption(m.to_owned()));
    if args.via == ViaArg::Sftp {
        return sftp_via(args, env);
    }
    if args.via == ViaArg::Socket {
        if args.server_ssh.is_some() || args.agent_key.is_some() || args.ephemeral_key {
            return usage("--server-ssh, --agent-key and --ephemeral-key need --via agent or --via tcp");
        }
        return Ok(Via::Socket);
    }
    if args.storage_quota.is_some() {
        // pull does not run borg serve in these methods: the forced command does.
        return usage(
            "--storage-quota needs --via socket; with --via agent or tcp the server's forced command \
             runs borg serve (add --storage-quota to it in authorized_keys)",
        );
    }
    if args.install_relay.is_some() {
        // Ignoring it would leave the user believing the client got a relay it never uses.
        return usage(
            "--install-relay needs --via socket; with --via agent or tcp the client's borg reaches \
             this server with its own ssh and uses no relay",
        );
    }
    let Some(server) = &args.server_ssh else {
        return usage("--via agent and --via tcp need --server-ssh USER@HOST[:PORT] (the server's sshd)");
    };
    let agent_key = match (&args.agent_key, args.ephemeral_key) {
        (Some(file), false) => AgentKey::File(file.clone()),
        (None, true) => AgentKey::Ephemeral {
            authorized_keys: match (&args.authorized_keys, &env.ssh.home) {
                (Some(file), _) => file.clone(),
                (None, Some(home)) => home.join(".ssh/authorized_keys"),
                (None, None) => return usage("--ephemeral-key without HOME needs --authorized-keys FILE"),
            },
        },
        _ => return usage("--via agent and --via tcp need --agent-key FILE or --ephemeral-key"),
    };
    let host_key = borg_pull_tunnel::jobs::pull::via::read_host_key(&args.server_host_key)?;
    let mut login = ServerLogin::new(server, host_key, agent_key)?;
    login.ssh = args.remote_ssh.clone();
    Ok(match args.via {
        ViaArg::Agent => Via::Agent(login),
        _ => Via::Tcp(login),
    })
}

/// `--via sftp`: its options; the other methods' are usage errors (the library refuses the rest).
fn sftp_via(args: &PullArgs, env: &PullEnv) -> Result<Via, Error> {
    let usage = |m: &str| Err(Error::InvalidOption(m.to_owned()));
    if args.server_ssh.is_some() || args.agent_key.is_some() || args.ephemeral_key {
        return usage("--server-ssh, --agent-key and --ephemeral-key need --via agent or --via tcp");
    }
    if args.install_relay.is_some() || args.storage_quota.is_some() || args.remote_dir.is_some() {
        return usage(
            "--install-relay, --storage-quota and --remote-dir cannot be used with --via sftp: nothing \
             runs on the client and no borg serve runs here",
        );
    }
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let work_dir = match &args.sftp_dir {
        Some(dir) => Some(dir.clone()),
        None => borg_pull_tunnel::jobs::sftp_pull::default_work_dir(
            borg_pull_tunnel::jobs::sftp_pull::running_as_root(),
            var("RUNTIME_DIRECTORY"),
            var("XDG_RUNTIME_DIR"),
            env.ssh.home.as_deref(),
        ),
    };
    match work_dir {
        Some(work_dir) if work_dir.is_absolute() => {
            Ok(Via::Sftp(borg_pull_tunnel::jobs::sftp_pull::SftpVia { work_dir }))
        }
        _ => usage("--via sftp needs an absolute --sftp-dir DIR (no HOME or XDG_RUNTIME_DIR to default to)"),
    }
}

/// `--install-relay=FILE`'s FILE: `--install-relay=` names no file, and silently taking the relay
/// next to this program for it would hide a script's empty variable.
fn relay_file(file: OsString) -> Result<PathBuf, String> {
    if file.is_empty() {
        return Err(
            "no FILE after '=': write --install-relay alone for the borg-pull-relay next to \
                    this program, or --install-relay=FILE for another"
                .into(),
        );
    }
    Ok(file.into())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if borg_pull_tunnel::ssh::exec::is_env_name(name) => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected NAME=VALUE with a shell variable NAME, got {s:?}"
        )),
    }
}

/// Runs `pull` and returns borg's exit code, or our own (200 and up) for our failures.
pub fn run(args: PullArgs) -> ExitCode {
    let result = borg_pull_cli::runtime::block_on(run_async(args));
    match result {
        Ok(Ok(code)) => {
            if code != 0 {
                // Say whose code it is: ours are 200 and up, everything below is borg's.
                eprintln!("borg-pull-server: borg on the client exited with {code} (borg's own code, passed through)");
            }
            ExitCode::from(code)
        }
        Ok(Err(e)) => {
            eprintln!("borg-pull-server: error: {}", hint::render(&e));
            exit::for_pull_error(&e).into()
        }
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

async fn run_async(args: PullArgs) -> Result<u8, Error> {
    // First: a signal during set-up (a slow BORG_PASSCOMMAND) then cancels the pull before it
    // connects, instead of killing us with the default action.
    // The pull library takes one token; a second signal cannot wait for its clean-up.
    let shutdown = signals::install_for_one_job(SIGNAL_MESSAGES)?;
    let env = PullEnv::from_process();
    let via = via(&args, &env)?;
    let mut options = PullOptions::with_env(&args.destination, &args.repo, args.borg_args, &env)?;
    options.max_runtime = args.connect.max_runtime;
    args.connect.apply(&mut options.session)?;
    options.relay = args.relay;
    options.install_relay = match args.install_relay {
        None => None,
        Some(None) => Some(borg_pull_tunnel::jobs::pull::RelayBinary::beside_this_program()?),
        Some(Some(file)) => Some(file),
    };
    options.remote_borg = args.remote_borg;
    options.remote_dir = args.remote_dir;
    options.env = args.env.into_iter().map(|(n, v)| (n, v.into())).collect();
    let mut serve = ServeConfig::new(&args.repo)?;
    serve.borg = args.borg;
    serve.storage_quota = args.storage_quota;
    // Once per run: the version decides borg serve's flags and what the client's borg must be; a
    // --storage-quota that this borg has no flag for fails with it. The pull asks while it
    // connects; only creating the repository needs it first.
    if args.encryption.is_some() {
        serve = tokio::task::spawn_blocking(move || -> borg_pull_core::Result<ServeConfig> {
            serve.learn_version()?;
            serve.args()?;
            Ok(serve)
        })
        .await
        .expect("borg --version does not panic")
        .map_err(Error::Serve)?;
    }
    options.serve = serve;
    options.server_version = ServerVersion::Learn;
    options.passphrase = Passphrase::from_sources(&env.secret_sources(args.passphrase_file)).await?;
    if let Some(encryption) = args.encryption {
        let serve = options.serve.clone();
        let passphrase = options.passphrase.clone();
        let created = tokio::task::spawn_blocking(move || {
            serve.create_repository(&encryption, passphrase.as_ref().map(Passphrase::expose))
        })
        .await
        .expect("borg init does not panic")
        .map_err(Error::Serve)?;
        if created {
            tracing::info!(repo = %options.serve.repo.display(), "repository created");
        }
    }
    options.cancel = shutdown.graceful;
    options.via = via;
    let code = pull(options).await?;
    Ok(u8::try_from(code).unwrap_or(255))
}

/// The first SIGINT/SIGTERM stops borg on the client (SIGINT, then a grace period) and cleans up;
/// the second exits at once.
const SIGNAL_MESSAGES: signals::Messages = signals::Messages {
    first: "stopping borg on the client and cleaning up (again to exit at once)",
    second: "exiting at once",
};
