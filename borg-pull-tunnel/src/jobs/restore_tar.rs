//! `restore-tar`: borg's `borg export-tar REPO::NAME - | ssh root@host 'tar -C DIR -x'` recipe,
//! in-process.
//!
//! 1. Connect as for a pull ([`crate::ssh::session::connect`]); the client's sshd may open no channel
//!    to us ([`RefuseAll`]).
//! 2. One exec on the client: a short script checks that tar can run and that DIR is a directory
//!    the login user can write to, reports on a marked line, then `exec`s `tar -C DIR -x -f -`
//!    (`--numeric-owner` if asked, `-p` as root). Nothing has been read from the repository yet,
//!    so a missing DIR or tar fails before anything streams.
//! 3. `borg export-tar -- REPO::NAME - [PATH...]` runs here, on the server, as a
//!    [`borg_pull_core::child`] (the passphrase in its environment, never its argv; no
//!    `--tar-filter`: `-` gets none). Its stdout goes to the channel's stdin through a small
//!    buffer ([`RESTORE_READ_BUFFER`](crate::limits::RESTORE_READ_BUFFER)); russh's writer awaits
//!    the client's window, so the archive is never buffered in memory. Its stderr is relayed to
//!    ours, escaped and cut per line.
//! 4. borg's stdout ends: EOF to tar. tar ends first (disk full, a failing `--remote-tar`): borg
//!    is stopped (its stdout closed, SIGTERM, SIGKILL after
//!    [`BORG_STOP_GRACE`](crate::limits::BORG_STOP_GRACE)) and reaped instead of streaming the
//!    rest. The result names both exit codes ([`RestoreOutcome`]). Steps 3 and 4 are two small
//!    state machines, one a side ([`stream`]).
//!
//! Deadlines as for a pull: [`REQUEST_TIMEOUT`] per request, [`REMOTE_HELPER_TIMEOUT`] for the
//! check, [`RestoreOptions::max_runtime`] for the stream; cancelling stops borg and tar.
//!
//! A link that dies silently: the client's script guards tar as a pull's guards borg (a private
//! directory, a watcher, [`Guard`]). tar's stdin is the stream, so the heartbeats
//! come on a second exec channel (its script stamps the private directory), opened right after
//! the report while the stream starts; without them the watcher stops tar and the next run
//! clears what is left.
//!
//! Both scripts are shell in `restore_tar.sh` and `restore_tar_beat.sh` beside this file, after
//! the shared `check.sh` and `guard.sh`, with every value in the prelude ([`crate::jobs::runner`]).

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::child::{exit_code, BorgChild, BorgCommand, Environment, Input, Output};
use borg_pull_core::serve::ServeConfig;
use borg_pull_core::text::escape_for_log;
use russh::client::Msg;
use russh::Channel;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::error::RemoteProgram;
use crate::jobs::pull::PullEnv;
use crate::jobs::runner::{
    self, is_private_dir_path, new_marker, AgentForwarding, Cleared, Guard, Prelude, Reports, Runner,
    CHECK_SH, GUARD_SH,
};
use crate::limits::{CLEANUP_TIMEOUT, DEFAULT_MAX_RUNTIME};
use crate::local::passphrase::Passphrase;
use crate::ssh::exec::exec_refused;
use crate::ssh::incoming::RefuseAll;
use crate::ssh::session::{self, Session, SessionOptions};
use crate::{Error, Result};

mod stream;
use stream::Streamed;

/// Checks tar and the directory, guards the run and `exec`s tar (after [`CHECK_SH`], [`GUARD_SH`]).
const RESTORE_TAR_SH: &str = include_str!("restore_tar.sh");
/// The heartbeat reader on its own channel (after [`GUARD_SH`]).
const RESTORE_TAR_BEAT_SH: &str = include_str!("restore_tar_beat.sh");

/// The longest line of borg's or tar's stderr kept for the final message.
const MESSAGE_LINE_MAX: usize = 512;

