//! The tree a real sftp-server serves appears through the mount as it is on disk.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use borg_pull_mount::Limits;

use crate::common::{mount_sftp, within};

/// Every kind of entry borg archives from such a mount, with owners, modes and times to check.
pub fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("small.txt"), b"hello\n").unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    fs::write(
        root.join(OsStr::from_bytes(b"caf\xe9 not utf-8")),
        b"latin-1 name\n",
    )
    .unwrap();
    fs::write(root.join("new\nline"), b"").unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(root.join("big.bin"), pseudo_random(20 * 1024 * 1024 + 12345, 7)).unwrap();
    let mut sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(48 * 1024 * 1024).unwrap();
    sparse.seek(SeekFrom::Start(40 * 1024 * 1024)).unwrap();
    sparse.write_all(b"data in the middle of a hole").unwrap();
    drop(sparse);
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("secret"), b"s3cret\n").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("small.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../../small.txt", root.join("a/b/up")).unwrap();
    let status = Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(status.success(), "mkfifo failed");
    // Distinct times in the past, whole seconds (SFTP carries seconds), files and links alike.
    for (index, entry) in walk(root).keys().rev().enumerate() {
        let path = root.join(OsStr::from_bytes(entry));
        let when = 1_600_000_000 + index as i64 * 3_600;
        let stamp = rustix::fs::Timespec {
            tv_sec: when,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: stamp,
            last_modification: stamp,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// Deterministic bytes that do not compress or dedupe into nothing.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// What is compared of each entry (SFTP carries these; not ctime, inode numbers, link counts).
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    kind: &'static str,
    mode: u32,
    size: Option<u64>,
    mtime: i64,
    uid: u32,
    gid: u32,
    target: Option<PathBuf>,
}

/// Every entry below `root` by relative path (bytes), bounded by the tree's size.
pub fn walk(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut seen = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    let mut steps = 0;
    while let Some(relative) = pending.pop() {
        steps += 1;
        assert!(steps < 10_000, "walk of {} does not end", root.display());
        for entry in fs::read_dir(root.join(&relative)).unwrap() {
            let entry = entry.unwrap();
            let path = relative.join(entry.file_name());
            let meta = fs::symlink_metadata(root.join(&path)).unwrap();
            let kind = match meta.file_type() {
                t if t.is_dir() => "dir",
                t if t.is_symlink() => "symlink",
                t if t.is_fifo() => "fifo",
                t if t.is_file() => "file",
                _ => "other",
            };
            let target = (kind == "symlink").then(|| fs::read_link(root.join(&path)).unwrap());
            seen.insert(
                path.as_os_str().as_bytes().to_vec(),
                Seen {
                    kind,
                    mode: meta.mode() & 0o7777,
                    size: (kind == "file" || kind == "symlink").then_some(meta.len()),
                    mtime: meta.mtime(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    target,
                },
            );
            if kind == "dir" {
                pending.push(path);
            }
        }
    }
    seen
}

/// Both trees have the same entries with the same metadata and the same file contents.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let want = walk(expected);
    let got = walk(actual);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "names differ"
    );
    for (name, seen) in &want {
        assert_eq!(
            Some(seen),
            got.get(name),
            "metadata of {}",
            String::from_utf8_lossy(name)
        );
        if seen.kind == "file" {
            let name = OsStr::from_bytes(name);
            assert_same_bytes(&expected.join(name), &actual.join(name));
        }
    }
}

