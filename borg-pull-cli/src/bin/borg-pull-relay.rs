//! borg-pull-relay: connects borg's `BORG_RSH` stdio to a borg-pull UNIX socket.
//!
//! Replaces `sh -c 'exec socat STDIO UNIX-CONNECT:/run/borg/x.sock'` from borg's pull-mode recipe:
//! `BORG_RSH="borg-pull-relay --socket /run/borg/x.sock" borg create ssh://x/repo::a dir`.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_core::relay::relay_stdio;
use borg_pull_core::rsh::RshArgs;
use clap::Parser;

/// Exit status for every failure, as ssh(1) uses for connection errors: borg reports it as a
/// failed connection rather than as an error of `borg serve`.
const EXIT_FAILURE: u8 = 255;

/// Relay borg's BORG_RSH stdin/stdout to a borg-pull UNIX socket.
///
/// Use as BORG_RSH="borg-pull-relay --socket /run/borg/x.sock". The ssh arguments and remote command
/// that borg appends (`[-p PORT] [user@]host borg serve ...`) are accepted and ignored: the socket
/// alone decides where the connection goes, and the server decides what runs there.
#[derive(Debug, Parser)]
#[command(name = "borg-pull-relay", disable_version_flag = true)]
struct Args {
    /// UNIX socket to connect to (borg-pull-server's listener or the end of an ssh forward).
    #[arg(long, env = "BORG_PULL_SOCKET", value_name = "PATH")]
    socket: PathBuf,

    /// What borg appends to BORG_RSH: ssh options, [user@]host and the remote command (ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SSH_ARGS")]
    ssh_args: Vec<OsString>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BORG_PULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not `{:#}`: borg-pull-core's messages already embed their cause, then the fix.
            eprintln!("borg-pull-relay: {err}");
            ExitCode::from(EXIT_FAILURE)
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
