//! Debian's borg backs up a tree through the mount: extracted, it is the tree byte for byte; run
//! again, every file comes from borg's files cache.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use borg_pull_mount::Limits;

use crate::common::{mount_sftp, require, within};
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