/// Everything one restore needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// How to reach and log in to the client.
    pub session: SessionOptions,
    /// The borg program on this server (`borg`: looked up on PATH).
    pub borg: PathBuf,
    /// The repository on this server (absolute path).
    pub repo: PathBuf,
    /// The archive to restore.
    pub archive: OsString,
    /// Only these paths of the archive (all when empty), as `borg export-tar` takes them.
    pub paths: Vec<OsString>,
    /// The directory on the client tar unpacks into (must exist).
    pub remote_dir: OsString,
    /// tar `--numeric-owner`: owners by uid/gid, not by name.
    pub numeric_owner: bool,
    /// The tar program on the client (`tar`: looked up on its PATH).
    pub remote_tar: OsString,
    /// The repository passphrase, put in borg export-tar's environment.
    pub passphrase: Option<Passphrase>,
    /// The longest the stream may run ([`DEFAULT_MAX_RUNTIME`]).
    pub max_runtime: Duration,
    /// Cancelling this stops borg export-tar and tar and returns [`Error::Interrupted`].
    pub cancel: CancellationToken,
}

impl RestoreOptions {
    /// Options to restore `archive` of `repo` into `remote_dir` on `destination` (`[USER@]HOST`),
    /// with the SSH defaults of `env` (see [`SessionOptions::with_env`]).
    pub fn with_env(
        destination: &str,
        repo: impl Into<PathBuf>,
        archive: impl Into<OsString>,
        remote_dir: impl Into<OsString>,
        env: &PullEnv,
    ) -> Result<Self> {
        Ok(Self {
            session: SessionOptions::with_env(destination, &env.ssh)?,
            borg: "borg".into(),
            repo: repo.into(),
            archive: archive.into(),
            paths: Vec::new(),
            remote_dir: remote_dir.into(),
            numeric_owner: false,
            remote_tar: "tar".into(),
            passphrase: None,
            max_runtime: DEFAULT_MAX_RUNTIME,
            cancel: CancellationToken::new(),
        })
    }

    /// Checks what can be checked before anything touches the network; returns the borg program.
    pub(crate) fn check(&self) -> Result<PathBuf> {
        let mut serve = ServeConfig::new(&self.repo)?;
        serve.borg = self.borg.clone();
        if self.archive.is_empty() {
            return Err(Error::InvalidOption("the archive name is empty".into()));
        }
        for arg in std::iter::once(&self.archive).chain(&self.paths) {
            if arg.as_bytes().contains(&0) {
                return Err(Error::NulInArgument(arg.to_string_lossy().into_owned()));
            }
        }
        if self.remote_dir.is_empty() {
            return Err(Error::InvalidOption(
                "the directory on the client is empty".into(),
            ));
        }
        Ok(serve.find_program()?)
    }

    /// The script run on the client: check tar and the directory, make the private directory and
    /// its guard ([`Guard`]), report, `exec` tar.
    pub fn remote_script(&self, marker: &str) -> Result<Vec<u8>> {
        self.remote_script_guarded(marker, &Guard::default())
    }

    /// [`RestoreOptions::remote_script`] with the guard's bounds given.
    fn remote_script_guarded(&self, marker: &str, guard: &Guard) -> Result<Vec<u8>> {
        let mut p = Prelude::new();
        p.set("bp_m", marker)?;
        guard.set(&mut p)?;
        p.set("bp_tar", self.remote_tar.as_bytes())?
            .set("bp_tar_dir", self.remote_dir.as_bytes())?
            .set("bp_numeric_owner", if self.numeric_owner { "yes" } else { "no" })?;
        Ok(runner::compose(p, &[CHECK_SH, GUARD_SH, RESTORE_TAR_SH]))
    }

