//! A mounted tree for a test: a runtime, a source, the mount, and a guard that unmounts even when
//! the test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use borg_pull_mount::{Limits, Mount, MountOptions, Report, Source};
use borg_pull_sftp::Client;
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
    pub _rt: Runtime,
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
    }
}

/// A directory to mount on and one for test data, in a fresh temp dir.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("borg-pull-mount-")
        .tempdir()
        .expect("temp dir");
    let mountpoint = dir.path().join("mnt");
    (dir, mountpoint)
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
    let rt = runtime();
    let (dir, mountpoint) = scratch();
    let (client, child) = sftp_server(&rt);
    let options = MountOptions::new(path_bytes(remote_root)).with_limits(limits);
    let mount = rt
        .block_on(Mount::start(client, &mountpoint, options))
        .expect("mount");
    Mounted {
        mount: Some(mount),
        _server: Some(child),
        _rt: rt,
        _dir: dir,
    }
}

/// `source` mounted in a fresh temp dir.
pub fn mount_source<S: Source>(source: S, options: MountOptions) -> Mounted {
    let rt = runtime();
    let (dir, mountpoint) = scratch();
    let mount = rt
        .block_on(Mount::start(source, &mountpoint, options))
        .expect("mount");
    Mounted {
        mount: Some(mount),
        _server: None,
        _rt: rt,
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
