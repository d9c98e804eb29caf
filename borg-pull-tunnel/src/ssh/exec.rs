//! Remote commands: POSIX shell quoting, running helpers, streaming a command's output, exit status.
//!
//! sshd runs every command through the login user's shell (`$SHELL -c COMMAND`), so each argument
//! is single-quoted ([`shell_quote`]); the login shell must be POSIX (sh, dash, bash, zsh, ksh).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::limits::{EXIT_CLOSE_GRACE, HELPER_OUTPUT_KEPT};
use crate::{Error, Result};

/// Quotes `arg` for a POSIX shell: `'...'`, with each `'` written as `'\''`.
///
/// Every byte except NUL survives unchanged (NUL cannot be part of an argv; it is an error).
///
/// ```
/// use borg_pull_tunnel::ssh::exec::shell_quote;
/// assert_eq!(shell_quote(b"it's").unwrap(), b"'it'\\''s'");
/// assert_eq!(shell_quote(b"").unwrap(), b"''");
/// assert!(shell_quote(b"a\0b").is_err());
/// ```
pub fn shell_quote(arg: &[u8]) -> Result<Vec<u8>> {
    if arg.contains(&0) {
        return Err(Error::NulInArgument(String::from_utf8_lossy(arg).into_owned()));
    }
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    Ok(out)
}

/// Quotes each argument and joins them with spaces.
pub(crate) fn shell_join<I, S>(args: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut out = Vec::new();
    for (i, arg) in args.into_iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend(shell_quote(arg.as_ref().as_bytes())?);
    }
    Ok(out)
}

/// Whether `name` can be an environment variable assigned by a POSIX shell.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// It exited with this status.
    Status(u32),
    /// It was killed by this signal (name as sent by sshd, e.g. `KILL`).
    Signal(String),
}

impl RemoteExit {
    /// The shell-style exit code: the status, or 128 + signal number (129 for unknown signals).
    ///
    /// ```
    /// use borg_pull_tunnel::ssh::exec::RemoteExit;
    /// assert_eq!(RemoteExit::Status(2).code(), 2);
    /// assert_eq!(RemoteExit::Signal("TERM".into()).code(), 143);
    /// ```
    pub fn code(&self) -> i32 {
        match self {
            RemoteExit::Status(s) => i32::try_from(*s).unwrap_or(255),
            RemoteExit::Signal(name) => 128 + signal_number(name).unwrap_or(1),
        }
    }
}

pub(crate) fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(s) => s.trim_start_matches("SIG").to_owned(),
    }
}

/// Linux signal numbers of the names sshd sends (RFC 4254 section 6.10 plus USR2).
fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    })
}

/// What a helper command printed (a bounded prefix) and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Standard output, at most [`HELPER_OUTPUT_KEPT`] bytes.
    pub stdout: Vec<u8>,
    /// Standard error, at most [`HELPER_OUTPUT_KEPT`] bytes.
    pub stderr: Vec<u8>,
    /// Exit status, if sshd reported one.
    pub status: Option<u32>,
}

impl Captured {
    /// stdout and stderr as one line for error messages and logs: their non-empty lines,
    /// trimmed, escaped and joined with `; ` (escaping whole, a trailing newline showed as a
    /// literal `\n`).
    pub fn output_text(&self) -> String {
        // Both are bounded already (HELPER_OUTPUT_KEPT each).
        let both = [&self.stdout[..], b"\n", &self.stderr[..]].concat();
        borg_pull_core::text::escape_lines(&both, both.len())
    }
}

/// Output from the client made safe for a log line or a terminal (see
/// [`borg_pull_core::text::escape_for_log`]).
pub(crate) fn escape_output(bytes: &[u8]) -> String {
    borg_pull_core::text::escape_for_log(bytes)
}

/// Appends `data` to `kept` up to [`HELPER_OUTPUT_KEPT`] bytes; `false` once there was more.
pub(crate) fn keep(kept: &mut Vec<u8>, data: &[u8]) -> bool {
    let room = HELPER_OUTPUT_KEPT.saturating_sub(kept.len());
    kept.extend_from_slice(&data[..data.len().min(room)]);
    data.len() <= room
}

/// sshd answered an exec request with failure (e.g. a `ForceCommand` or subsystem-only account).
pub(crate) fn exec_refused(command: &str) -> Error {
    Error::RemoteHelper {
        command: command.to_owned(),
        status: None,
        output: "sshd refused the exec request".into(),
    }
}

/// Collects a helper command's output from its `channel` until the channel closes.
///
/// Only a bounded prefix is kept: a client that prints more than [`HELPER_OUTPUT_KEPT`] bytes on
/// either stream gets its channel closed and the run an [`Error::RemoteOutputTooLarge`]; once the
/// channel is dropped russh discards whatever else arrives for it, so nothing piles up.
pub(crate) async fn capture(channel: &mut Channel<Msg>, command: &str) -> Result<Captured> {
    let mut out = Captured::default();
    while let Some(msg) = channel.wait().await {
        let fits = match msg {
            ChannelMsg::Data { data } => keep(&mut out.stdout, &data),
            ChannelMsg::ExtendedData { data, .. } => keep(&mut out.stderr, &data),
            ChannelMsg::ExitStatus { exit_status } => {
                out.status = Some(exit_status);
                true
            }
            ChannelMsg::Failure => return Err(exec_refused(command)),
            ChannelMsg::Close => break,
            _ => true,
        };
        if !fits {
            let _ = channel.close().await;
            return Err(Error::RemoteOutputTooLarge {
                command: command.to_owned(),
                limit: HELPER_OUTPUT_KEPT,
                output: out.output_text(),
            });
        }
    }
    Ok(out)
}

