//! The one way borg-pull runs a borg on this machine: `borg serve` for a client ([`crate::serve`]),
//! the fleet's prune, compact, check and list, and `restore-tar`'s `borg export-tar`.
//!
//! Every such borg:
//! - runs in a process group of its own, so that stopping it also stops what it started (a
//!   `BORG_PASSCOMMAND`, an ssh) and a Ctrl-C on our terminal reaches us, not it: we decide how it
//!   ends (borg serve must see EOF first, or it leaves a stale lock);
//! - gets an environment stated by the caller ([`Environment`]), secrets such as the repository
//!   passphrase as variables ([`BorgCommand::secret_env`]), never in its argv (every user can read
//!   `/proc/PID/cmdline`) nor in our logs;
//! - has its stderr read to the end in bounded memory: each line cut to
//!   [`LOG_LINE_MAX`] bytes and escaped ([`crate::text`]), handed to the caller's
//!   [`BorgCommand::on_stderr_line`], and the last [`CHILD_STDERR_KEPT_LINES`] non-blank lines
//!   (at most [`CHILD_STDERR_KEPT_BYTES`]) kept for the error message ([`StderrTail`]);
//! - has an owner, [`BorgChild`]: [`BorgChild::stop`] sends SIGTERM to the group (borg rolls back
//!   and removes its lock), SIGKILL after the caller's grace, and reaps it; dropping the owner
//!   SIGKILLs the group and tokio reaps the leader;
//! - ends as an [`Ended`]: how it ended and its code as a shell reports it (`128 + N` for signal N).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::AsyncRead;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn, Instrument};

use crate::limits::{CHILD_STDERR_DRAIN, CHILD_STDERR_KEPT_BYTES, CHILD_STDERR_KEPT_LINES, LOG_LINE_MAX};
use crate::text::BoundedLines;

/// Which of this process's environment variables the child starts with (those the caller sets
/// come on top).
#[derive(Debug, Clone)]
pub enum Environment {
    /// All of them but these: borg run for the operator (prune, check, export-tar), minus secrets
    /// meant for other work.
    InheritedWithout(Vec<OsString>),
    /// Only those the filter accepts: `borg serve` for a client gets what it needs and nothing
    /// that could widen what it may do ([`crate::serve::passed_to_serve`]).
    Allowlisted(fn(&OsStr) -> bool),
}

/// Where the child's stdin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `/dev/null`: borg never waits on a prompt.
    Null,
    /// A pipe the caller writes ([`BorgChild::take_stdin`]); borg serve exits when it closes.
    Piped,
}

/// Where the child's stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A pipe the caller reads ([`BorgChild::take_stdout`]) and must read to the end.
    Piped,
    /// Our own stdout.
    Inherited,
    /// `/dev/null`.
    Null,
}

/// A secret value for the child's environment; never shown by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What the caller does with each line of the child's stderr (already cut and escaped).
type LineSink = Box<dyn FnMut(&str) + Send>;

/// A local borg to start: program, arguments, environment, where its stdio goes.
pub struct BorgCommand {
    program: PathBuf,
    args: Vec<OsString>,
    environment: Environment,
    set: Vec<(OsString, OsString)>,
    secrets: Vec<(OsString, Secret)>,
    stdin: Input,
    stdout: Output,
    on_line: Option<LineSink>,
    cwd: Option<PathBuf>,
}

impl fmt::Debug for BorgCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BorgCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("environment", &self.environment)
            .field("set", &self.set)
            .field("secrets", &self.secrets)
            .field("stdin", &self.stdin)
            .field("stdout", &self.stdout)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

