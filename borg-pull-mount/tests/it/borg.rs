//! Debian's borg backs up a tree through the mount: extracted, it is the tree byte for byte; run
//! again, every file comes from borg's files cache.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use borg_pull_mount::Limits;

use crate::common::{mount_sftp, mount_sftp_through, path_bytes, require, within, Counting};
use crate::tree::{assert_same_tree, build_tree};

const BORG: &str = "/usr/bin/borg";

/// borg with its state (cache, config, keys, security) in the test's temp dir.
fn borg(base: &Path, cwd: &Path, args: &[&OsStr]) -> Output {
    let output = Command::new(require(BORG))
        .args(args)
        .current_dir(cwd)
        .env("BORG_BASE_DIR", base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .output()
        .expect("run borg");
    assert!(
        output.status.success(),
        "borg {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The `--list` lines of a create (borg logs them to stderr): status letter and path.
fn listed(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| {
            line.len() > 2 && line.as_bytes()[1] == b' ' && line.as_bytes()[0].is_ascii_uppercase()
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn borg_create_through_the_mount_extracts_to_the_same_tree_and_reruns_from_the_files_cache() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    build_tree(&tree);
    // borg never keeps the files with the newest mtime in its files cache (they might still be
    // changing): one file is the newest on purpose, so that every other one must hit the cache.
    fs::write(tree.join("newest"), b"changes every run\n").unwrap();
    let newest = fs::File::options().write(true).open(tree.join("newest")).unwrap();
    newest
        .set_modified(SystemTime::now() - Duration::from_secs(10))
        .unwrap();
    drop(newest);

    let (base, repo, out) = (
        data.path().join("borg"),
        data.path().join("repo"),
        data.path().join("out"),
    );
    fs::create_dir_all(&base).unwrap();
    fs::create_dir_all(&out).unwrap();
    borg(
        &base,
        data.path(),
        &["init".as_ref(), "--encryption=none".as_ref(), repo.as_os_str()],
    );

    let mut mounted = mount_sftp(&tree, Limits::default());
    let at = mounted.at().to_path_buf();
    let create = |archive: &str| {
        let (base, at) = (base.clone(), at.clone());
        let target = format!("{}::{archive}", repo.display());
        within(Duration::from_secs(300), move || {
            let args = [
                "create",
                "--files-cache=mtime,size",
                "--list",
                "--filter=AME",
                &target,
                ".",
            ];
            borg(&base, &at, &args.map(OsStr::new))
        })
    };

    let first = listed(&create("first"));
    assert!(
        first.contains(&"A big.bin".to_owned()),
        "first run adds the files: {first:?}"
    );
    assert!(first.len() >= 10, "first run lists every file: {first:?}");

    let second = listed(&create("second"));
    assert_eq!(
        second,
        ["A newest"],
        "second run: all but the newest file from the files cache"
    );
    let report = mounted.stop();
    assert_eq!(report, Default::default(), "nothing hit a bound");

    let archive = format!("{}::first", repo.display());
    borg(&base, &out, &["extract".as_ref(), OsStr::new(&archive)]);
    assert_same_tree(&tree, &out);
    // The hole came back as a hole-or-zeros file with the same bytes; names came back as bytes.
    assert!(out.join(OsStr::from_bytes(b"caf\xe9 not utf-8")).exists());
}

/// What borg's reads cost over SFTP: a file under one chunk is one READ (its end answered from
/// the listing), a bigger one a READ per chunk, each asked once.
#[test]
fn borg_create_reads_each_small_file_with_one_sftp_read() {
    let data = tempfile::tempdir().unwrap();
    let tree = data.path().join("tree");
    fs::create_dir_all(tree.join("dir")).unwrap();
    let chunk = u64::from(borg_pull_mount::limits::READ_CHUNK);
    let mut expected = Vec::new();
    for index in 0..200u64 {
        // Sizes from 0 to just under a chunk, spread out.
        let len = (index * 7919) % chunk;
        let name = format!("dir/small-{index}");
        fs::write(tree.join(&name), crate::tree::pseudo_random(len as usize, index)).unwrap();
        // Even an empty file is read once: listed empty, it may have grown since.
        expected.push((name, 1));
    }
    let big = 3 * chunk * 5 + 17;
    fs::write(tree.join("big"), crate::tree::pseudo_random(big as usize, 1)).unwrap();
    expected.push(("big".to_owned(), big.div_ceil(chunk) as usize));

    let (base, repo) = (data.path().join("borg"), data.path().join("repo"));
    fs::create_dir_all(&base).unwrap();
    borg(
        &base,
        data.path(),
        &["init".as_ref(), "--encryption=none".as_ref(), repo.as_os_str()],
    );
    let mut reads = None;
    let mut mounted = mount_sftp_through(&tree, Limits::default(), |client| {
        let counting = Counting::new(client);
        reads = Some(counting.reads.clone());
        counting
    });
    let reads = reads.expect("the client was wrapped");
    let (at, target) = (mounted.at().to_path_buf(), format!("{}::first", repo.display()));
    within(Duration::from_secs(300), move || {
        let args = ["create", "--files-cache=mtime,size", &target, "."];
        borg(&base, &at, &args.map(OsStr::new))
    });
    assert_eq!(mounted.stop(), Default::default(), "nothing hit a bound");
    let reads = reads.lock().unwrap().clone();
    let root = path_bytes(&tree);
    let mut wrong = Vec::new();
    for (name, want) in &expected {
        let mut path = root.clone();
        path.push(b'/');
        path.extend_from_slice(name.as_bytes());
        let got = reads.get(&path).copied().unwrap_or(0);
        if got != *want {
            wrong.push(format!("{name}: {got} reads, {want} expected"));
        }
    }
    let total: usize = reads.values().sum();
    eprintln!("{total} SFTP reads for {} files", expected.len());
    assert!(wrong.is_empty(), "{wrong:#?}");
}