    /// `borg export-tar -- REPO::NAME - [PATH...]` ([`borg_pull_core::child`]: its own process
    /// group, the passphrase in its environment). Its stderr is relayed to ours, escaped and cut
    /// per line.
    pub(crate) fn borg_command(&self, borg: &std::path::Path) -> BorgCommand {
        let mut location = self.repo.as_os_str().to_owned();
        location.push("::");
        location.push(&self.archive);
        // Secrets not meant for borg, a passcommand we already ran, and a passphrase we set below.
        let unset = [
            "BORG_PULL_IDENTITY_PASSPHRASE",
            "BORG_PASSCOMMAND",
            "BORG_PASSPHRASE_FD",
            "BORG_REPO",
            "BORG_PASSPHRASE",
        ];
        let cmd = BorgCommand::new(
            borg,
            Environment::InheritedWithout(unset.iter().map(OsString::from).collect()),
        )
        .args([OsString::from("export-tar"), "--".into(), location, "-".into()])
        .args(&self.paths)
        .stdin(Input::Null)
        .stdout(Output::Piped)
        .on_stderr_line(|line| {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        });
        match &self.passphrase {
            Some(p) => cmd.secret_env("BORG_PASSPHRASE", p.expose()),
            None => cmd,
        }
    }
}

/// How a restore ended; [`RestoreOutcome::code`] and [`RestoreOutcome::summary`] say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// borg export-tar's exit code (128+N if killed by signal N).
    pub borg_rc: i32,
    /// Whether we stopped borg export-tar because tar ended before it had sent everything (then
    /// `borg_rc` is how it ended after that, not a verdict on the archive).
    pub borg_stopped: bool,
    /// tar's exit code on the client (128+N if killed by signal N).
    pub tar_rc: i32,
    /// Bytes of the tar stream sent to the client.
    pub bytes: u64,
    /// borg's last line on stderr, escaped.
    pub borg_said: Option<String>,
    /// tar's last line on stderr, escaped.
    pub tar_said: Option<String>,
}

impl RestoreOutcome {
    /// The worse of borg's and tar's codes; a restore cut short by tar is never 0.
    pub fn code(&self) -> i32 {
        let borg = if self.borg_stopped { 0 } else { self.borg_rc };
        match borg.max(self.tar_rc) {
            0 if self.borg_stopped => 2,
            worse => worse,
        }
    }

    /// One line naming both programs and their codes, e.g. `borg export-tar exited 2: Archive x
    /// does not exist; tar on the client exited 2: ...`.
    pub fn summary(&self) -> String {
        let said = |s: &Option<String>| s.as_ref().map(|s| format!(": {s}")).unwrap_or_default();
        let tar = format!("tar on the client exited {}{}", self.tar_rc, said(&self.tar_said));
        if self.borg_stopped {
            format!(
                "{tar} before the archive was sent in full ({} bytes sent); borg export-tar was stopped",
                self.bytes
            )
        } else {
            format!(
                "borg export-tar exited {}{}; {tar} ({} bytes sent)",
                self.borg_rc,
                said(&self.borg_said),
                self.bytes
            )
        }
    }
}

/// Restores `options.archive` into `options.remote_dir` on the client; borg's and tar's stderr go
/// to ours. `Ok` whenever both ran: their codes are in the outcome.
pub async fn restore_tar(options: RestoreOptions) -> Result<RestoreOutcome> {
    let span = tracing::info_span!("restore", client = %options.session.host, port = options.session.port);
    async move {
        let borg = options.check()?;
        let marker = new_marker();
        let script = options.remote_script(&marker)?;
        let session = tokio::select! {
            s = session::connect(&options.session, Arc::new(RefuseAll)) => s?,
            () = options.cancel.cancelled() => return Err(Error::Interrupted),
        };
        let run = Run {
            session: &session,
            options: &options,
        };
        let result = run.carry_out(&borg, &script, &marker).await;
        session.disconnect_within(CLEANUP_TIMEOUT).await;
        let outcome = result?;
        info!(
            bytes = outcome.bytes,
            borg_rc = outcome.borg_rc,
            borg_stopped = outcome.borg_stopped,
            tar_rc = outcome.tar_rc,
            "restore finished"
        );
        Ok(outcome)
    }
    .instrument(span)
    .await
}