impl BorgCommand {
    /// `program` with no arguments, the given starting environment, stdin from `/dev/null`,
    /// stdout piped, stderr read and dropped (see [`on_stderr_line`](Self::on_stderr_line)).
    pub fn new(program: impl Into<PathBuf>, environment: Environment) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            environment,
            set: Vec::new(),
            secrets: Vec::new(),
            stdin: Input::Null,
            stdout: Output::Piped,
            on_line: None,
            cwd: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable (after the starting environment, so it wins).
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.set.push((name.into(), value.into()));
        self
    }

    /// Sets a variable whose value is a secret (the repository passphrase): in the child's
    /// environment, which only its owner and root can read, never in argv or our logs.
    pub fn secret_env(mut self, name: impl Into<OsString>, value: impl Into<String>) -> Self {
        self.secrets.push((name.into(), Secret(value.into())));
        self
    }

    /// Where stdin comes from ([`Input::Null`] by default).
    pub fn stdin(mut self, input: Input) -> Self {
        self.stdin = input;
        self
    }

    /// Where stdout goes ([`Output::Piped`] by default).
    pub fn stdout(mut self, output: Output) -> Self {
        self.stdout = output;
        self
    }

    /// Its working directory (ours by default): `pull --via sftp` runs borg create in the
    /// mount, so that the archive's paths are the client's.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Called with each line of stderr, escaped and cut to [`LOG_LINE_MAX`] bytes, as it comes
    /// (log it, relay it). Runs on the task that reads stderr: keep it short.
    pub fn on_stderr_line(mut self, sink: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_line = Some(Box::new(sink));
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        match &self.environment {
            Environment::InheritedWithout(names) => {
                for name in names {
                    cmd.env_remove(name);
                }
            }
            Environment::Allowlisted(keep) => {
                cmd.env_clear()
                    .envs(std::env::vars_os().filter(|(name, _)| keep(name)));
            }
        }
        cmd.envs(self.set.iter().map(|(k, v)| (k, v)));
        cmd.envs(self.secrets.iter().map(|(k, v)| (k, &v.0)));
        cmd.stdin(match self.stdin {
            Input::Null => Stdio::null(),
            Input::Piped => Stdio::piped(),
        });
        cmd.stdout(match self.stdout {
            Output::Piped => Stdio::piped(),
            Output::Inherited => Stdio::inherit(),
            Output::Null => Stdio::null(),
        });
        cmd.stderr(Stdio::piped())
            .process_group(0)
            // Backs up our own Drop: a leader nobody waits for is killed and reaped by tokio.
            .kill_on_drop(true);
        cmd
    }

    /// Starts it; its stderr is read from now on, in the current span. The error is exec's:
    /// the caller names what it was starting.
    pub fn spawn(mut self) -> io::Result<BorgChild> {
        let mut child = spawn_unless_busy(&mut self.command())?;
        let group = child.id().and_then(|id| Pid::from_raw(id as i32));
        debug!(pid = child.id(), program = %self.program.display(), "borg started in its own process group");
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = self.on_line.take();
        let reader = AbortOnDropHandle::new(tokio::spawn(read_stderr(stderr, sink).in_current_span()));
        Ok(BorgChild {
            child,
            life: match group {
                Some(group) => Life::Running { group },
                None => Life::Unknown,
            },
            stderr: Stderr::Reading(reader),
        })
    }
}

/// Starts `command`, again after a pause while its program is busy (see
/// [`crate::limits::SPAWN_BUSY_TRIES`]). The pause blocks the thread: it only happens on that
/// rare error, and only for milliseconds.
fn spawn_unless_busy(command: &mut Command) -> io::Result<tokio::process::Child> {
    for _ in 1..crate::limits::SPAWN_BUSY_TRIES {
        match command.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(crate::limits::SPAWN_BUSY_PAUSE);
            }
            started => return started,
        }
    }
    command.spawn()
}

/// Where the child is in its life.
#[derive(Debug, Clone, Copy)]
enum Life {
    /// Running (or exited but not yet reaped): its group can be signalled.
    Running { group: Pid },
    /// Reaped; nothing to signal any more.
    Reaped(ExitStatus),
    /// tokio gave no pid (cannot happen for a child just spawned); only wait() is possible.
    Unknown,
}

