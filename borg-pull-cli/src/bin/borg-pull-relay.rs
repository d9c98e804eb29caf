//! borg-pull-relay: connects borg's `BORG_RSH` stdio to a borg-pull UNIX socket.
//!
//! Replaces `sh -c 'exec socat STDIO UNIX-CONNECT:/run/borg/x.sock'` from borg's pull-mode recipe:
//! `BORG_RSH="borg-pull-relay --socket /run/borg/x.sock" borg create ssh://x/repo::a dir`. The
//! command line is `borg_pull_cli::relay_args`.

use std::process::ExitCode;

use borg_pull_cli::relay_args::RelayArgs;
use borg_pull_cli::{exit, hint, runtime};
use borg_pull_core::relay::relay_stdio;
use borg_pull_core::rsh::RshArgs;
use clap::Parser;

fn main() -> ExitCode {
    // Quiet by default: borg shows our stderr to its user as `Remote: ...` lines.
    runtime::init_logging("warn");
    let args = match RelayArgs::try_parse() {
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

fn run(args: RelayArgs) -> anyhow::Result<()> {
    let rsh = RshArgs::parse(args.ssh_args)?;
    tracing::debug!(?rsh, "ignoring the ssh arguments borg appended");
    let stats = relay_stdio(&args.socket)?;
    tracing::debug!(sent = stats.a_to_b, received = stats.b_to_a, "relay done");
    Ok(())
}
