//! A non-root user mounts through Debian's setuid fusermount3 (/dev/fuse may be 0600: the mount
//! must not open it itself), reads a file of a real sftp-server's tree back, and unmounts.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use borg_pull_mount::{Mount, MountOptions};

use crate::common::{require, runtime, sftp_server, within, Mounted};

const USER: &str = "borg-pull-test";
const CHILD_ENV: &str = "BORG_PULL_MOUNT_TEST_USER_CHILD";
const READ: &str = "borg-pull-mount-test: read ";
const READY: &str = "borg-pull-mount-test: mounted";
const UNMOUNTED: &str = "borg-pull-mount-test: unmounted";
const FS_NAME: &str = "user@client:/srv,data";
const REFUSED: &str = "borg-pull-mount-test: refused: ";

/// Not a test of its own: what `a_user_mounts_through_fusermount3` runs as the test user.
#[test]
#[ignore = "run as the test user by user::a_user_mounts_through_fusermount3"]
fn user_child_mounts_reads_and_unmounts() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    assert!(!rustix::process::geteuid().is_root(), "must run as a user");
    let (tree, mountpoint) = spec.split_once('\n').expect("tree\\nmountpoint");
    let rt = runtime();
    let (client, server) = sftp_server(&rt);
    let mut options = MountOptions::new(tree.as_bytes().to_vec());
    // A comma must reach fusermount3 escaped, or it would split the option list.
    options.fs_name = FS_NAME.into();
    let started = rt.block_on(Mount::start(client, mountpoint, options));
    let mount = match started {
        Ok(mount) => mount,
        Err(error) => {
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            panic!("mount as {USER}: {error}: {cause:?}");
        }
    };
    let mut mounted = Mounted {
        mount: Some(mount),
        _server: Some(server),
        rt: Some(rt),
        _dir: tempfile::tempdir().unwrap(),
    };
    let file = Path::new(mountpoint).join("file");
    let read = within(Duration::from_secs(30), move || std::fs::read(file));
    println!(
        "{READ}{}",
        String::from_utf8_lossy(&read.expect("read through the mount"))
    );
    println!("{READY}");
    // Until the parent closes our stdin (it kills us if the test fails first).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    mounted.stop();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {mountpoint} ")),
        "no mount is left: {mounts}"
    );
    println!("{UNMOUNTED}");
}

/// The test user's uid and gid, from /etc/passwd.
fn user_ids(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&name))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .unwrap_or_else(|| panic!("user {name} is missing: create it (scripts/install-deps)"))
}