/// What the script on the client reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    /// tar is starting; the run's private directory (for the heartbeat channel), and the dead
    /// runs the script cleared first.
    TarStarting(String, Vec<Cleared>),
    /// The directory cannot be used, and why.
    NoDir(String),
    /// tar cannot run, and why.
    NoTar(String),
}

/// Why the stream was cut off by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    Deadline,
    /// sshd refused the exec request (it arrives as a channel failure).
    Refused,
}

/// One restore on a connected session.
struct Run<'a> {
    session: &'a Session,
    options: &'a RestoreOptions,
}

impl Run<'_> {
    async fn carry_out(&self, borg: &std::path::Path, script: &[u8], marker: &str) -> Result<RestoreOutcome> {
        let runner = Runner::new(self.session, &self.options.cancel);
        let mut channel = runner
            .exec("opening the restore's channel", script, AgentForwarding::Off)
            .await?;
        let (ready, early) = runner
            .report::<RestoreReports>("the check of tar and the directory", &mut channel, marker)
            .await?;
        let dir = match ready {
            Report::TarStarting(dir, cleared) => {
                for dead in cleared {
                    warn!("{dead}");
                }
                dir
            }
            Report::NoDir(why) => {
                return Err(Error::RemoteDirUnusable {
                    dir: self.options.remote_dir.to_string_lossy().into_owned(),
                    peer: self.session.peer(),
                    why,
                    purpose: crate::error::RemoteDirUse::Restore,
                })
            }
            Report::NoTar(why) => {
                return Err(Error::RemoteProgramMissing {
                    program: self.options.remote_tar.to_string_lossy().into_owned(),
                    role: RemoteProgram::Tar,
                    peer: self.session.peer(),
                    why,
                })
            }
        };
        let mut stderr = tokio::io::stderr();
        if !early.is_empty() {
            let _ = stderr.write_all(escape_keeping_lines(&early).as_bytes()).await;
        }
        debug!(borg = %borg.display(), "tar is ready on the client; starting borg export-tar");
        let child =
            self.options
                .borg_command(borg)
                .spawn()
                .map_err(|source| borg_pull_core::Error::SpawnBorg {
                    program: borg.to_owned(),
                    source,
                })?;
        // Opened while the stream starts, not awaited before it: no round trip of its own.
        let beat = beat_script(&dir)?;
        let beats = async {
            match self.session.exec(&beat).await {
                // Drained while the beats go out: whatever the client's sshd sends on it must not
                // fill the connection's queue and stall the stream (russh stops reading the
                // connection when a channel's queue is full).
                Ok(mut channel) => {
                    let beats = crate::jobs::pull::heartbeat(channel.make_writer());
                    let drain = async { while channel.wait().await.is_some() {} };
                    tokio::select! {
                        never = beats => match never {},
                        () = drain => std::future::pending().await,
                    }
                }
                Err(e) => {
                    warn!("cannot open the heartbeat channel ({}); if the link dies silently, tar on the client waits for the start bound", borg_pull_core::error::Chain(&e));
                    std::future::pending().await
                }
            }
        };
        self.stream(child, channel, &mut stderr, beats).await
    }

    /// Streams borg's stdout into tar until both have ended (or we stop them): [`stream`].
    async fn stream<E: AsyncWrite + Unpin>(
        &self,
        mut borg: BorgChild,
        channel: Channel<Msg>,
        stderr: &mut E,
        beats: impl std::future::Future<Output = std::convert::Infallible>,
    ) -> Result<RestoreOutcome> {
        let deadline = Instant::now() + self.options.max_runtime;
        let streamed = stream::run(&mut borg, channel, stderr, deadline, &self.options.cancel, beats).await?;
        let (borg_status, borg_stopped, tar_exit, tar_said, bytes) = match streamed {
            Streamed::Both {
                borg,
                borg_stopped,
                tar,
                tar_said,
                bytes,
            } => (borg, borg_stopped, tar, tar_said, bytes),
            Streamed::CutOff(stop) => {
                return Err(match stop {
                    Stop::Cancelled => Error::Interrupted,
                    Stop::Refused => exec_refused("tar"),
                    Stop::Deadline => Error::RestoreMaxRuntime {
                        peer: self.session.peer(),
                        secs: self.options.max_runtime.as_secs(),
                    },
                })
            }
        };
        let borg_said = borg.stderr_tail().await.last_line().map(cut);
        let tar_rc = match tar_exit {
            Some(exit) => exit.code(),
            None if self.session.is_closed() => {
                return Err(self.session.failure("tar was running", russh::Error::Disconnect))
            }
            None => {
                return Err(Error::TarNoExitStatus {
                    peer: self.session.peer(),
                })
            }
        };
        Ok(RestoreOutcome {
            borg_rc: exit_code(borg_status),
            borg_stopped,
            tar_rc,
            bytes,
            borg_said,
            tar_said,
        })
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MESSAGE_LINE_MAX {
        return s.to_owned();
    }
    let mut end = MESSAGE_LINE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Output from the client made safe for a terminal, its line breaks kept.
fn escape_keeping_lines(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for (i, piece) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&escape_for_log(piece));
    }
    out
}

