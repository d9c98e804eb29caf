//! Helpers shared by the integration tests that spawn the real binaries and real borg.
//!
//! - [`TestDir`]: a private temp dir with its own HOME and BORG_BASE_DIR, so borg's caches and
//!   security dirs never collide and tests run in parallel; [`TestDir::borg`] builds a borg command
//!   with that environment and the "are you sure" prompts answered.
//! - [`require_tool`]: skip a test when a tool is missing, or fail it under BORG_PULL_REQUIRE_DEPS=1.
//! - [`Spawned`]: a child that is killed and reaped on drop, with its stderr in a file for asserts.
//! - [`wait_until`]: poll a condition with a deadline; tests never sleep a fixed time.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails (the machine is slow and noisy).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `true` if `tool` is on PATH. If it is not: panics when BORG_PULL_REQUIRE_DEPS=1 (CI), otherwise
/// prints a note and returns `false` so the caller can skip.
pub fn require_tool(tool: &str) -> bool {
    if find_on_path(tool).is_some() {
        return true;
    }
    if std::env::var_os("BORG_PULL_REQUIRE_DEPS").is_some_and(|v| v == "1") {
        panic!("{tool} is required (BORG_PULL_REQUIRE_DEPS=1) but not on PATH; run scripts/install-deps");
    }
    eprintln!("note: skipping: {tool} is not installed (set BORG_PULL_REQUIRE_DEPS=1 to make this fail)");
    false
}

/// The full path of `tool` on PATH.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
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
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("HOME", self.home())
            .env("BORG_BASE_DIR", self.base())
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_CHECK_I_KNOW_WHAT_I_AM_DOING", "NO")
            .env("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING", "YES")
            .env_remove("BORG_REPO")
            .env_remove("BORG_RSH")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .stdin(Stdio::null())
    }

    /// `borg ARGS` with this test's environment.
    pub fn borg<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("borg");
        self.env(&mut cmd).args(args);
        cmd
    }

    /// `borg init -e none REPO`, locally; panics on failure.
    pub fn init_repo(&self, repo: &Path) {
        let out = output(self.borg(["init", "-e", "none"]).arg(repo));
        assert_ok(&out, "borg init");
    }
}

/// Runs `cmd` to completion like [`Command::output`], but kills it and panics (with what it printed)
/// if it takes longer than [`DEADLINE`]: a hang fails the test instead of stalling the suite.
///
/// The command runs in its own process group, so a timeout also kills what it started (borg's
/// BORG_RSH process).
pub fn output(cmd: &mut Command) -> Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let name = format!("{:?} {:?}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>());
    let mut child = cmd
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{name} did not finish within {DEADLINE:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Panics with the command's output unless it succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// A spawned child that is killed and reaped when dropped; its stderr goes to a log file.
pub struct Spawned {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Spawned {
    /// Spawns `cmd` with stdout/stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let name = format!("{:?}", cmd.get_program());
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        Self {
            child: Some(child),
            log,
            name,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the child logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Panics with the log if the child has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("{} exited early ({status}); its log:\n{}", self.name, self.log());
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
                panic!(
                    "{} exited ({status}) before logging {needle:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {needle:?} in the log of {}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (with [`DEADLINE`]) for the child to exit; the child is then reaped.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} did not exit within {DEADLINE:?}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running (and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