/// Kills and reaps the child when dropped (a no-op once it has exited).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects lines until one contains `marker` or `deadline` passes; all lines so far returned.
fn lines_until(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    marker: &str,
    deadline: Duration,
) -> bool {
    let started = Instant::now();
    // Bounded by the deadline (each wait is at most what is left of it).
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(marker);
                seen.push(line);
                if found {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Makes `node` a /dev/fuse of `mode`: 0666 as Debian's udev makes it, 0600 as on a machine
/// without udev. It is bind-mounted over /dev/fuse only in the test's own mount namespace, never
/// the machine's.
fn fuse_node(node: &Path, mode: u32) {
    use rustix::fs::{mknodat, stat, FileType, Mode, CWD};
    let device = stat("/dev/fuse")
        .expect("/dev/fuse (load the fuse module)")
        .st_rdev;
    mknodat(
        CWD,
        node,
        FileType::CharacterDevice,
        Mode::RUSR | Mode::WUSR,
        device,
    )
    .unwrap();
    std::fs::set_permissions(node, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The child's mount table (its own mount namespace).
fn mount_line(pid: u32, mountpoint: &Path) -> Option<String> {
    let at = format!(" {} ", mountpoint.display());
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .find(|line| line.contains(&at))
        .map(str::to_owned)
}

/// The test user in a private mount namespace whose /dev/fuse has `mode`, running the ignored
/// test `child_test` on a tree with one file; its mount lives and dies with the namespace, so none
/// outlives the child (killed on drop), passed or failed.
struct AsUser {
    child: Reap,
    lines: mpsc::Receiver<String>,
    uid: u32,
    mountpoint: std::path::PathBuf,
    _data: tempfile::TempDir,
}

impl AsUser {
    fn start(mode: u32, child_test: &str) -> AsUser {
        require("/usr/bin/fusermount3");
        require("/usr/sbin/runuser");
        require("/usr/bin/unshare");
        require("/usr/bin/nsenter");
        let (uid, gid) = user_ids(USER);
        let data = tempfile::Builder::new()
            .prefix("borg-pull-mount-user-")
            .tempdir()
            .unwrap();
        let tree = data.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("file"), b"served by sftp-server").unwrap();
        for path in [data.path(), &tree, &tree.join("file")] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let node = data.path().join("fuse");
        fuse_node(&node, mode);
        let mountpoint = data.path().join("mnt");
        // The test user runs a copy of this binary: the original may sit where only root can
        // reach it (a clone in a 0700 directory).
        let exe = data.path().join("it");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child = Command::new("/usr/bin/unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$0" /dev/fuse && exec /usr/sbin/runuser -u "$1" -- "$2" "$@""#)
            .arg(&node)
            .arg(USER)
            .arg(&exe)
            .args([
                "--exact",
                child_test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}\n{}", tree.display(), mountpoint.display()))
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child as the test user");
        let mut child = Reap(child);
        let stdout = child.0.stdout.take().unwrap();
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        AsUser {
            child,
            lines,
            uid,
            mountpoint,
            _data: data,
        }
    }

    /// Waits (bounded) for the child's exit status.
    fn exit(&mut self) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Not a test of its own: what `a_user_is_told_when_dev_fuse_is_not_open_to_it` runs.
#[test]
#[ignore = "run as the test user by user::a_user_is_told_when_dev_fuse_is_not_open_to_it"]
fn user_child_is_refused_the_device() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (tree, mountpoint) = spec.split_once('\n').expect("tree\\nmountpoint");
    let rt = runtime();
    let (client, _server) = sftp_server(&rt);
    let started = rt.block_on(Mount::start(
        client,
        mountpoint,
        MountOptions::new(tree.as_bytes().to_vec()),
    ));
    let error = started.expect_err("a 0600 /dev/fuse refuses the user");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {mountpoint} ")),
        "nothing mounted: {mounts}"
    );
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    println!("{REFUSED}{error}: {}", cause.unwrap_or_default());
}

#[test]
fn a_user_is_told_when_dev_fuse_is_not_open_to_it() {
    let mut user = AsUser::start(0o600, "user::user_child_is_refused_the_device");
    let mut seen = Vec::new();
    assert!(
        lines_until(&user.lines, &mut seen, REFUSED, Duration::from_secs(60)),
        "the start fails: {seen:?}"
    );
    let said = seen.iter().find(|line| line.contains(REFUSED)).unwrap();
    assert!(
        said.contains("/dev/fuse is not open to this user") && said.contains("chmod 0666 /dev/fuse"),
        "names what is missing and the fix: {said}"
    );
    assert_eq!(
        said.matches("Permission denied").count(),
        1,
        "the cause, once: {said}"
    );
    let status = user.exit();
    assert!(status.is_some_and(|s| s.success()), "child: {status:?} {seen:?}");
}

#[test]
fn a_user_mounts_through_fusermount3() {
    let mut user = AsUser::start(0o666, "user::user_child_mounts_reads_and_unmounts");
    let (pid, uid, mountpoint) = (user.child.0.id(), user.uid, user.mountpoint.clone());
    let mut seen = Vec::new();
    assert!(
        lines_until(&user.lines, &mut seen, READY, Duration::from_secs(60)),
        "the user's mount is ready: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|line| line.ends_with(&format!("{READ}served by sftp-server"))),
        "the file read back through the mount: {seen:?}"
    );

    let line = mount_line(pid, &mountpoint).expect("the mount is listed");
    assert!(line.contains(&format!(" - fuse.borg-pull {FS_NAME} ")), "{line}");
    assert!(
        line.contains(&format!("user_id={uid}")),
        "mounted for the user: {line}"
    );
    assert!(!line.contains("allow_other"), "{line}");
    assert!(line.contains(" ro,"), "{line}");
    // No allow_other: not even root gets in (the kernel refuses before asking us).
    let denied = Command::new("/usr/bin/nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(["--", "/usr/bin/timeout", "30", "/usr/bin/stat", "--"])
        .arg(mountpoint.join("file"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "only the mounting user sees the tree: {denied:?}"
    );

    drop(user.child.0.stdin.take());
    assert!(
        lines_until(&user.lines, &mut seen, UNMOUNTED, Duration::from_secs(60)),
        "the user unmounted through fusermount3: {seen:?}"
    );
    let status = user.exit();
    assert!(status.is_some_and(|s| s.success()), "child: {status:?} {seen:?}");
}