/// Why [`relay_output`] stopped the remote command before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The cancel token fired.
    Cancelled,
    /// The deadline passed.
    Deadline,
}

/// How [`relay_output`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// How the command ended, if sshd said so before closing the channel.
    pub exit: Option<RemoteExit>,
    /// Whether we stopped it (SIGINT, then its channel closed after the grace), and why.
    pub stopped: Option<Stop>,
}

/// Relays a running command's output to `stdout`/`stderr` until its channel closes.
///
/// The channel is always drained to the end, even after a write to `stdout` failed (a closed
/// pipe on our side is not an error of the remote command; it must not stall the connection).
/// When `cancel` fires or `deadline` passes, the command is sent SIGINT and gets `grace` to exit
/// before we close the channel (sshd then hangs up on it). Once the exit status has arrived the
/// channel gets [`EXIT_CLOSE_GRACE`] to close (output of what the command left running may still
/// come), then we close it: a client that never closes cannot hold the run. `command` names the
/// command in errors (sshd refusing it).
pub(crate) async fn relay_output<O, E>(
    channel: &mut Channel<Msg>,
    command: &str,
    stdout: &mut O,
    stderr: &mut E,
    cancel: &CancellationToken,
    deadline: tokio::time::Instant,
    grace: Duration,
) -> Result<Relayed>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut exit = None;
    let mut out_ok = true;
    let mut err_ok = true;
    let mut stopped = None;
    let mut hang_up_at: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            msg = channel.wait() => msg,
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(Stop::Cancelled);
                hang_up_at = Some(interrupt(channel, grace).await);
                continue;
            }
            () = tokio::time::sleep_until(deadline), if stopped.is_none() => {
                stopped = Some(Stop::Deadline);
                hang_up_at = Some(interrupt(channel, grace).await);
                continue;
            }
            () = sleep_until(hang_up_at) => {
                debug!("the remote command's channel is still open after its exit status or SIGINT; closing it");
                let _ = channel.close().await;
                break;
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } if out_ok => {
                out_ok = stdout.write_all(&data).await.is_ok() && stdout.flush().await.is_ok();
            }
            ChannelMsg::ExtendedData { data, ext: 1 } if err_ok => {
                err_ok = stderr.write_all(&data).await.is_ok() && stderr.flush().await.is_ok();
            }
            ChannelMsg::ExitStatus { exit_status } => {
                exit = Some(RemoteExit::Status(exit_status));
                hang_up_at = hang_up_at.or(Some(tokio::time::Instant::now() + EXIT_CLOSE_GRACE));
            }
            ChannelMsg::ExitSignal { signal_name: sig, .. } => {
                exit = Some(RemoteExit::Signal(signal_name(&sig)));
                hang_up_at = hang_up_at.or(Some(tokio::time::Instant::now() + EXIT_CLOSE_GRACE));
            }
            ChannelMsg::Failure => return Err(exec_refused(command)),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok(Relayed { exit, stopped })
}

/// Sends SIGINT to the remote command; returns when to give up on it.
async fn interrupt(channel: &Channel<Msg>, grace: Duration) -> tokio::time::Instant {
    debug!("sending SIGINT to the remote command");
    if let Err(e) = channel.signal(Sig::INT).await {
        debug!("signal request: {e}");
    }
    tokio::time::Instant::now() + grace
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn output_text_is_one_line_without_escaped_line_ends() {
        let captured = Captured {
            stdout: b"relay /x not found\n\n".to_vec(),
            stderr: b"  first\r\nsecond \x1b[31m\n".to_vec(),
            status: Some(3),
        };
        assert_eq!(
            captured.output_text(),
            "relay /x not found; first; second \\x1b[31m"
        );
        assert_eq!(Captured::default().output_text(), "");
    }

    /// Runs `sh -c 'printf %s <quoted>'` and returns what the shell printed.
    fn through_sh(quoted: &[u8]) -> Vec<u8> {
        let mut script = b"printf %s ".to_vec();
        script.extend_from_slice(quoted);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsString::from_vec(script))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    #[test]
    fn hostile_examples() {
        for s in [
            &b"plain"[..],
            b"",
            b"'",
            b"''",
            b"a b",
            b"$(touch /tmp/pwned)",
            b"`id`",
            b";rm -rf /",
            b"new\nline",
            b"\\'\"",
            b"-n",
            b"%s%%",
            b"\xff\xfe",
            b"{hostname}-{now}",
        ] {
            assert_eq!(through_sh(&shell_quote(s).unwrap()), s, "{s:?}");
        }
    }

    #[test]
    fn join_splits_back() {
        let args = ["a b", "it's", "", "$HOME"];
        let joined = shell_join(args).unwrap();
        let mut script = b"for a in ".to_vec();
        script.extend_from_slice(&joined);
        script.extend_from_slice(b"; do printf '<%s>' \"$a\"; done");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsString::from_vec(script))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"<a b><it's><><$HOME>");
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("BORG_BASE_DIR"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1x"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn signals() {
        assert_eq!(RemoteExit::Signal("KILL".into()).code(), 137);
        assert_eq!(RemoteExit::Signal("WEIRD".into()).code(), 129);
        assert_eq!(signal_name(&Sig::Custom("SIGUSR2".into())), "USR2");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trips_through_sh(arg in proptest::collection::vec(1u8..=255, 0..64)) {
            let quoted = shell_quote(&arg).unwrap();
            prop_assert_eq!(through_sh(&quoted), arg);
        }

        #[test]
        fn nul_is_rejected(mut arg in proptest::collection::vec(any::<u8>(), 0..16), at in 0usize..17) {
            let at = at.min(arg.len());
            arg.insert(at, 0);
            prop_assert!(shell_quote(&arg).is_err());
        }
    }
}
