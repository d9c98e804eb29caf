//! The command line of `borg-pull-relay`, in the library so that `borg-pull-server
//! generate-docs` can render its man page and completions beside the server's.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{exit, runtime};

/// Relay borg's BORG_RSH stdin/stdout to a borg-pull UNIX socket.
///
/// Use as BORG_RSH="borg-pull-relay --socket /run/borg/x.sock". The ssh arguments and remote command
/// that borg appends (`[-p PORT] [user@]host borg serve ...`) are accepted and ignored: the socket
/// alone decides where the connection goes, and the server decides what runs there.
#[derive(Debug, clap::Parser)]
#[command(
    name = "borg-pull-relay",
    // `--version`/`-V` print `borg-pull-relay VERSION`: `check-config --connect` compares it with
    // the server's. borg never appends either before the host, so they cannot be mistaken for
    // the ssh arguments it adds.
    version,
    after_help = after_help()
)]
pub struct RelayArgs {
    /// UNIX socket to connect to (borg-pull-server's listener or the end of an ssh forward).
    #[arg(long, env = "BORG_PULL_SOCKET", value_name = "PATH")]
    pub socket: PathBuf,

    /// What borg appends to BORG_RSH: ssh options, [user@]host and the remote command (ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SSH_ARGS")]
    pub ssh_args: Vec<OsString>,
}

/// Exit codes and logging, from the shared table.
pub fn after_help() -> String {
    format!(
        "Exit codes:\n    0  borg's connection ended normally\n{}\n\n{}\n\nLogs go to stderr \
         (default: warnings); {} (e.g. {}=debug) sets the filter.",
        exit::lines(exit::RELAY).trim_end(),
        exit::range_note(),
        runtime::LOG_VAR,
        runtime::LOG_VAR,
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every code the help shows is in the shared table for the relay, and vice versa.
    #[test]
    fn help_lists_the_relay_table() {
        let help = super::RelayArgs::command().render_long_help().to_string();
        let listed: Vec<u8> = help
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .filter(|&c| c != 0)
            .collect();
        let table: Vec<u8> = crate::exit::RELAY.iter().map(|c| c.code).collect();
        assert_eq!(listed, table, "{help}");
    }
}
