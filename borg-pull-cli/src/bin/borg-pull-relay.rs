//! borg-pull-relay: connects borg's `BORG_RSH` stdio to a borg-pull UNIX socket.
//!
//! Replaces `sh -c 'exec socat STDIO UNIX-CONNECT:/run/borg/x.sock'` from borg's pull-mode recipe:
//! `BORG_RSH="borg-pull-relay --socket /run/borg/x.sock" borg create ssh://x/repo::a dir`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_cli::{exit, hint, runtime};
use borg_pull_core::relay::relay_stdio;
use borg_pull_core::rsh::RshArgs;
use clap::Parser;

/// Relay borg's BORG_RSH stdin/stdout to a borg-pull UNIX socket.
///
/// Use as BORG_RSH="borg-pull-relay --socket /run/borg/x.sock". The ssh arguments and remote command
/// that borg appends (`[-p PORT] [user@]host borg serve ...`) are accepted and ignored: the socket
/// alone decides where the connection goes, and the server decides what runs there.
#[derive(Debug, Parser)]
#[command(
    name = "borg-pull-relay",
    disable_version_flag = true,
    after_help = after_help()
)]
struct Args {
    /// UNIX socket to connect to (borg-pull-server's listener or the end of an ssh forward).
    #[arg(long, env = "BORG_PULL_SOCKET", value_name = "PATH")]
    socket: PathBuf,

    /// What borg appends to BORG_RSH: ssh options, [user@]host and the remote command (ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SSH_ARGS")]
    ssh_args: Vec<OsString>,
}

/// Exit codes and logging, from the shared table.
fn after_help() -> String {
    format!(
        "Exit codes:\n    0  borg's connection ended normally\n{}\n\n{}\n\nLogs go to stderr \
         (default: warnings); {} (e.g. {}=debug) sets the filter.",
        exit::lines(exit::RELAY).trim_end(),
        exit::range_note(),
        runtime::LOG_VAR,
        runtime::LOG_VAR,
    )
}

fn main() -> ExitCode {
    // Quiet by default: borg shows our stderr to its user as `Remote: ...` lines.
    runtime::init_logging("warn");
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                exit::RELAY_FAILURE.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: borg-pull-core's messages already embed their cause; the hint names the flag.
            eprintln!("borg-pull-relay: {}", hint::render(err.as_ref()));
            exit::RELAY_FAILURE.into()
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let rsh = RshArgs::parse(args.ssh_args)?;
    tracing::debug!(?rsh, "ignoring the ssh arguments borg appended");
    let stats = relay_stdio(&args.socket)?;
    tracing::debug!(sent = stats.a_to_b, received = stats.b_to_a, "relay done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every code the help shows is in the shared table for the relay, and vice versa.
    #[test]
    fn help_lists_the_relay_table() {
        let help = super::Args::command().render_long_help().to_string();
        let listed: Vec<u8> = help
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .filter(|&c| c != 0)
            .collect();
        let table: Vec<u8> = borg_pull_cli::exit::RELAY.iter().map(|c| c.code).collect();
        assert_eq!(listed, table, "{help}");
    }
}
