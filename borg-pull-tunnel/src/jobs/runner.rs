//! The one script runner every job shares: a shell script for the client put together from
//! `.sh` files, run with one exec on the session, its marked report lines read back, each wait
//! bounded by a step deadline.
//!
//! A job's script is a **prelude** of quoted variable assignments ([`Prelude`]: every dynamic
//! value, built with [`shell_quote`], under a checked `bp_` name), followed by static `.sh` parts
//! loaded with `include_str!` ([`compose`]). No value is ever spliced into a part's text, so the
//! parts read (and are linted, `shellcheck -s sh`) as the shell they are. Full-line comments and
//! indentation are left out on the wire: the script goes out with every run.
//!
//! The parts every job uses live here: [`CHECK_SH`] (`bp_check`, is a program there to run) and
//! [`GUARD_SH`] (the run guard: a watcher that stops the job's process group once the server's
//! heartbeats stop, and the next run's clearing of a dead run's leftovers; bounds in [`Guard`]).
//!
//! The script reports on lines that start with a per-run marker ([`new_marker`]), so whatever the
//! login user's shell start-up files print cannot be mistaken for a report; [`read_report`] reads
//! them with a job's [`Reports`] parser, bounded by [`HELPER_OUTPUT_KEPT`].

use std::path::Path;
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use tokio_util::sync::CancellationToken;

use crate::limits::{HELPER_OUTPUT_KEPT, REMOTE_HELPER_TIMEOUT, REQUEST_TIMEOUT};
use crate::ssh::exec::{escape_output, exec_refused, is_env_name, keep, shell_quote, Captured};
use crate::ssh::session::Session;
use crate::{Error, Result};

/// `bp_check PROGRAM ROLE`: returns if PROGRAM can be run, else reports `missing ROLE WHY` and
/// exits 127 (needs `bp_m`, the marker). Plain shell, also for scripts put together elsewhere.
pub const CHECK_SH: &str = include_str!("check.sh");

/// The run guard's functions: `bp_beat`, `bp_stat`, `bp_alive`, `bp_sig`, `bp_stop`, `bp_clear`,
/// `bp_watch`, `bp_arm` (needs the prelude of [`Guard::set`] and `bp_m`).
pub(crate) const GUARD_SH: &str = include_str!("guard.sh");

/// The private directories' name prefix on the client.
pub const DIR_PREFIX: &str = "borg-pull.";

/// The variable assignments in front of a script: each value single-quoted, each name a shell
/// variable of ours (`bp_…`), so nothing the caller passes is read as shell.
#[derive(Debug, Default)]
pub(crate) struct Prelude {
    text: Vec<u8>,
}

impl Prelude {
    /// An empty prelude.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `name='value'`. Fails on a NUL in `value`, or a `name` that is not one of ours.
    pub(crate) fn set(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<&mut Self> {
        if !(name.starts_with("bp_") && is_env_name(name)) {
            return Err(Error::InvalidOption(format!(
                "{name:?} is not a script variable (bp_ and letters, digits, _)"
            )));
        }
        self.text.extend_from_slice(name.as_bytes());
        self.text.push(b'=');
        self.text.extend(shell_quote(value.as_ref())?);
        self.text.push(b'\n');
        Ok(self)
    }

    /// `set -- 'word'…`: the script's positional parameters. Fails on a NUL in a word.
    pub(crate) fn words<I, S>(&mut self, words: I) -> Result<&mut Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        self.text.extend_from_slice(b"set --");
        for word in words {
            self.text.push(b' ');
            self.text.extend(shell_quote(word.as_ref())?);
        }
        self.text.push(b'\n');
        Ok(self)
    }
}

/// The script: the prelude, then each part without its full-line comments and indentation.
pub(crate) fn compose(prelude: Prelude, parts: &[&str]) -> Vec<u8> {
    let mut script = prelude.text;
    for part in parts {
        compact_into(&mut script, part);
    }
    script
}

/// `part` without full-line comments, blank lines and leading blanks. The `.sh` parts hold no
/// string or here-document spanning lines (a test runs each composed script under `sh` and
/// `dash`), so no line that starts with `#` is inside one.
fn compact_into(out: &mut Vec<u8>, part: &str) {
    for line in part.lines() {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// The bounds of the run guard on the client, in seconds: [`CLIENT_SILENCE_LIMIT`],
/// [`CLIENT_START_LIMIT`] and [`CLIENT_STOP_GRACE`] (tests shorten them).
///
/// [`CLIENT_SILENCE_LIMIT`]: crate::limits::CLIENT_SILENCE_LIMIT
/// [`CLIENT_START_LIMIT`]: crate::limits::CLIENT_START_LIMIT
/// [`CLIENT_STOP_GRACE`]: crate::limits::CLIENT_STOP_GRACE
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Once the run has started: seconds without a heartbeat before it is stopped.
    pub silence: u64,
    /// Before it has started: seconds without `go` before the script is stopped.
    pub start: u64,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace: u64,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            silence: crate::limits::CLIENT_SILENCE_LIMIT.as_secs(),
            start: crate::limits::CLIENT_START_LIMIT.as_secs(),
            grace: crate::limits::CLIENT_STOP_GRACE.as_secs(),
        }
    }
}