/// The stderr reader and what it kept.
#[derive(Debug)]
enum Stderr {
    Reading(AbortOnDropHandle<StderrTail>),
    Read(StderrTail),
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HowEnded {
    /// It exited (or died of a signal) without being asked.
    ByItself,
    /// It ended after our SIGTERM.
    AfterSigterm,
    /// It ignored SIGTERM for the grace and was SIGKILLed.
    AfterSigkill,
}

/// A reaped child: how it ended and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// How it came to end.
    pub how: HowEnded,
    /// Its wait status.
    pub status: ExitStatus,
}

impl Ended {
    /// The exit code as a shell reports it: borg's code, or 128 + N for signal N.
    pub fn code(&self) -> i32 {
        exit_code(self.status)
    }
}

/// The exit code of `status` as a shell reports it: the code, or 128 + N for signal N.
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
/// assert_eq!(borg_pull_core::child::exit_code(ExitStatus::from_raw(2 << 8)), 2);
/// assert_eq!(borg_pull_core::child::exit_code(ExitStatus::from_raw(15)), 143);
/// ```
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A running local borg and its owner: dropping it SIGKILLs its process group (tokio reaps the
/// leader); [`stop`](Self::stop) and [`finish`](Self::finish) end it gracefully and reap it.
#[derive(Debug)]
pub struct BorgChild {
    child: Child,
    life: Life,
    stderr: Stderr,
}

impl BorgChild {
    /// Its process id (also its process group id); `None` once reaped.
    pub fn id(&self) -> Option<u32> {
        match self.life {
            Life::Running { .. } | Life::Unknown => self.child.id(),
            Life::Reaped(_) => None,
        }
    }

    /// Its stdin, if piped and not taken yet. Dropping it closes the pipe (EOF for borg serve).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its stdout, if piped and not taken yet. Read it to the end: a full pipe stalls borg.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Its status if it has been reaped (by [`wait`](Self::wait) or [`try_wait`](Self::try_wait)).
    pub fn status(&self) -> Option<ExitStatus> {
        match self.life {
            Life::Reaped(status) => Some(status),
            _ => None,
        }
    }

    /// Sends `signal` to its process group; nothing once it is reaped.
    fn signal(&self, signal: Signal) {
        if let Life::Running { group } = self.life {
            // ESRCH: the group is gone already, which is what we want.
            if let Err(e) = kill_process_group(group, signal) {
                debug!(pid = group.as_raw_nonzero().get(), "{signal:?} to the group: {e}");
            }
        }
    }

    /// Asks it to stop: SIGTERM to its group (borg rolls back and removes its lock).
    pub fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    /// SIGKILL to its group.
    pub fn kill(&self) {
        self.signal(Signal::KILL);
    }

    /// Waits until it exits and reaps it (cancel-safe; at once if reaped already). What it left
    /// in its group is then SIGKILLed, so that its pipes reach EOF: while a member lives the
    /// group id cannot be reused, and once none does the signal finds nobody.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Life::Reaped(status) = self.life {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.reaped(status);
        Ok(status)
    }

    /// Reaps it if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Life::Reaped(status) = self.life {
            return Ok(Some(status));
        }
        let status = self.child.try_wait()?;
        if let Some(status) = status {
            self.reaped(status);
        }
        Ok(status)
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.kill();
        debug!("borg exited with {}", exit_code(status));
        self.life = Life::Reaped(status);
    }

    /// Waits up to `limit` for it to end (and reaps it); `None` while it still runs.
    async fn ended_within(&mut self, limit: Duration, how: HowEnded) -> Option<io::Result<Ended>> {
        let status = tokio::time::timeout(limit, self.wait()).await.ok()?;
        Some(status.map(|status| Ended { how, status }))
    }

    /// Stops it: SIGTERM to its group, SIGKILL after `grace`; reaped in every case.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<Ended> {
        if let Life::Reaped(status) = self.life {
            return Ok(Ended {
                how: HowEnded::ByItself,
                status,
            });
        }
        self.terminate();
        if let Some(ended) = self.ended_within(grace, HowEnded::AfterSigterm).await {
            return ended;
        }
        warn!(
            pid = self.child.id(),
            "borg did not exit {}s after SIGTERM; killing it",
            grace.as_secs_f64()
        );
        self.kill();
        Ok(Ended {
            how: HowEnded::AfterSigkill,
            status: self.wait().await?,
        })
    }

    /// Lets it end by itself for up to `exit_grace`, then [`stop`](Self::stop)s it with
    /// `stop_grace`; reaped in every case.
    pub async fn finish(&mut self, exit_grace: Duration, stop_grace: Duration) -> io::Result<Ended> {
        if let Some(ended) = self.ended_within(exit_grace, HowEnded::ByItself).await {
            return ended;
        }
        warn!(
            pid = self.child.id(),
            "borg did not exit in {}s; stopping it",
            exit_grace.as_secs_f64()
        );
        self.stop(stop_grace).await
    }

    /// What it kept of its stderr: at once when the pipe has reached EOF, else after at most
    /// [`CHILD_STDERR_DRAIN`] (call it once it has been reaped; only a process that left the
    /// group, with `setsid`, can hold the pipe open longer, and it is not waited for).
    pub async fn stderr_tail(&mut self) -> &StderrTail {
        if let Stderr::Reading(reader) = &mut self.stderr {
            let tail = match tokio::time::timeout(CHILD_STDERR_DRAIN, reader).await {
                Ok(Ok(tail)) => tail,
                Ok(Err(e)) => {
                    warn!("the reader of borg's stderr failed: {e}");
                    StderrTail::default()
                }
                Err(_) => {
                    warn!(
                        "borg's stderr was still open {}s after it exited; not read to its end",
                        CHILD_STDERR_DRAIN.as_secs()
                    );
                    StderrTail::default()
                }
            };
            self.stderr = Stderr::Read(tail);
        }
        match &self.stderr {
            Stderr::Read(tail) => tail,
            Stderr::Reading(_) => unreachable!("just read"),
        }
    }
}