/// The last non-empty line of a stream, bounded.
#[derive(Debug, Default)]
struct LastLine {
    current: Vec<u8>,
    last: Vec<u8>,
}

impl LastLine {
    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                if !self.current.iter().all(u8::is_ascii_whitespace) {
                    self.last = std::mem::take(&mut self.current);
                }
                self.current.clear();
            } else if self.current.len() < MESSAGE_LINE_MAX {
                self.current.push(b);
            }
        }
    }

    fn get(&self) -> Option<String> {
        let line = if self.current.iter().all(u8::is_ascii_whitespace) {
            &self.last
        } else {
            &self.current
        };
        (!line.is_empty()).then(|| escape_for_log(line))
    }
}

/// The reading of restore-tar's report lines: `cleared` lines, then the one [`Report`].
#[derive(Debug, Default)]
struct RestoreReports {
    cleared: Vec<Cleared>,
}

impl Reports for RestoreReports {
    type Report = Report;
    const STEP: &'static str = "the check of tar and the directory";
    const EXPECTED: &'static str = "expected a report";

    fn line(&mut self, rest: &[u8]) -> Result<Option<Report>> {
        if let Some(what) = rest.strip_prefix(b"cleared ") {
            self.cleared.push(Cleared::parse(what));
            return Ok(None);
        }
        let text = escape_for_log(rest);
        Ok(Some(
            if let Some(dir) = text.strip_prefix("ready ").filter(|d| is_private_dir_path(d)) {
                Report::TarStarting(dir.to_owned(), std::mem::take(&mut self.cleared))
            } else if let Some(why) = text.strip_prefix("nodir ") {
                Report::NoDir(why.to_owned())
            } else if let Some(why) = text.strip_prefix("missing tar ") {
                Report::NoTar(why.to_owned())
            } else {
                Report::NoTar(format!("unexpected report {text:?}"))
            },
        ))
    }
}