impl Guard {
    /// What [`GUARD_SH`] reads from the prelude: the bounds and the directories' prefix.
    pub(crate) fn set(&self, prelude: &mut Prelude) -> Result<()> {
        prelude
            .set("bp_prefix", DIR_PREFIX)?
            .set("bp_silence", self.silence.to_string())?
            .set("bp_start", self.start.to_string())?
            .set("bp_grace", self.grace.to_string())?;
        Ok(())
    }
}

/// A marker for this run's report lines (not a secret: it only keeps start-up noise apart).
pub fn new_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("borg-pull-{:016x}:", h.finish())
}

/// Whether `dir` is what our mktemp makes: absolute, one line, `.../borg-pull.XXXXXXXX`. Checked
/// before it is used for the socket.
pub fn is_private_dir_path(dir: &str) -> bool {
    let Some((parent, name)) = dir.rsplit_once('/') else {
        return false;
    };
    Path::new(dir).is_absolute()
        && !dir.contains(['\n', '\0'])
        && !parent.split('/').any(|c| c == "..")
        && name
            .strip_prefix(DIR_PREFIX)
            .is_some_and(|rand| rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A dead run's leftovers that the script cleared (its watcher was gone or late): the
/// directory, and borg's pid if its process was still running and was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// The dead run's borg, if it still ran (stopped: SIGTERM, SIGKILL after the grace).
    pub pid: Option<u32>,
    /// Its private directory, removed (escaped for the log).
    pub dir: String,
}

impl Cleared {
    /// From what follows `cleared ` on the guard's report line: `PID DIR` (`-` for no pid).
    pub(crate) fn parse(what: &[u8]) -> Self {
        let what = escape_output(what);
        let (pid, dir) = what.split_once(' ').unwrap_or(("-", &what));
        Cleared {
            pid: pid.parse().ok(),
            dir: dir.to_owned(),
        }
    }
}

impl std::fmt::Display for Cleared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(
                f,
                "cleared a dead run on the client: borg pid {pid} stopped, {} removed",
                self.dir
            ),
            None => write!(
                f,
                "cleared a dead run on the client: no process left, {} removed",
                self.dir
            ),
        }
    }
}

/// A job's reading of its script's report lines: fed each marked line (the marker taken off) in
/// order, it answers with the report once one ends the wait.
pub(crate) trait Reports: Default {
    /// What the script reported.
    type Report;
    /// How errors name this part of the run (the script itself is long and not what failed).
    const STEP: &'static str;
    /// What a script that ended without a report was expected to print.
    const EXPECTED: &'static str;
    /// One marked line; `Some` ends the wait.
    fn line(&mut self, line: &[u8]) -> Result<Option<Self::Report>>;
}

/// The report in `stdout`, if a whole one is there, and the bytes after its line.
pub(crate) fn find_report<R: Reports>(stdout: &[u8], marker: &str) -> Result<Option<(R::Report, Vec<u8>)>> {
    let mut reports = R::default();
    let mut start = 0;
    while let Some(end) = stdout[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| start + i)
    {
        if let Some(rest) = stdout[start..end].strip_prefix(marker.as_bytes()) {
            if let Some(report) = reports.line(rest)? {
                return Ok(Some((report, stdout[end + 1..].to_vec())));
            }
        }
        start = end + 1;
    }
    Ok(None)
}

/// Reads the channel until the script's report; anything else it printed before (bounded by
/// [`HELPER_OUTPUT_KEPT`]) only shows up in errors. Bytes after the report line are returned too.
pub(crate) async fn read_report<R: Reports>(
    channel: &mut Channel<Msg>,
    marker: &str,
) -> Result<(R::Report, Vec<u8>)> {
    let mut out = Captured::default();
    while let Some(msg) = channel.wait().await {
        let fits = match msg {
            ChannelMsg::Data { data } => {
                let fits = keep(&mut out.stdout, &data);
                if let Some(found) = find_report::<R>(&out.stdout, marker)? {
                    return Ok(found);
                }
                fits
            }
            ChannelMsg::ExtendedData { data, .. } => keep(&mut out.stderr, &data),
            ChannelMsg::ExitStatus { exit_status } => {
                out.status = Some(exit_status);
                true
            }
            ChannelMsg::Failure => return Err(exec_refused(R::STEP)),
            ChannelMsg::Close => break,
            _ => true,
        };
        if !fits {
            return Err(Error::RemoteOutputTooLarge {
                command: R::STEP.into(),
                limit: HELPER_OUTPUT_KEPT,
                output: out.output_text(),
            });
        }
    }
    Err(Error::RemoteHelper {
        command: R::STEP.into(),
        status: out.status,
        output: format!("{} ({})", out.output_text(), R::EXPECTED),
    })
}

