//! The one way tests run a program (in the style of ripgrep's `tests/util.rs`): [`TestCommand`]
//! owns the environment, the deadline, the process-group kill and the failure report (the command
//! line, exit status, the tails of stdout and stderr and of any attached log, sshd's).
//! [`TestCommand::output`] runs to completion; [`Spawned`] is one running in the background.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails (the machine is slow and noisy).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long one command may run: a whole pull with borg on both ends, on a machine shared by many.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(180);

/// How much of each output the failure report shows (its end, where the error is).
const REPORT_TAIL: usize = 4000;

/// A program to run with a deadline, in its own process group, with stdin from `/dev/null` unless
/// given, and a readable report when it fails.
pub struct TestCommand {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
    logs: Vec<(String, PathBuf)>,
}

impl TestCommand {
    /// `program`, with no arguments yet.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut cmd = Command::new(program);
        // Its own group: a timeout or drop kills what it started too (borg's BORG_RSH, borg serve).
        cmd.process_group(0);
        Self {
            cmd,
            stdin: None,
            deadline: COMMAND_DEADLINE,
            logs: Vec::new(),
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env_remove(key);
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Feeds `bytes` to stdin (from a thread, so a child that does not read cannot block us).
    pub fn stdin(&mut self, bytes: Vec<u8>) -> &mut Self {
        self.stdin = Some(bytes);
        self
    }

    /// Fails the test if the command runs longer than `limit` (default [`COMMAND_DEADLINE`]).
    pub fn deadline(&mut self, limit: Duration) -> &mut Self {
        self.deadline = limit;
        self
    }

    /// Shows the end of `path` (e.g. sshd's log) in the failure report, under `name`.
    pub fn attach_log(&mut self, name: &str, path: &Path) -> &mut Self {
        self.logs.push((name.to_owned(), path.to_owned()));
        self
    }

    /// The command line, quoted for reading.
    pub fn command_line(&self) -> String {
        let mut line = format!("{:?}", self.cmd.get_program());
        for arg in self.cmd.get_args() {
            let _ = write!(line, " {arg:?}");
        }
        line
    }

    /// Runs to completion with stdout and stderr captured; on a timeout kills the process group
    /// and panics with the report.
    pub fn output(&mut self) -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir for output");
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut running = self.start(
            fs::File::create(&out).unwrap(),
            fs::File::create(&err).unwrap(),
            err.clone(),
        );
        let status = running.wait_exit();
        Outcome {
            status,
            stdout: fs::read(&out).unwrap_or_default(),
            stderr: fs::read(&err).unwrap_or_default(),
            command: running.name.clone(),
            logs: running.attached_logs(),
        }
    }

    /// Starts it in the background with stdout and stderr appended to `log`.
    pub fn spawn(&mut self, log: PathBuf) -> Spawned {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        self.start(file.try_clone().unwrap(), file, log)
    }

    fn start(&mut self, stdout: fs::File, stderr: fs::File, log: PathBuf) -> Spawned {
        let line = self.command_line();
        self.cmd.stdout(stdout).stderr(stderr);
        self.cmd.stdin(match self.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        });
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        Spawned {
            child: Some(child),
            log,
            name: line,
            started: Instant::now(),
            deadline: self.deadline,
            logs: self.logs.clone(),
        }
    }
}

/// What a finished [`TestCommand`] did.
pub struct Outcome {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    command: String,
    logs: String,
}

impl Outcome {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The failure report: command line, status, the ends of stdout, stderr and attached logs.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout (end)\n{}\n--- stderr (end)\n{}{}",
            self.command,
            self.status,
            tail(&self.stdout),
            tail(&self.stderr),
            self.logs
        )
    }

    /// Panics with the report unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
    }
}

/// The last [`REPORT_TAIL`] bytes of `bytes`, as text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(REPORT_TAIL);
    let cut = if start > 0 { "[...]" } else { "" };
    format!("{cut}{}", String::from_utf8_lossy(&bytes[start..]))
}

/// Panics with the command's report unless it succeeded.
#[track_caller]
pub fn assert_ok(out: &Outcome, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", out.describe());
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A [`TestCommand`] running in the background: its process group is killed and the child reaped
/// when this is dropped, and every wait has a deadline.
pub struct Spawned {
    child: Option<Child>,
    log: PathBuf,
    name: String,
    started: Instant,
    deadline: Duration,
    logs: Vec<(String, PathBuf)>,
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: TestCommand, log: PathBuf) -> Self {
        cmd.spawn(log)
    }

    /// The child's pid (also its process group).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the child logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The ends of the attached logs (sshd's), for failure messages.
    fn attached_logs(&self) -> String {
        let mut report = String::new();
        for (name, path) in &self.logs {
            let text = fs::read(path).unwrap_or_default();
            let _ = write!(report, "\n--- {name} ({}, end)\n{}", path.display(), tail(&text));
        }
        report
    }

    /// The failure report: command line, the end of its output, then of the attached logs.
    pub fn report(&self) -> String {
        format!(
            "command: {}\n--- its output (end)\n{}{}",
            self.name,
            tail(self.log().as_bytes()),
            self.attached_logs()
        )
    }

    /// Panics with the log if the child has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("exited early ({status}):\n{}", self.report());
        }
    }

    /// Waits (with [`DEADLINE`]) until `path` accepts connections, failing fast if the child dies.
    pub fn wait_for_socket(&mut self, path: &Path) {
        wait_until(&format!("{} to listen on {}", self.name, path.display()), || {
            self.assert_running();
            UnixStream::connect(path).is_ok()
        });
    }

    /// Waits (with [`DEADLINE`]) until the log contains `needle`; fails fast (with the log) if the
    /// child exits without writing it.
    pub fn wait_for_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                if self.log().contains(needle) {
                    break;
                }
                panic!("exited ({status}) before logging {needle:?}:\n{}", self.report());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {needle:?} in the log:\n{}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "TERM", "INT", "KILL") to the child itself, not its group.
    pub fn signal(&self, signal: &str) {
        let sig = match signal {
            "TERM" => rustix::process::Signal::TERM,
            "INT" => rustix::process::Signal::INT,
            "KILL" => rustix::process::Signal::KILL,
            other => panic!("no such signal in the tests: {other}"),
        };
        rustix::process::kill_process(pid(self.pid()), sig)
            .unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid()));
    }

    /// Waits for the child to exit and reaps it; kills its process group and panics with the
    /// report if that takes longer than the command's deadline (counted from its start), or for a
    /// long-running server, than [`DEADLINE`] from now.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = (self.started + self.deadline).max(Instant::now() + DEADLINE);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                self.kill();
                panic!(
                    "did not finish within {:?}; killed its process group:\n{}",
                    self.deadline,
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running (and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGKILLs the child's whole process group and reaps the child.
    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = rustix::process::kill_process_group(pid(child.id()), rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
        self.child = None;
    }
}

fn pid(id: u32) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(i32::try_from(id).unwrap()).unwrap()
}

/// Runs `cmd` to completion (see [`TestCommand::output`]).
pub fn output(cmd: &mut TestCommand) -> Outcome {
    cmd.output()
}
