//! Helpers shared by the integration tests that spawn the real binaries and real borg.
//!
//! - [`TestCommand`]: the one way tests run a program (in the style of ripgrep's `tests/util.rs`).
//!   It owns the environment, the deadline, the process-group kill and the failure report: the
//!   command line, exit status, the tails of stdout and stderr and of any attached log (sshd's).
//!   [`TestCommand::output`] runs to completion; [`Spawned`] is one running in the background.
//! - [`TestDir`]: a private temp dir with its own HOME and BORG_BASE_DIR, so borg's caches and
//!   security dirs never collide and tests run in parallel; [`TestDir::borg`] builds a borg command
//!   with that environment and the "are you sure" prompts answered.
//! - [`require_tool`]: skip a test when a tool is missing, or fail it under BORG_PULL_REQUIRE_DEPS=1.
//! - [`wait_until`]: poll a condition with a deadline; tests never sleep a fixed time.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
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

/// `true` if `tool` is on PATH. If it is not: panics when BORG_PULL_REQUIRE_DEPS=1 (CI), otherwise
/// prints a note and returns `false` so the caller can skip.
pub fn require_tool(tool: &str) -> bool {
    if find_on_path(tool).is_some() {
        return true;
    }
    missing(&format!("{tool} (not on PATH)"))
}

/// Whether missing dependencies fail the tests (CI, `scripts/test`) instead of skipping them.
pub fn deps_required() -> bool {
    std::env::var_os("BORG_PULL_REQUIRE_DEPS").is_some_and(|v| v == "1")
}

/// Panics about `what` under BORG_PULL_REQUIRE_DEPS=1, else prints a note; returns `false`.
pub fn missing(what: &str) -> bool {
    if deps_required() {
        panic!("{what} is required (BORG_PULL_REQUIRE_DEPS=1); run scripts/install-deps");
    }
    eprintln!("note: skipping: {what} is missing (set BORG_PULL_REQUIRE_DEPS=1 to make this fail)");
    false
}

/// Where `scripts/install-deps` puts the borg 2 beta (`BORG_PULL_BORG2` overrides it).
pub const BORG2_DEFAULT: &str = "/opt/borg-pull/venv-borg2/bin/borg";

/// Where `scripts/install-deps` puts borg 1.4 (`BORG_PULL_BORG14` overrides it).
pub const BORG14_DEFAULT: &str = "/opt/borg-pull/venv-borg1.4/bin/borg";

/// The borg 2 beta, runnable by others (the tests' sshd login user runs it too); `None` (skip)
/// when missing, a failure under BORG_PULL_REQUIRE_DEPS=1.
pub fn borg2() -> Option<PathBuf> {
    venv_borg("BORG_PULL_BORG2", BORG2_DEFAULT, "borg 2.")
}

/// borg 1.4 (the first with modern exit codes), like [`borg2`].
pub fn borg14() -> Option<PathBuf> {
    venv_borg("BORG_PULL_BORG14", BORG14_DEFAULT, "borg 1.4.")
}

fn venv_borg(var: &str, default: &str, version_prefix: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let runs = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        && TestCommand::new(&path)
            .arg("--version")
            .output()
            .stdout_text()
            .starts_with(version_prefix);
    if runs {
        Some(path)
    } else {
        missing(&format!(
            "{} at {} ({var}), runnable by others,",
            version_prefix.trim_end_matches('.'),
            path.display()
        ));
        None
    }
}

/// The full path of `tool` on PATH.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

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

/// A private temporary directory (mode 0700) with a HOME and BORG_BASE_DIR of its own.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A fresh directory; removed on drop.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bp-")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let t = Self { dir };
        fs::create_dir(t.home()).unwrap();
        fs::create_dir(t.base()).unwrap();
        t
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// HOME for every process of this test.
    pub fn home(&self) -> PathBuf {
        self.join("home")
    }

    /// BORG_BASE_DIR for every process of this test.
    pub fn base(&self) -> PathBuf {
        self.join("borg-base")
    }

    /// Applies this test's private environment to `cmd`.
    pub fn env<'a>(&self, cmd: &'a mut TestCommand) -> &'a mut TestCommand {
        cmd.env("HOME", self.home())
            .env("BORG_BASE_DIR", self.base())
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_CHECK_I_KNOW_WHAT_I_AM_DOING", "NO")
            .env("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING", "YES")
            .env_remove("BORG_REPO")
            .env_remove("BORG_RSH")
            .env_remove("BORGSTORE_RSH")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
    }

    /// `borg ARGS` with this test's environment.
    pub fn borg<I, S>(&self, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = TestCommand::new("borg");
        self.env(&mut cmd).args(args);
        cmd
    }

    /// `borg init -e none REPO`, locally; panics on failure.
    pub fn init_repo(&self, repo: &Path) {
        let out = self.borg(["init", "-e", "none"]).arg(repo).output();
        assert_ok(&out, "borg init");
    }
}

/// Runs `cmd` to completion (see [`TestCommand::output`]).
pub fn output(cmd: &mut TestCommand) -> Outcome {
    cmd.output()
}

/// The pids of the direct children of `pid` (spawned by any of its threads), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether process `pid` still exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// How many connections wait, not yet accepted, on the listening socket at `path` (`ss -xl`).
pub fn pending_connections(path: &Path) -> Option<u32> {
    let out = Command::new("ss").args(["-xlnH"]).output().ok()?;
    let wanted = path.to_str()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Netid State Recv-Q Send-Q Local-Address Port Peer-Address Port
        if fields.contains(&wanted) {
            fields.get(2)?.parse().ok()
        } else {
            None
        }
    })
}

/// PIDs and command lines of processes whose argv mentions `needle` (sshd itself excluded).
pub fn processes_mentioning(needle: &[u8]) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.is_empty() || cmdline.starts_with(b"/usr/sbin/sshd") || cmdline.starts_with(b"sshd:") {
            continue;
        }
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// All descendants of `pid` (children first found through /proc/PID/stat's ppid).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The ppid is the second field after the parenthesised command name.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok())
        {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Waits (30 s at most, then panics listing them) until no process's argv mentions `dir`: borg
/// serve, relays, the client's borg, wrappers of this test.
pub fn assert_no_process_mentions(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where `scripts/install-deps` builds the Debian 13 client tree (`BORG_PULL_TRIXIE_ROOT`
/// overrides it).
pub const TRIXIE_ROOT_DEFAULT: &str = "/var/cache/borg-pull-test/trixie-client";

/// The Debian 13 (trixie) client tree: complete (the build's stamp is written last), with its
/// sshd and borg; and root to chroot into it. `None` (skip) when not, a failure under
/// BORG_PULL_REQUIRE_DEPS=1.
pub fn trixie_root() -> Option<PathBuf> {
    let root = std::env::var_os("BORG_PULL_TRIXIE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TRIXIE_ROOT_DEFAULT));
    let complete = [
        "/.borg-pull-stamp",
        "/usr/sbin/sshd",
        "/usr/bin/borg",
        "/usr/bin/ssh",
    ]
    .iter()
    .all(|p| root.join(p.trim_start_matches('/')).is_file());
    if !complete {
        missing(&format!(
            "the Debian 13 client tree at {} (BORG_PULL_TRIXIE_ROOT), built by scripts/install-deps,",
            root.display()
        ));
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        missing("root (to chroot into the Debian 13 client tree)");
        return None;
    }
    Some(root)
}
