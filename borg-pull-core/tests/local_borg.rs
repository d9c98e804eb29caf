//! `borg_pull_core::child` with the real borg: a stopped `borg create` releases its repository
//! lock (SIGTERM first, not SIGKILL), and a `borg serve` runs in a process group of its own and is
//! reaped when stopped. Debian's borg from PATH; a missing borg fails the tests.

use std::path::Path;
use std::time::{Duration, Instant};

use borg_pull_core::child::{BorgCommand, Environment, HowEnded, Input, Output};
use borg_pull_core::ServeConfig;

const DEADLINE: Duration = Duration::from_secs(60);

/// `borg` as the tests find it, failing (never skipping) when it is missing.
fn borg() -> std::path::PathBuf {
    ServeConfig::new("/srv/repo")
        .unwrap()
        .find_program()
        .expect("borg is not installed (the tests need Debian's borgbackup)")
}

/// A borg command with its own base directory (cache, security, config) in `base`.
fn borg_in(base: &Path) -> BorgCommand {
    BorgCommand::new(borg(), Environment::InheritedWithout(vec!["BORG_REPO".into()]))
        .env("BORG_BASE_DIR", base)
        .stdout(Output::Null)
}

/// Field 5 of `/proc/PID/stat`: the process group; `None` once the pid is gone.
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

fn lock_files(repo: &Path) -> Vec<String> {
    std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("lock."))
        .collect()
}

#[tokio::test]
async fn a_stopped_borg_create_ends_on_sigterm_and_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut init = borg_in(dir.path())
        .args(["init", "-e", "none"])
        .args([repo.as_os_str()])
        .spawn()
        .unwrap();
    assert!(
        init.wait().await.unwrap().success(),
        "{:?}",
        init.stderr_tail().await
    );

    // Reads the archive from a stdin we never write: it holds the lock until stopped.
    let mut archive = repo.as_os_str().to_owned();
    archive.push("::stopped");
    let mut create = borg_in(dir.path())
        .args([std::ffi::OsString::from("create"), archive, "-".into()])
        .stdin(Input::Piped)
        .spawn()
        .unwrap();
    let _stdin = create.take_stdin();
    let start = Instant::now();
    while !lock_files(&repo).contains(&"lock.exclusive".to_owned()) {
        assert!(start.elapsed() < DEADLINE, "borg create never took the lock");
        if let Some(status) = create.try_wait().unwrap() {
            panic!(
                "borg create ended early: {status:?} {:?}",
                create.stderr_tail().await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = create.id().unwrap();
    assert_eq!(process_group(pid), Some(pid), "borg runs in a group of its own");

    let ended = create.stop(DEADLINE).await.unwrap();
    assert_eq!(
        ended.how,
        HowEnded::AfterSigterm,
        "{:?}",
        create.stderr_tail().await
    );
    assert_ne!(ended.code(), 0);
    assert_eq!(process_group(pid), None, "reaped");
    assert_eq!(lock_files(&repo), Vec::<String>::new(), "the lock is left behind");
    // The repository takes the next writer at once, no `borg break-lock` needed.
    let mut list = borg_in(dir.path())
        .args(["list", "--lock-wait", "1"])
        .args([repo.as_os_str()])
        .spawn()
        .unwrap();
    assert!(
        list.wait().await.unwrap().success(),
        "{:?}",
        list.stderr_tail().await
    );
}

#[tokio::test]
async fn a_borg_serve_started_ahead_runs_in_its_own_group_and_is_reaped_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(dir.path().join("repo")).unwrap();
    config.borg = borg();
    let serve = config.prestart().unwrap();
    let pid = serve.id().unwrap();
    assert_eq!(process_group(pid), Some(pid));
    let ours = process_group(std::process::id()).unwrap();
    assert_ne!(
        ours, pid,
        "not in our group: a Ctrl-C on our terminal is ours to handle"
    );
    tokio::time::timeout(DEADLINE, serve.stop(Duration::from_secs(10)))
        .await
        .expect("stopping borg serve hung");
    assert_eq!(process_group(pid), None, "borg serve {pid} was not reaped");
}