impl Drop for BorgChild {
    fn drop(&mut self) {
        if let Life::Running { group } = self.life {
            debug!(
                pid = group.as_raw_nonzero().get(),
                "borg's owner is gone; killing its process group"
            );
            self.kill();
        }
    }
}

/// The last non-blank lines of a child's stderr, escaped, bounded by
/// [`CHILD_STDERR_KEPT_LINES`] and [`CHILD_STDERR_KEPT_BYTES`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StderrTail {
    lines: VecDeque<String>,
    bytes: usize,
    /// Non-blank lines read but no longer kept.
    dropped: u64,
}

impl StderrTail {
    fn push(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        // The newest line always stays, however long (it is bounded by LOG_LINE_MAX, escaped).
        while self.lines.len() > CHILD_STDERR_KEPT_LINES
            || (self.bytes > CHILD_STDERR_KEPT_BYTES && self.lines.len() > 1)
        {
            let old = self.lines.pop_front().expect("more than one line");
            self.bytes -= old.len();
            self.dropped += 1;
        }
    }

    /// The last non-blank line (borg's error message when it failed).
    pub fn last_line(&self) -> Option<&str> {
        self.lines.back().map(String::as_str)
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// Bytes of text kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Non-blank lines that came before the kept ones and were dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Reads stderr to EOF (so that the child never gets EPIPE), line by line in bounded memory.
async fn read_stderr(stderr: impl AsyncRead + Unpin, mut sink: Option<LineSink>) -> StderrTail {
    let mut lines = BoundedLines::new(stderr, LOG_LINE_MAX);
    let mut tail = StderrTail::default();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let shown = line.to_string();
                if let Some(sink) = sink.as_mut() {
                    sink(&shown);
                }
                tail.push(shown);
            }
            Ok(None) => return tail,
            Err(e) => {
                warn!("cannot read borg's stderr any more: {e}");
                return tail;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    fn sh(script: &str) -> BorgCommand {
        BorgCommand::new("/bin/sh", Environment::InheritedWithout(Vec::new())).args(["-c", script])
    }

    #[tokio::test]
    async fn a_program_that_stays_busy_fails_to_start_with_the_busy_error() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("fake-borg");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Held open for writing throughout: every try is refused, and the last refusal is the
        // error (not hidden, not another one).
        let _writer = std::fs::OpenOptions::new().append(true).open(&program).unwrap();
        let started = Instant::now();
        let error = BorgCommand::new(&program, Environment::InheritedWithout(Vec::new()))
            .spawn()
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ExecutableFileBusy, "{error}");
        let waited = crate::limits::SPAWN_BUSY_PAUSE * (crate::limits::SPAWN_BUSY_TRIES as u32 - 1);
        assert!(started.elapsed() >= waited, "tried again for {waited:?} first");
    }