/// Both files hold the same bytes, compared a MiB at a time (the tests' memory stays small: the
/// hostile-source tests bound the whole process's).
fn assert_same_bytes(expected: &Path, actual: &Path) {
    let (mut a, mut b) = (fs::File::open(expected).unwrap(), fs::File::open(actual).unwrap());
    let (mut block_a, mut block_b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let size = fs::metadata(expected).unwrap().len();
    let mut at = 0u64;
    // One pass per MiB of the expected file, and one more to see both end together.
    for _ in 0..=size.div_ceil(1 << 20) {
        let n = read_block(&mut a, &mut block_a);
        let m = read_block(&mut b, &mut block_b);
        assert!(
            block_a[..n] == block_b[..m],
            "content of {} differs in the MiB at {at} ({n} vs {m} bytes)",
            actual.display()
        );
        if n == 0 {
            return;
        }
        at += n as u64;
    }
    panic!("{} goes on past {size} bytes", actual.display());
}

/// Fills `block` as far as the file goes (bounded: each pass reads at least a byte or ends).
fn read_block(file: &mut fs::File, block: &mut [u8]) -> usize {
    use std::io::Read;
    let mut filled = 0;
    for _ in 0..block.len() {
        match file.read(&mut block[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
        if filled == block.len() {
            break;
        }
    }
    filled
}

#[test]
fn the_tree_appears_with_its_names_metadata_and_bytes() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    build_tree(&tree);
    let mut mounted = mount_sftp(&tree, Limits::default());
    let (at, expected) = (mounted.at().to_path_buf(), tree.clone());
    within(Duration::from_secs(120), move || assert_same_tree(&expected, &at));
    let report = mounted.stop();
    assert_eq!(report, Default::default(), "nothing hit a bound");
}

#[test]
fn symlinks_read_as_links_and_fifos_as_fifos() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    build_tree(&tree);
    let mounted = mount_sftp(&tree, Limits::default());
    let at = mounted.at().to_path_buf();
    within(Duration::from_secs(60), move || {
        assert_eq!(
            fs::read_link(at.join("a/b/up")).unwrap(),
            Path::new("../../small.txt")
        );
        assert_eq!(
            fs::read_link(at.join("dangling")).unwrap(),
            Path::new("/nonexistent/target")
        );
        assert!(fs::symlink_metadata(at.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // Followed through the mount, the link reaches the file in the mount.
        assert_eq!(fs::read(at.join("link")).unwrap(), b"hello\n");
    });
}

#[test]
fn xattr_probes_find_a_file_system_without_xattrs() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"x").unwrap();
    let mounted = mount_sftp(&tree, Limits::default());
    let file = mounted.at().join("f");
    within(Duration::from_secs(60), move || {
        // The first call of each kind reaches the mount, the later ones only the kernel, which
        // remembered the answer: both must say "not supported" (tar, rsync and borg then skip
        // xattrs), and "no ACL" for an ACL (the kernel's own answer without ACL support).
        for _ in 0..2 {
            let mut value = [0u8; 64];
            let got = rustix::fs::lgetxattr(&file, "user.borg-pull-test", &mut value);
            assert_eq!(got, Err(rustix::io::Errno::NOTSUP));
            let got = rustix::fs::lgetxattr(&file, "system.posix_acl_access", &mut value);
            assert_eq!(got, Err(rustix::io::Errno::NODATA));
            let mut names = [0u8; 64];
            assert_eq!(
                rustix::fs::llistxattr(&file, &mut names),
                Err(rustix::io::Errno::NOTSUP)
            );
        }
    });
}

/// Counts fuser's "[Not Implemented]" warnings: what it logs for each call a file system leaves
/// to fuser's defaults.
struct NotImplemented;

static NOT_IMPLEMENTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl log::Log for NotImplemented {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.args().to_string().contains("[Not Implemented]") {
            eprintln!("fuser: {}", record.args());
            NOT_IMPLEMENTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

#[test]
fn calls_the_mount_does_not_support_are_answered_at_once_and_quietly() {
    let _ = log::set_logger(&NotImplemented).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"some bytes").unwrap();
    let mounted = mount_sftp(&tree, Limits::default());
    let at = mounted.at().to_path_buf();
    within(Duration::from_secs(60), move || {
        let file = fs::File::open(at.join("f")).unwrap();
        // borg asks every file for its flags: SFTP carries none.
        assert_eq!(rustix::fs::ioctl_getflags(&file), Err(rustix::io::Errno::NOTTY));
        // Seeking for data and holes, polling, syncing: answered as for a file without holes.
        assert_eq!(rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0)), Ok(0));
        assert_eq!(rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)), Ok(10));
        let mut fds = [rustix::event::PollFd::new(&file, rustix::event::PollFlags::IN)];
        assert_eq!(rustix::event::poll(&mut fds, None), Ok(1));
        assert_eq!(rustix::fs::fsync(&file), Ok(()));
        assert_eq!(fs::read(at.join("f")).unwrap(), b"some bytes");
    });
    assert_eq!(
        NOT_IMPLEMENTED.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "fuser logged calls left to its defaults"
    );
}

#[test]
fn writes_are_refused_as_a_read_only_file_system() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"original").unwrap();
    let mounted = mount_sftp(&tree, Limits::default());
    let at = mounted.at().to_path_buf();
    within(Duration::from_secs(60), move || {
        let erofs = Some(rustix::io::Errno::ROFS.raw_os_error());
        assert_eq!(fs::write(at.join("new"), b"x").unwrap_err().raw_os_error(), erofs);
        let open = fs::OpenOptions::new().write(true).open(at.join("f"));
        assert_eq!(open.unwrap_err().raw_os_error(), erofs);
        assert_eq!(fs::create_dir(at.join("d")).unwrap_err().raw_os_error(), erofs);
        assert_eq!(fs::remove_file(at.join("f")).unwrap_err().raw_os_error(), erofs);
    });
    assert_eq!(fs::read(tree.join("f")).unwrap(), b"original");
}

#[test]
fn the_mount_point_is_private_and_mounted_read_only_nosuid_nodev_noexec() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let mounted = mount_sftp(&tree, Limits::default());
    let at = mounted.at().to_path_buf();
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|line| line.split(' ').nth(1) == Some(at.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in /proc/self/mounts", at.display()));
    let options: Vec<&str> = line.split(' ').nth(3).unwrap().split(',').collect();
    for wanted in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&wanted), "{wanted} missing in {line}");
    }
    assert!(!options.contains(&"allow_other"), "allow_other in {line}");
    let mut mounted = mounted;
    mounted.stop();
    let meta = fs::metadata(&at).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700, "mount point mode");
    assert!(
        !fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(at.to_str().unwrap()),
        "unmounted"
    );
}
