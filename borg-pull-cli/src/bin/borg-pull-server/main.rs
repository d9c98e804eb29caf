//! borg-pull-server: the backup server's half of BorgBackup pull mode.
//!
//! `borg-pull-server listen` replaces `socat UNIX-LISTEN:/run/borg/x.sock,fork EXEC:"borg serve ..."`
//! from borg's pull-mode recipe; `borg-pull-server pull` is the whole pull over SSH. This file only
//! parses arguments, sets up logging and maps errors to exit codes (`borg_pull_cli::exit`); the work
//! is in `borg_pull_core` and `borg_pull_tunnel`.

use std::process::ExitCode;

use borg_pull_cli::exit::{self, Code};
use borg_pull_cli::{hint, runtime};
use clap::{ArgAction, Parser, Subcommand};

mod authorize;
mod check_config;
mod connect_args;
mod generate_docs;
mod listen;
mod pull;
mod restore_tar;
mod run;
mod status;

/// Exit codes of `listen`, shown in its `--help`.
fn listen_after_help() -> String {
    format!(
        "Exit codes:\n    0  success, including a clean stop on SIGINT/SIGTERM\n{}\n\n{}\n\n{}",
        exit::lines(exit::LISTEN).trim_end(),
        exit::range_note(),
        log_note(),
    )
}

/// How logging is controlled, for every `--help`.
fn log_note() -> String {
    format!(
        "Logging goes to stderr; {var} (e.g. {var}=debug) overrides -v.",
        var = runtime::LOG_VAR
    )
}

/// Serve BorgBackup repositories to clients that are backed up in pull mode.
#[derive(Debug, Parser)]
#[command(
    name = "borg-pull-server",
    version,
    after_help = format!(
        "Each subcommand's --help lists its exit codes; ours are {}-254 (200: usage error), outside \
         borg's, so pull can pass borg's own code through.",
        exit::FIRST
    )
)]
pub(crate) struct Cli {
    /// More log output: -v for debug, -vv for trace (BORG_PULL_LOG overrides).
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
    #[command(after_help = listen_after_help())]
    Listen(listen::ListenArgs),
    /// Back up a client: log in over SSH, forward a private socket there, run borg on it.
    #[command(after_help = pull::after_help())]
    Pull(Box<pull::PullArgs>),
    /// Restore an archive to a client without borg there: borg export-tar here, tar -x there.
    #[command(after_help = restore_tar::after_help())]
    RestoreTar(Box<restore_tar::RestoreTarArgs>),
    /// Write man pages and shell completions of both binaries (for packaging).
    #[command(hide = true)]
    GenerateDocs(generate_docs::GenerateDocsArgs),
    /// Print (or --install) the authorized_keys line that limits a key to `borg serve` of one
    /// repository.
    #[command(after_help = authorize::after_help())]
    Authorize(authorize::AuthorizeArgs),
    /// Back up every client of a fleet config, N at a time, then print a summary.
    #[command(after_help = run::after_help())]
    Run(run::RunArgs),
    /// Validate a fleet config; with --connect also try every client.
    #[command(after_help = check_config::after_help())]
    CheckConfig(check_config::CheckConfigArgs),
    /// Show every client's newest archive and its age from the repositories on this server;
    /// flag stale clients; optionally write a node_exporter textfile.
    #[command(after_help = status::after_help())]
    Status(status::StatusArgs),
}

/// A command-line problem found after parsing (exit code [`exit::USAGE`]).
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
                exit::USAGE.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    runtime::init_logging_to(
        runtime::default_level("info", cli.verbose),
        borg_pull_fleet::progress::log_writer,
    );
    match cli.command {
        Command::Listen(args) => finish(listen::run(args)),
        Command::Pull(args) => pull::run(*args),
        Command::RestoreTar(args) => restore_tar::run(*args),
        Command::GenerateDocs(args) => finish(generate_docs::run(args)),
        Command::Authorize(args) => authorize::run(args),
        Command::Run(args) => run::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Status(args) => status::run(args),
    }
}

/// Prints an error (whole chain and hint, on stderr) and maps it to the exit code table of `listen`.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("borg-pull-server: error: {}", hint::render(err.as_ref()));
            exit_code(&err).into()
        }
    }
}

fn exit_code(err: &anyhow::Error) -> Code {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<borg_pull_core::Error>() {
            return exit::for_listen_error(e);
        }
        if cause.is::<std::io::Error>() {
            return exit::OS_ERROR;
        }
    }
    exit::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// The codes a subcommand's `--help` lists (first word of a line, 0 aside).
    fn codes_in_help(subcommand: &str) -> Vec<u8> {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut(subcommand)
            .unwrap()
            .render_long_help()
            .to_string();
        help.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .filter(|&c| c != 0)
            .collect()
    }

    /// Every code in the help text is in the table, and every code of the table is in the help.
    #[test]
    fn help_lists_exactly_the_tables() {
        for (sub, table) in [
            ("listen", exit::LISTEN),
            ("pull", exit::PULL),
            ("restore-tar", exit::RESTORE),
            ("status", exit::STATUS),
            ("authorize", exit::AUTHORIZE),
            ("run", exit::PULL),
        ] {
            let table: Vec<u8> = table.iter().map(|c| c.code).collect();
            assert_eq!(codes_in_help(sub), table, "{sub} --help");
        }
    }
}