/// The heartbeat reader's script on a channel of its own, for a run whose stdin is taken
/// ([`RESTORE_TAR_BEAT_SH`]). Fails unless `dir` is a private directory's path.
pub(crate) fn beat_script(dir: &str) -> Result<Vec<u8>> {
    if !is_private_dir_path(dir) {
        return Err(Error::InvalidOption(format!(
            "{dir:?} is not a private directory path"
        )));
    }
    let mut p = Prelude::new();
    p.set("bp_m", "")?;
    Guard::default().set(&mut p)?;
    p.set("bp_run_dir", dir)?;
    Ok(runner::compose(p, &[GUARD_SH, RESTORE_TAR_BEAT_SH]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn options(dir: &str) -> RestoreOptions {
        let mut env = PullEnv::default();
        env.ssh.user = Some("op".into());
        RestoreOptions::with_env("client", "/srv/repo", "arch", dir, &env).unwrap()
    }

    /// Runs the script in `sh` with `tar` replaced by a program that prints its argv; returns
    /// stdout.
    fn run_script(o: &RestoreOptions) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&o.remote_script("M:").unwrap()))
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_script_checks_the_directory_and_tar_before_tar_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let hostile = tmp.path().join("it's $(x) dir");
        std::fs::create_dir(&hostile).unwrap();
        let mut o = options(hostile.to_str().unwrap());
        o.remote_tar = "/bin/echo".into();
        o.numeric_owner = true;
        let out = run_script(&o);
        assert!(out.starts_with("M:ready "), "{out}");
        assert!(
            out.contains(&format!("-C {} -x -f - --numeric-owner", hostile.display())),
            "{out}"
        );
        let missing = options(tmp.path().join("nope").to_str().unwrap());
        assert_eq!(run_script(&missing), "M:nodir no such directory\n");
        let mut no_tar = options(tmp.path().to_str().unwrap());
        no_tar.remote_tar = "/nonexistent/tar".into();
        assert!(
            run_script(&no_tar).starts_with("M:missing tar "),
            "{}",
            run_script(&no_tar)
        );
        assert_eq!(
            runner::find_report::<RestoreReports>(b"noise\nM:cleared 7 /t/x\nM:nodir x\n", "M:").unwrap(),
            Some((Report::NoDir("x".into()), vec![]))
        );
        let ready = b"M:cleared 7 /t/x\nM:ready /tmp/borg-pull.AbC123xy\nrest";
        assert_eq!(
            runner::find_report::<RestoreReports>(ready, "M:").unwrap(),
            Some((
                Report::TarStarting(
                    "/tmp/borg-pull.AbC123xy".into(),
                    vec![Cleared {
                        pid: Some(7),
                        dir: "/t/x".into()
                    }]
                ),
                b"rest".to_vec()
            ))
        );
    }

    #[test]
    fn bad_arguments_fail_before_connecting() {
        let mut o = options("/d");
        o.borg = "/bin/sh".into();
        assert!(o.check().is_ok());
        o.paths.push("a\0b".into());
        assert!(matches!(o.check(), Err(Error::NulInArgument(_))));
        let mut o = options("/d");
        o.repo = "relative".into();
        assert!(o.check().is_err());
        let mut o = options("");
        o.borg = "/bin/sh".into();
        assert!(matches!(o.check(), Err(Error::InvalidOption(_))));
    }

    #[test]
    fn outcomes_name_both_programs_and_take_the_worse_code() {
        let mut o = RestoreOutcome {
            borg_rc: 2,
            borg_stopped: false,
            tar_rc: 0,
            bytes: 0,
            borg_said: Some("Archive x does not exist".into()),
            tar_said: None,
        };
        assert_eq!(o.code(), 2);
        assert_eq!(
            o.summary(),
            "borg export-tar exited 2: Archive x does not exist; tar on the client exited 0 (0 bytes sent)"
        );
        o.borg_stopped = true;
        o.borg_rc = 143;
        o.tar_rc = 0;
        assert_eq!(o.code(), 2, "a restore cut short is never a success");
        o.tar_rc = 7;
        assert_eq!(o.code(), 7);
        assert!(
            o.summary().starts_with("tar on the client exited 7 before"),
            "{}",
            o.summary()
        );
    }

    #[test]
    fn last_line_is_bounded_and_escaped() {
        let mut l = LastLine::default();
        l.push(b"first\nsec");
        l.push(b"ond \x1b[31m\n\n");
        assert_eq!(l.get().as_deref(), Some("second \\x1b[31m"));
        l.push(&vec![b'x'; 5000]);
        assert_eq!(l.get().unwrap().len(), MESSAGE_LINE_MAX);
    }
}
