//! A run killed with -9 leaves its mount behind (ENOTCONN); the next start removes it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use borg_pull_mount::{Limits, Mount, MountOptions};

use crate::common::{path_bytes, runtime, sftp_server, within, Mounted};

const CHILD_ENV: &str = "BORG_PULL_MOUNT_TEST_STALE_CHILD";
const READY: &str = "borg-pull-mount-test: mounted";

/// Not a test of its own: the process `a_stale_mount_is_removed_by_the_next_start` kills.
#[test]
#[ignore = "run as a child process by stale::a_stale_mount_is_removed_by_the_next_start"]
fn stale_child_mounts_and_waits_to_be_killed() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (tree, mountpoint) = spec.split_once('\n').expect("tree\\nmountpoint");
    let rt = runtime();
    let (client, _server) = sftp_server(&rt);
    let options = MountOptions::new(tree.as_bytes().to_vec());
    let mount = rt
        .block_on(Mount::start(client, mountpoint, options))
        .expect("mount");
    println!("{READY}");
    // Bounded: the parent kills us long before this ends.
    std::thread::sleep(Duration::from_secs(120));
    drop(mount);
}

/// Lazily unmounts a path when dropped (nothing there: nothing done).
struct Detach(std::path::PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn a_stale_mount_is_removed_by_the_next_start() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("file"), b"served\n").unwrap();
    let mountpoint = data.path().join("mnt");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stale::stale_child_mounts_and_waits_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{}\n{}", tree.display(), mountpoint.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(60));
    // From here on the killed child's mount is gone when the test ends, passed or failed.
    let _stale = Detach(mountpoint.clone());
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    ready.expect("the child mounted");

    let probe = mountpoint.clone();
    let stale = within(Duration::from_secs(30), move || {
        std::fs::metadata(&probe).map(|_| ())
    });
    assert_eq!(
        stale.unwrap_err().raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error()),
        "a killed mount answers ENOTCONN"
    );

    let rt = runtime();
    let (client, server) = sftp_server(&rt);
    let options = MountOptions::new(path_bytes(&tree)).with_limits(Limits::default());
    let mount = rt
        .block_on(Mount::start(client, &mountpoint, options))
        .expect("start over the stale mount");
    let mut mounted = Mounted {
        mount: Some(mount),
        _server: Some(server),
        rt: Some(rt),
        _dir: tempfile::tempdir().unwrap(),
    };
    let file = mountpoint.join("file");
    assert_eq!(
        within(Duration::from_secs(30), move || std::fs::read(file).unwrap()),
        b"served\n"
    );
    mounted.stop();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mountpoint.to_str().unwrap()),
        "neither mount is left: {mounts}"
    );
}
