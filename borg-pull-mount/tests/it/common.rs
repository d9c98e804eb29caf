//! A mounted tree for a test: a runtime, a source, the mount, and a guard that unmounts even when
//! the test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use borg_pull_mount::{Limits, Mount, MountOptions, Report, Source};
use borg_pull_sftp::{Attrs, Client, DirEntry, ReadData};
use tokio::runtime::Runtime;

pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// A dependency the tests need: missing, the test fails (never skips).
pub fn require(path: &str) -> &str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install it (scripts/install-deps); tests never skip a dependency"
    );
    path
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A mount and what it needs, dropped in this order: the mount (unmounted), the sftp-server
/// child (killed), the runtime, the temp dir.
pub struct Mounted {
    pub mount: Option<Mount>,
    /// Held for the drop order only.
    pub _server: Option<tokio::process::Child>,
    /// Shut down with a timeout on drop: a request task that never yields must not hang the test.
    pub rt: Option<Runtime>,
    pub _dir: tempfile::TempDir,
}

impl Mounted {
    pub fn at(&self) -> &Path {
        self.mount.as_ref().expect("mounted").mountpoint()
    }

    pub fn report(&self) -> Report {
        self.mount.as_ref().expect("mounted").report()
    }

    /// Unmounts now (the guard would on drop) and returns the report.
    pub fn stop(&mut self) -> Report {
        let mount = self.mount.take().expect("mounted");
        let report = mount.report();
        mount.stop().expect("unmount");
        report
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            let _ = mount.stop();
        }
        drop(self._server.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(10));
        }
    }
}

/// Mount points this process made, for the memory watch's last resort.
static MOUNTPOINTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A directory to mount on and one for test data, in a fresh temp dir.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("borg-pull-mount-")
        .tempdir()
        .expect("temp dir");
    let mountpoint = dir.path().join("mnt");
    MOUNTPOINTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(mountpoint.clone());
    (dir, mountpoint)
}

/// The resident memory of this test process (VmRSS in /proc/self/status), in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// What a test that reads from a hostile source may hold, the whole test process included:
/// the other tests run beside it (the whole binary peaks at 330-430 MiB, measured with
/// `/usr/bin/time -v`). The lying-size regression passed 3 GiB within seconds (23 GB unbounded).
pub const RSS_BOUND: u64 = 1 << 30;

/// Past this the memory watch ends the process: a regression must kill the test, not the machine.
const RSS_KILL: u64 = 2 << 30;

/// Watches this process's memory while a risky read runs. Past [`RSS_KILL`] it aborts the FUSE
/// connections of this process's mounts (a reader thread stuck in the kernel would otherwise keep
/// the process, and its memory, alive after the abort) and aborts the process.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
}

impl MemoryWatch {
    pub fn start() -> MemoryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            // Bounded by the test: it stops the watch when it ends (drop), or the watch ends it.
            while !stopped.load(Ordering::Relaxed) {
                let held = rss();
                if held > RSS_KILL {
                    eprintln!("memory watch: {held} bytes resident, past {RSS_KILL}: aborting");
                    abort_own_connections();
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        MemoryWatch { stop }
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Aborts the FUSE connection of every mount this process made that is still mounted (from
/// /proc/self/mountinfo: no call into the mounts themselves, which may be the ones stuck).
fn abort_own_connections() {
    let ours = MOUNTPOINTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(device), Some(at)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if !ours
            .iter()
            .any(|mine| mine.as_os_str() == std::ffi::OsStr::new(at))
        {
            continue;
        }
        let Some((major, minor)) = device.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        let abort = format!("/sys/fs/fuse/connections/{}/abort", (major << 20) | minor);
        let _ = std::fs::write(abort, b"1");
    }
}

/// OpenSSH's sftp-server as a child speaking SFTP on stdin/stdout, and our client over it.
pub fn sftp_server(rt: &Runtime) -> (Client, tokio::process::Child) {
    rt.block_on(async {
        let mut child = tokio::process::Command::new(require(SFTP_SERVER))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start sftp-server");
        let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let client = Client::start(stream, borg_pull_sftp::Limits::default())
            .await
            .expect("sftp session");
        (client, child)
    })
}

/// `remote_root` of a real sftp-server mounted in a fresh temp dir.
pub fn mount_sftp(remote_root: &Path, limits: Limits) -> Mounted {
    mount_sftp_through(remote_root, limits, |client| client)
}

/// [`mount_sftp`] with the client wrapped by `wrap` (e.g. [`Counting`]).
pub fn mount_sftp_through<S: Source>(
    remote_root: &Path,
    limits: Limits,
    wrap: impl FnOnce(Client) -> S,
) -> Mounted {
    let rt = runtime();
    let (dir, mountpoint) = scratch();
    let (client, child) = sftp_server(&rt);
    let client = wrap(client);
    let options = MountOptions::new(path_bytes(remote_root)).with_limits(limits);
    let mount = rt
        .block_on(Mount::start(client, &mountpoint, options))
        .expect("mount");
    Mounted {
        mount: Some(mount),
        _server: Some(child),
        rt: Some(rt),
        _dir: dir,
    }
}

/// `source` mounted in a fresh temp dir.
pub fn mount_source<S: Source>(source: S, options: MountOptions) -> Mounted {
    mount_source_on(runtime(), source, options)
}

/// `source` mounted in a fresh temp dir, its requests served on `rt`.
pub fn mount_source_on<S: Source>(rt: Runtime, source: S, options: MountOptions) -> Mounted {
    let (dir, mountpoint) = scratch();
    let mount = rt
        .block_on(Mount::start(source, &mountpoint, options))
        .expect("mount");
    Mounted {
        mount: Some(mount),
        _server: None,
        rt: Some(rt),
        _dir: dir,
    }
}

pub fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

/// Runs blocking file system work on its own thread and fails the test if it has not finished by
/// `deadline` (a mount that hangs must fail the test, not hang it). The thread is left behind on
/// failure; the guard's lazy unmount then ends its call.
pub fn within<T: Send + 'static>(deadline: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(deadline) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("file system call still running after {deadline:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("file system work panicked (see above)"),
    }
}

/// Reads per remote path.
pub type ReadCounts = Arc<Mutex<std::collections::HashMap<Vec<u8>, usize>>>;

/// A source that passes every call on and counts the reads of each path.
pub struct Counting<S> {
    inner: S,
    pub reads: ReadCounts,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            reads: ReadCounts::default(),
        }
    }
}

impl<S: Source> Source for Counting<S> {
    /// The inner handle and the path it was opened with.
    type Handle = (S::Handle, Vec<u8>);

    async fn lstat(&self, path: &[u8]) -> Result<Attrs, borg_pull_sftp::Error> {
        self.inner.lstat(path).await
    }

    async fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, borg_pull_sftp::Error> {
        self.inner.read_dir(path).await
    }

    async fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, borg_pull_sftp::Error> {
        self.inner.read_link(path).await
    }

    async fn open_read(&self, path: &[u8]) -> Result<Self::Handle, borg_pull_sftp::Error> {
        Ok((self.inner.open_read(path).await?, path.to_vec()))
    }

    async fn read(
        &self,
        handle: &Self::Handle,
        offset: u64,
        len: u32,
    ) -> Result<ReadData, borg_pull_sftp::Error> {
        *self
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(handle.1.clone())
            .or_default() += 1;
        self.inner.read(&handle.0, offset, len).await
    }

    async fn close(&self, handle: Self::Handle) -> Result<(), borg_pull_sftp::Error> {
        self.inner.close(handle.0).await
    }
}
