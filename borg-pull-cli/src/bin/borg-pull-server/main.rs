//! borg-pull-server: the backup server's half of BorgBackup pull mode.
//!
//! `borg-pull-server listen` replaces `socat UNIX-LISTEN:/run/borg/x.sock,fork EXEC:"borg serve ..."`
//! from borg's pull-mode recipe. This file only parses arguments, sets up logging and maps errors to
//! exit codes; the work is in `borg_pull_core`.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

mod listen;
mod pull;

/// Exit codes (sysexits.h names), shown in `--help`.
mod exit {
    /// Any error not listed below.
    pub const FAILURE: u8 = 1;
    /// EX_USAGE: the command line is wrong (unknown option, relative --repo, no --socket, ...).
    pub const USAGE: u8 = 64;
    /// EX_UNAVAILABLE: the borg program cannot be found or run.
    pub const UNAVAILABLE: u8 = 69;
    /// EX_OSERR: the operating system refused (bind, socket from systemd, signal setup).
    pub const OSERR: u8 = 71;
    /// EX_CANTCREAT: the socket cannot be created safely (its directory is missing, insecure or
    /// foreign, or another file is in the way).
    pub const CANTCREAT: u8 = 73;
    /// EX_TEMPFAIL: another listener is serving the socket; retry once it has stopped.
    pub const TEMPFAIL: u8 = 75;
}

/// Exit codes of `listen`, shown in its `--help`.
const EXIT_CODES_HELP: &str = "\
Exit codes:
   0  success, including a clean stop on SIGINT/SIGTERM
   1  any other error
  64  usage error (bad option, relative --repo, no --socket without socket activation)
  69  the borg program was not found
  71  operating system error (bind, socket passed by systemd, signal setup)
  73  the socket cannot be created safely (directory missing, group/other-writable or
      owned by another user; a non-socket file in the way)
  75  the socket is in use by another running listener

Logging goes to stderr; RUST_LOG (e.g. RUST_LOG=debug) overrides -v.";

/// Serve BorgBackup repositories to clients that are backed up in pull mode.
#[derive(Debug, Parser)]
#[command(
    name = "borg-pull-server",
    version,
    after_help = "Each subcommand's --help lists its exit codes (64 is always a usage error)."
)]
struct Cli {
    /// More log output: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands. Each arm of the dispatch in `main` turns its result into an [`ExitCode`]:
/// `anyhow::Result` through [`finish`], or a subcommand's own exit code.
#[derive(Debug, Subcommand)]
enum Command {
    /// Listen on a private UNIX socket; run one restricted `borg serve` per connection.
    ///
    /// Replaces `socat UNIX-LISTEN:SOCK,fork EXEC:"borg serve ..."` from borg's pull-mode recipe.
    /// Clients reach SOCK locally or through an ssh forward (`ssh -R SOCK_ON_CLIENT:SOCK`) and use
    /// BORG_RSH="borg-pull-relay --socket SOCK_ON_CLIENT" with the URL ssh://borg-pull-server/REPO.
    #[command(after_help = EXIT_CODES_HELP)]
    Listen(listen::ListenArgs),
    /// Back up a client: log in over SSH, forward a private socket there, run borg on it.
    Pull(Box<pull::PullArgs>),
}

/// A command-line problem found after parsing (exit code 64).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(cli.verbose);
    match cli.command {
        Command::Listen(args) => finish(listen::run(args)),
        Command::Pull(args) => pull::run(*args),
    }
}

/// Prints an error (whole chain, on stderr) and maps it to the exit code table of `listen`.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("borg-pull-server: error: {}", render(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// The error chain on one line, skipping causes a message already quotes (core errors embed theirs).
fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn exit_code(err: &anyhow::Error) -> u8 {
    use borg_pull_core::Error as E;
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<E>() {
            return match e {
                E::RepoNotAbsolute { .. } | E::SocketPathInvalid { .. } => exit::USAGE,
                E::BorgNotFound { .. } | E::SpawnBorg { .. } => exit::UNAVAILABLE,
                E::SocketDirParentMissing { .. }
                | E::SocketDirIo { .. }
                | E::SocketDirNotDirectory { .. }
                | E::SocketDirInsecure { .. }
                | E::SocketDirNotOwned { .. }
                | E::SocketPathOccupied { .. }
                | E::StaleSocket { .. } => exit::CANTCREAT,
                E::SocketInUse { .. } => exit::TEMPFAIL,
                E::SocketBind { .. } | E::SystemdSocket { .. } => exit::OSERR,
                _ => exit::FAILURE,
            };
        }
        if cause.is::<std::io::Error>() {
            return exit::OSERR;
        }
    }
    exit::FAILURE
}