    /// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...), `None` once the pid is gone.
    fn proc_state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "PID (COMM) S ...": COMM may hold spaces and parentheses; the state follows the last ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Waits (bounded) until `pid` is neither running nor a zombie: gone, i.e. reaped.
    async fn reaped_within(pid: u32, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if proc_state(pid).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Reads the first line of `child`'s stdout (the script says it is ready).
    async fn first_line(child: &mut BorgChild) -> String {
        let mut out = BufReader::new(child.take_stdout().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
            .await
            .expect("the child never said it was ready")
            .unwrap();
        line.trim().to_owned()
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace_and_reaped() {
        // The grandchild inherits the ignored SIGTERM: only SIGKILL to the group stops both.
        let mut child = sh("trap '' TERM; sleep 1000 & echo $!; wait").spawn().unwrap();
        let pid = child.id().unwrap();
        let grandchild: u32 = first_line(&mut child).await.parse().unwrap();
        assert_eq!(proc_state(pid).map(|s| s != 'Z'), Some(true));
        let grace = Duration::from_millis(500);
        let start = Instant::now();
        let ended = child.stop(grace).await.unwrap();
        assert!(
            start.elapsed() >= grace,
            "killed before the grace: {:?}",
            start.elapsed()
        );
        assert_eq!(ended.how, HowEnded::AfterSigkill);
        assert_eq!(ended.code(), 128 + 9);
        assert_eq!(proc_state(pid), None, "the leader is reaped, not a zombie");
        // The grandchild is no child of ours: once killed, init (or a subreaper) reaps it.
        let start = Instant::now();
        while matches!(proc_state(grandchild), Some(s) if s != 'Z') {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the grandchild still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(child.id(), None);
    }

    #[tokio::test]
    async fn a_child_that_takes_sigterm_ends_after_it() {
        let mut child = sh("trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        assert_eq!(first_line(&mut child).await, "ready");
        let ended = child.stop(Duration::from_secs(30)).await.unwrap();
        assert_eq!(ended.how, HowEnded::AfterSigterm);
        assert_eq!(ended.code(), 3);
        assert_eq!(proc_state(pid), None);
    }

    #[test]
    fn signals_map_like_a_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(2 << 8)), 2);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[tokio::test]
    async fn a_signal_is_128_plus_its_number() {
        let mut child = sh("kill -USR1 $$").stdout(Output::Null).spawn().unwrap();
        let ended = child
            .finish(Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(ended.how, HowEnded::ByItself);
        assert_eq!(ended.code(), 128 + 10);
        let mut child = sh("exit 2").stdout(Output::Null).spawn().unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(2));
        assert_eq!(
            child.stop(Duration::ZERO).await.unwrap().code(),
            2,
            "reaped: nothing to stop"
        );
    }

    #[tokio::test]
    async fn a_child_flooding_stderr_costs_bounded_memory_and_its_text_comes_escaped() {
        // 16 MiB of stderr: 4 Ki long lines with a terminal escape, newlines and invalid UTF-8.
        let script = "i=0; line=$(head -c 4000 /dev/zero | tr '\\0' x); \
                      while [ $i -lt 4096 ]; do printf '\\033[31m%s%s%s\\377 %d\\n' \"$line\" \"$line\" \"$line\" $i >&2; i=$((i+1)); done; \
                      printf 'last \\033]0;title\\007\\n' >&2; printf '\\n\\n' >&2";
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let longest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, l) = (seen.clone(), longest.clone());
        let mut child = sh(script)
            .stdout(Output::Null)
            .on_stderr_line(move |line| {
                s.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                l.fetch_max(line.len(), std::sync::atomic::Ordering::Relaxed);
                assert!(!line.contains('\x1b') && !line.contains('\n'), "{line:?}");
            })
            .spawn()
            .unwrap();
        let status = child.wait().await.unwrap();
        assert!(
            status.success(),
            "stderr was not read to its end (EPIPE?): {status:?}"
        );
        let tail = child.stderr_tail().await.clone();
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 4096 + 3);
        // Each line cut to LOG_LINE_MAX bytes before escaping, then the cut is named.
        let longest = longest.load(std::sync::atomic::Ordering::Relaxed);
        assert!(longest <= LOG_LINE_MAX + 64, "{longest}");
        assert!(tail.bytes() <= CHILD_STDERR_KEPT_BYTES, "{}", tail.bytes());
        assert!(tail.lines().count() <= CHILD_STDERR_KEPT_LINES);
        assert!(tail.dropped() > 4000, "{}", tail.dropped());
        assert_eq!(tail.last_line(), Some(r"last \x1b]0;title\x07"));
        let earlier = tail.lines().next().unwrap();
        assert!(
            earlier.starts_with(r"\x1b[31mxxx") && earlier.contains("bytes cut]"),
            "{earlier}"
        );
    }

    #[tokio::test]
    async fn dropping_the_owner_kills_the_group_and_the_leader_is_reaped() {
        let mut child = sh("sleep 1000 & echo $!; wait").spawn().unwrap();
        let pid = child.id().unwrap();
        let grandchild: u32 = first_line(&mut child).await.parse().unwrap();
        drop(child);
        assert!(
            reaped_within(pid, Duration::from_secs(30)).await,
            "the leader was not reaped: {:?}",
            proc_state(pid)
        );
        let start = Instant::now();
        while matches!(proc_state(grandchild), Some(s) if s != 'Z') {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the grandchild still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn secrets_reach_the_environment_only() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        let script = format!(
            "cat /proc/$$/cmdline > '{}'; printf '%s|%s|%s' \"$BORG_PASSPHRASE\" \"${{HOME-unset}}\" \"${{OTHER-unset}}\"",
            cmdline.display()
        );
        let command = BorgCommand::new("/bin/sh", Environment::Allowlisted(|n| n == "PATH"))
            .args(["-c", &script])
            .env("OTHER", "set")
            .secret_env("BORG_PASSPHRASE", "s3cret pass");
        assert!(!format!("{command:?}").contains("s3cret"), "{command:?}");
        let mut child = command.spawn().unwrap();
        let mut out = String::new();
        child
            .take_stdout()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(out, "s3cret pass|unset|set", "HOME is not allowlisted");
        assert!(!std::fs::read_to_string(&cmdline).unwrap().contains("s3cret"));
    }

    #[tokio::test]
    async fn a_missing_program_is_execs_error() {
        let err = BorgCommand::new("/nonexistent/borg", Environment::InheritedWithout(Vec::new()))
            .spawn()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