/// Whether the client's sshd forwards our agent to the script's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentForwarding {
    /// No agent (the socket method, restore-tar).
    Off,
    /// The agent and TCP methods: the client's ssh logs in to the server with our agent key.
    On,
}

/// Runs a job's script on one session; every wait is a step with a deadline, and cancelling ends
/// it with [`Error::Interrupted`].
#[derive(Clone, Copy)]
pub(crate) struct Runner<'a> {
    session: &'a Session,
    cancel: &'a CancellationToken,
}

impl<'a> Runner<'a> {
    /// A runner on `session`, stopped by `cancel`.
    pub(crate) fn new(session: &'a Session, cancel: &'a CancellationToken) -> Self {
        Self { session, cancel }
    }

    /// Waits for `step`, at most `limit`; cancellation ends it with [`Error::Interrupted`].
    pub(crate) async fn step<T>(
        &self,
        what: &'static str,
        limit: Duration,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            r = tokio::time::timeout(limit, step) => r.map_err(|_| Error::NoAnswer {
                peer: self.session.peer(),
                what,
                secs: limit.as_secs(),
            })?,
            () = self.cancel.cancelled() => Err(Error::Interrupted),
        }
    }

    /// Execs `script` on the session ([`REQUEST_TIMEOUT`]; `what` names the step).
    pub(crate) async fn exec(
        &self,
        what: &'static str,
        script: &[u8],
        agent: AgentForwarding,
    ) -> Result<Channel<Msg>> {
        let exec = async {
            match agent {
                AgentForwarding::Off => self.session.exec(script).await,
                AgentForwarding::On => self.session.exec_forwarding_agent(script).await,
            }
        };
        self.step(what, REQUEST_TIMEOUT, exec).await
    }

    /// The script's first report ([`read_report`], at most [`REMOTE_HELPER_TIMEOUT`]; `what`
    /// names the step).
    pub(crate) async fn report<R: Reports>(
        &self,
        what: &'static str,
        channel: &mut Channel<Msg>,
        marker: &str,
    ) -> Result<(R::Report, Vec<u8>)> {
        self.step(what, REMOTE_HELPER_TIMEOUT, read_report::<R>(channel, marker))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_values_are_quoted_and_names_are_ours() {
        let mut p = Prelude::new();
        p.set("bp_x", "it's $(x)\n`y`").unwrap();
        p.words(["a b", ""]).unwrap();
        let script = compose(p, &["# a comment\n\t\tprintf '<%s>' \"$bp_x\" \"$@\"\n\n"]);
        assert_eq!(
            String::from_utf8(script.clone()).unwrap(),
            "bp_x='it'\\''s $(x)\n`y`'\nset -- 'a b' ''\nprintf '<%s>' \"$bp_x\" \"$@\"\n"
        );
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::new(std::str::from_utf8(&script).unwrap()))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"<it's $(x)\n`y`><a b><>");
        for bad in ["x", "BP_X", "bp_a-b", "bp_x=1", "bp x", "PATH"] {
            assert!(Prelude::new().set(bad, "v").is_err(), "{bad}");
        }
        assert!(Prelude::new().set("bp_x", "a\0b").is_err());
        assert!(Prelude::new().words(["a\0b"]).is_err());
    }

    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Reports for Lines {
        type Report = Vec<String>;
        const STEP: &'static str = "the test";
        const EXPECTED: &'static str = "expected end";
        fn line(&mut self, line: &[u8]) -> Result<Option<Vec<String>>> {
            let line = escape_output(line);
            if line == "end" {
                return Ok(Some(std::mem::take(&mut self.0)));
            }
            self.0.push(line);
            Ok(None)
        }
    }

    #[test]
    fn reports_are_marked_lines_read_once_up_to_the_one_that_ends_the_wait() {
        let out = b"motd M:not at start\nM:one\nnoise\nM:two\x1b\nM:end\nafter";
        let (lines, rest) = find_report::<Lines>(out, "M:").unwrap().unwrap();
        assert_eq!(lines, ["one", "two\\x1b"]);
        assert_eq!(rest, b"after");
        assert!(find_report::<Lines>(b"M:one\nM:end", "M:").unwrap().is_none());
    }

    #[test]
    fn cleared_lines_parse() {
        assert_eq!(
            Cleared::parse(b"42 /tmp/borg-pull.AbC123xy"),
            Cleared {
                pid: Some(42),
                dir: "/tmp/borg-pull.AbC123xy".into()
            }
        );
        assert_eq!(Cleared::parse(b"- /t/x").pid, None);
        assert_eq!(
            format!(
                "{}",
                Cleared {
                    pid: None,
                    dir: "/t/x".into()
                }
            ),
            "cleared a dead run on the client: no process left, /t/x removed"
        );
    }
}
