//! Retention after a create, against the real borg (1.2) and stand-in scripts: prune keeps what
//! borg and the calendar say, compact only after a good prune, check by runs and by days, the
//! passphrase only in the environment, and a hanging borg stopped at its deadline.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use borg_pull_fleet::config::PassphraseSource;
use borg_pull_fleet::limits::BorgLimits;
use borg_pull_fleet::retention::{
    after_create, after_create_observed, after_create_with, archive_ids, archive_ids_with, is_configured,
    CheckPolicy, Retention, RetentionResult, SkipReason, Step,
};
use borg_pull_fleet::state::ClientState;

/// 2025-11-23 12:00 UTC; the archives are one a day from here to 2026-01-01, 40 in all.
const FIRST_DAY: u64 = 1_763_899_200;

fn policy() -> Retention {
    Retention {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(6),
        ..Retention::default()
    }
}

fn names(list: &str) -> BTreeSet<String> {
    list.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test]
async fn prune_keeps_what_borg_and_the_calendar_say() {
    let dir = tempfile::tempdir().unwrap();
    let days: Vec<(String, u64)> = (0..40)
        .map(|i| {
            let t = FIRST_DAY + i * 86_400;
            (format!("d-{}", &utc(t)[..10]), t)
        })
        .collect();
    let archives: Vec<(&str, u64)> = days.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(archives.last().unwrap().0, "d-2026-01-01");
    let repo = repo_with(dir.path(), "repo", &archives);
    let repo_s = repo.to_str().unwrap();

    // By hand, for 12:00 UTC archives (the same calendar day in every zone from -11 to +11):
    // daily 7: Jan 1 back to Dec 26. Weekly 4 (ISO weeks, a week whose newest archive is already
    // kept is used up): Dec 29-Jan 4 and Dec 22-28 are, so Sun Dec 21, 14, 7 and Nov 30. Monthly 6:
    // January and December are used up by daily, November by Nov 30; fewer than 6 months found,
    // so borg also keeps the oldest archive, Nov 23.
    let by_hand: BTreeSet<String> = [
        "2026-01-01",
        "2025-12-31",
        "2025-12-30",
        "2025-12-29",
        "2025-12-28",
        "2025-12-27",
        "2025-12-26",
        "2025-12-21",
        "2025-12-14",
        "2025-12-07",
        "2025-11-30",
        "2025-11-23",
    ]
    .iter()
    .map(|d| format!("d-{d}"))
    .collect();

    let dry_run = borg(
        &[
            "prune",
            "--dry-run",
            "--list",
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4",
            "--keep-monthly",
            "6",
            repo_s,
        ],
        &[],
    );
    let borg_keeps: BTreeSet<String> = dry_run
        .lines()
        .filter_map(|l| l.strip_prefix("Keeping archive")?.split_once("):"))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(borg_keeps, by_hand, "borg prune --dry-run says:\n{dry_run}");

    let mut client = client("web1", &repo);
    client.prune = policy();
    client.compact = true;
    let server = server(borg_bin(), &dir.path().join("state"));
    let mut state = ClientState::default();
    let outcome = after_create(&client, &server, &mut state).await;
    assert_eq!(outcome.errors, Vec::<String>::new());
    assert_eq!(
        (outcome.pruned, outcome.compacted, outcome.checked),
        (Some(0), Some(0), None)
    );
    assert_eq!(names(&borg(&["list", "--short", repo_s], &[])), by_hand);
    assert_eq!(state.runs_since_check, 1);
    assert_eq!(state.last_check, None);
}

/// A stand-in borg that logs its subcommand and exits with `rc` for `failing`.
fn recording_borg(dir: &Path, failing: &str, rc: i32) -> std::path::PathBuf {
    let log = dir.join("calls");
    stand_in(
        dir,
        "borg",
        &format!(
            "echo \"$1\" >> '{}'\n[ \"$1\" = '{failing}' ] && exit {rc}\nexit 0",
            log.display()
        ),
    )
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

mod compact_runs_only_after_a_successful_prune {
    use super::*;

    #[tokio::test]
    async fn when_nothing_fails() {
        case("none", 0, &["prune", "compact"]).await;
    }

    /// A warning: the prune was done.
    #[tokio::test]
    async fn when_prune_warns() {
        case("prune", 1, &["prune", "compact"]).await;
    }

    #[tokio::test]
    async fn not_when_prune_fails() {
        case("prune", 2, &["prune"]).await;
    }

    #[tokio::test]
    async fn when_compact_fails() {
        case("compact", 2, &["prune", "compact"]).await;
    }

    /// No keep rule: neither prune (borg would refuse) nor compact.
    #[tokio::test]
    async fn neither_without_a_keep_rule() {
        let dir = tempfile::tempdir().unwrap();
        let borg = recording_borg(dir.path(), "none", 0);
        let mut client = client("c", &dir.path().join("repo"));
        client.compact = true;
        let outcome = after_create(&client, &server(&borg, dir.path()), &mut ClientState::default()).await;
        assert!(calls(dir.path()).is_empty());
        assert_eq!(outcome, Default::default());
    }

    /// The borg calls when `failing` (a step, or "none") exits with `rc`.
    async fn case(failing: &str, rc: i32, expected: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let borg = recording_borg(dir.path(), failing, rc);
        let mut client = client("c", &dir.path().join("repo"));
        client.prune = policy();
        client.compact = true;
        let outcome = after_create(&client, &server(&borg, dir.path()), &mut ClientState::default()).await;
        assert_eq!(calls(dir.path()), expected, "{failing} exits {rc}");
        assert_eq!(outcome.errors.len(), usize::from(rc >= 2), "{outcome:?}");
        if failing == "prune" && rc == 2 {
            assert_eq!((outcome.pruned, outcome.compacted), (Some(2), None));
            assert!(
                outcome.errors[0].starts_with("borg prune exited with 2"),
                "{outcome:?}"
            );
        }
    }
}

#[tokio::test]
async fn check_runs_every_n_runs_and_when_the_last_is_n_days_old() {
    let dir = tempfile::tempdir().unwrap();
    let borg = recording_borg(dir.path(), "none", 0);
    let server = server(&borg, dir.path());
    let mut client = client("c", &dir.path().join("repo"));
    client.check = CheckPolicy {
        every_runs: Some(3),
        every_days: None,
    };
    let mut state = ClientState::default();
    let mut checked_on = Vec::new();
    for run in 1..=7 {
        let outcome = after_create(&client, &server, &mut state).await;
        if outcome.checked.is_some() {
            checked_on.push(run);
            assert_eq!(state.runs_since_check, 0);
            let (at, passed) = state.last_check.unwrap();
            assert!(passed && now() - at < 60);
        }
    }
    assert_eq!(checked_on, [3, 6]);
    assert_eq!(state.runs_since_check, 1);

    client.check = CheckPolicy {
        every_runs: None,
        every_days: Some(7),
    };
    let mut state = ClientState {
        last_check: Some((now() - 86_400, true)),
        ..ClientState::default()
    };
    assert_eq!(after_create(&client, &server, &mut state).await.checked, None);
    state.last_check = Some((now() - 8 * 86_400, true));
    assert_eq!(after_create(&client, &server, &mut state).await.checked, Some(0));
    assert!(now() - state.last_check.unwrap().0 < 60);

    // A failing check is recorded as failed; the count starts again.
    let other = dir.path().join("failing");
    std::fs::create_dir(&other).unwrap();
    let failing = recording_borg(&other, "check", 2);
    state.last_check = None;
    let outcome = after_create(&client, &crate::common::server(&failing, dir.path()), &mut state).await;
    assert_eq!(outcome.checked, Some(2));
    assert_eq!(state.last_check.map(|c| c.1), Some(false));
    assert_eq!(state.runs_since_check, 0);
}

/// Every process whose command line names `needle`: (pid, argv bytes, environment bytes).
fn processes_naming(needle: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            found.push((pid, cmdline, environ));
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn encrypted_repository_with_passphrase_file_and_command_never_in_argv() {
    let dir = tempfile::tempdir().unwrap();
    let passphrase = "correct horse battery staple 7f3a";
    let pass_file = dir.path().join("passphrase");
    secret_file(&pass_file, &format!("{passphrase}\n"));
    let repo = dir.path().join("secret-repo");
    let env = [("BORG_PASSPHRASE", passphrase)];
    borg(&["init", "-e", "repokey", repo.to_str().unwrap()], &env);
    add_archives(&repo, &[("a1", FIRST_DAY), ("a2", FIRST_DAY + 86_400)], &env);

    let server = server(borg_bin(), dir.path());
    let sources = [
        PassphraseSource::File(pass_file.clone()),
        PassphraseSource::Command(format!("cat '{}'", pass_file.display())),
    ];
    for source in sources {
        let mut client = client("enc", &repo);
        client.passphrase = source.clone();
        client.prune = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };
        client.compact = true;
        client.check = CheckPolicy {
            every_runs: Some(1),
            every_days: None,
        };

        // Watch every process that names the repository while borg runs.
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (done, needle, secret) = (
                done.clone(),
                repo.to_str().unwrap().to_owned(),
                passphrase.to_owned(),
            );
            std::thread::spawn(move || {
                let (mut seen, mut in_environ) = (0, 0);
                while !done.load(Ordering::Relaxed) {
                    for (pid, cmdline, environ) in processes_naming(needle.as_bytes()) {
                        if !contains(&cmdline, b"borg") {
                            continue;
                        }
                        seen += 1;
                        assert!(
                            !contains(&cmdline, secret.as_bytes()),
                            "passphrase in the argv of {pid}"
                        );
                        in_environ += usize::from(contains(&environ, secret.as_bytes()));
                    }
                    // Every process: the passphrase is in nobody's argv (a passcommand's neither).
                    if let Some((pid, cmdline, _)) = processes_naming(secret.as_bytes()).pop() {
                        panic!(
                            "passphrase in the argv of {pid}: {}",
                            String::from_utf8_lossy(&cmdline)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (seen, in_environ)
            })
        };
        let mut state = ClientState::default();
        let outcome = after_create(&client, &server, &mut state).await;
        done.store(true, Ordering::Relaxed);
        let (seen, in_environ) = watcher.join().unwrap();
        assert_eq!(outcome.errors, Vec::<String>::new(), "{source:?}");
        assert_eq!(
            (outcome.pruned, outcome.compacted, outcome.checked),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!(state.last_check.map(|c| c.1), Some(true));
        assert!(seen > 0, "the watcher never saw borg run");
        match source {
            PassphraseSource::File(_) => {
                assert!(in_environ > 0, "BORG_PASSPHRASE never seen in borg's environment")
            }
            _ => assert_eq!(
                in_environ, 0,
                "a passcommand puts no passphrase in the environment"
            ),
        }
        let left = borg(&["list", "--short", repo.to_str().unwrap()], &env);
        assert_eq!(left.trim(), "a2");
    }

    // A wrong passphrase: borg fails, the outcome says so, nothing is compacted.
    let wrong = dir.path().join("wrong");
    secret_file(&wrong, "not it\n");
    let mut client = client("enc", &repo);
    client.passphrase = PassphraseSource::File(wrong);
    client.prune = policy();
    client.compact = true;
    let outcome = after_create(&client, &server, &mut ClientState::default()).await;
    assert_eq!(
        (outcome.pruned, outcome.compacted),
        (Some(2), None),
        "{outcome:?}"
    );
}

/// A passphrase file others may read is refused before borg runs (as for `pull`), and said so.
#[tokio::test]
async fn a_passphrase_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let borg = recording_borg(dir.path(), "none", 0);
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "secret\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut client = client("c", &dir.path().join("repo"));
    client.passphrase = PassphraseSource::File(pass);
    client.prune = policy();
    client.compact = true;
    let outcome = after_create(&client, &server(&borg, dir.path()), &mut ClientState::default()).await;
    assert!(calls(dir.path()).is_empty(), "borg ran");
    assert_eq!((outcome.pruned, outcome.compacted), (None, None));
    assert!(
        outcome.errors[0].starts_with("borg prune did not run: cannot read the repository passphrase"),
        "{outcome:?}"
    );
}

fn alive(pid: &str) -> bool {
    // Gone, or a zombie waiting for whoever inherited it: not running either way.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

async fn wait_gone(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

mod a_hanging_borg_is_stopped_at_the_timeout {
    use super::*;

    #[tokio::test]
    async fn that_ends_on_sigterm() {
        case("", 143).await;
    }

    /// Killed after the grace (its sleep ignores SIGTERM too).
    #[tokio::test]
    async fn that_ignores_sigterm() {
        case("trap '' TERM", 137).await;
    }

    /// A stand-in borg with `trap` before it waits for a sleep; `rc`: what the prune ends with.
    async fn case(trap: &str, rc: i32) {
        let limits = BorgLimits {
            prune: Duration::from_millis(500),
            kill_grace: Duration::from_millis(500),
            ..BorgLimits::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let borg = stand_in(
            dir.path(),
            "borg",
            &format!(
                "{trap}\nsleep 1000 &\necho $! > '{}'\nwait\nwait",
                pid_file.display()
            ),
        );
        let mut client = client("slow", &dir.path().join("repo"));
        client.prune = policy();
        client.compact = true;
        let started = Instant::now();
        let outcome = after_create_with(
            &client,
            &server(&borg, dir.path()),
            &mut ClientState::default(),
            &limits,
        )
        .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!((outcome.pruned, outcome.compacted), (Some(rc), None), "{trap:?}");
        assert!(outcome.errors[0].contains("time limit"), "{outcome:?}");
        let sleeper = std::fs::read_to_string(&pid_file).unwrap();
        wait_gone(sleeper.trim()).await;
    }
}

/// After SIGTERM borg's pipes are still read: its last words (a lock being removed) are not
/// lost, and writing them does not fail.
#[tokio::test]
async fn a_stopped_borg_can_still_say_goodbye() {
    let limits = BorgLimits {
        prune: Duration::from_millis(500),
        kill_grace: Duration::from_secs(5),
        ..BorgLimits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let borg = stand_in(
        dir.path(),
        "borg",
        "trap 'sleep 0.2; echo \"removing the lock\" >&2; exit 2' TERM\nsleep 1000 &\nwait",
    );
    let mut client = client("slow", &dir.path().join("repo"));
    client.prune = policy();
    let started = Instant::now();
    let outcome = after_create_with(
        &client,
        &server(&borg, dir.path()),
        &mut ClientState::default(),
        &limits,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for the grace: {:?}",
        started.elapsed()
    );
    assert_eq!(outcome.pruned, Some(2));
    assert!(
        outcome.errors[0].ends_with("(exit code 2): removing the lock"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_cancelled_run_kills_borg() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let borg = stand_in(
        dir.path(),
        "borg",
        &format!(
            "echo $$ > '{0}.sh'\nsleep 1000 &\necho $! > '{0}'\nwait",
            pid_file.display()
        ),
    );
    let mut client = client("slow", &dir.path().join("repo"));
    client.prune = policy();
    let server = server(&borg, dir.path());
    let mut state = ClientState::default();
    let run = after_create(&client, &server, &mut state);
    let cancelled = tokio::time::timeout(Duration::from_millis(700), run).await;
    assert!(cancelled.is_err());
    let sleeper = std::fs::read_to_string(&pid_file).unwrap();
    let shell = std::fs::read_to_string(pid_file.with_extension("sh")).unwrap();
    wait_gone(sleeper.trim()).await;
    wait_gone(shell.trim()).await;
}

/// What `run` compares before and after a client's job, read by the real borg: a new archive
/// counts, a deleted one does not (a job that only deleted must not trigger a prune), and an
/// encrypted repository is read with the passphrase file.
#[tokio::test]
async fn archive_ids_tell_whether_a_job_created_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let passphrase = "ids 'secret' $(x)";
    let pass_file = dir.path().join("passphrase");
    secret_file(&pass_file, &format!("{passphrase}\n"));
    let repo = dir.path().join("repo");
    let env = [("BORG_PASSPHRASE", passphrase)];
    borg(&["init", "-e", "repokey", repo.to_str().unwrap()], &env);
    let server = server(borg_bin(), dir.path());
    let mut client = client("ids", &repo);
    client.passphrase = PassphraseSource::File(pass_file);

    let empty = archive_ids(&client, &server).await.unwrap();
    assert!(empty.is_empty());
    add_archives(&repo, &[("a1", FIRST_DAY), ("a2", FIRST_DAY + 86_400)], &env);
    let two = archive_ids(&client, &server).await.unwrap();
    assert_eq!((two.len(), empty.new_in(&two), two.new_in(&two)), (2, 2, 0));
    let target = format!("{}::a2", repo.display());
    borg(&["delete", &target], &env);
    let one = archive_ids(&client, &server).await.unwrap();
    assert_eq!(
        (one.len(), two.new_in(&one)),
        (1, 0),
        "a deletion is no new archive"
    );
    // An older timestamp than every archive is still a new archive.
    add_archives(&repo, &[("old", FIRST_DAY - 86_400)], &env);
    let again = archive_ids(&client, &server).await.unwrap();
    assert_eq!(one.new_in(&again), 1);

    // A wrong passphrase: an error naming borg's complaint, never a guess.
    let wrong = dir.path().join("wrong");
    secret_file(&wrong, "not it\n");
    client.passphrase = PassphraseSource::File(wrong);
    let e = archive_ids(&client, &server).await.unwrap_err();
    assert!(e.starts_with("borg list exited with 2"), "{e}");
}

/// Whatever a stand-in borg prints instead of ids is refused, and a hanging one is stopped.
#[tokio::test]
async fn archive_ids_refuse_what_is_not_an_id_and_stop_a_hanging_borg() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = stand_in(dir.path(), "borg", "echo 'not an id'");
    let client = client("c", &dir.path().join("repo"));
    let e = archive_ids(&client, &server(&garbage, dir.path()))
        .await
        .unwrap_err();
    assert!(e.contains("where an archive id was expected"), "{e}");

    let other = dir.path().join("hang");
    std::fs::create_dir(&other).unwrap();
    let hanging = stand_in(&other, "borg", "exec sleep 1000");
    let limits = BorgLimits {
        list: Duration::from_millis(300),
        kill_grace: Duration::from_millis(300),
        ..BorgLimits::default()
    };
    let started = Instant::now();
    let e = archive_ids_with(&client, &server(&hanging, dir.path()), &limits)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("ran longer than"), "{e}");
}

/// The steps are announced as they start (the live display's phases), in borg's order.
#[tokio::test]
async fn retention_steps_are_announced_as_they_start() {
    let dir = tempfile::tempdir().unwrap();
    let borg = recording_borg(dir.path(), "none", 0);
    let mut client = client("c", &dir.path().join("repo"));
    assert!(!is_configured(&client));
    client.prune = policy();
    client.compact = true;
    client.check = CheckPolicy {
        every_runs: Some(1),
        every_days: None,
    };
    assert!(is_configured(&client));
    let seen = std::sync::Mutex::new(Vec::new());
    let outcome = after_create_observed(
        &client,
        &server(&borg, dir.path()),
        &mut ClientState::default(),
        &BorgLimits::default(),
        &|step| seen.lock().unwrap().push(step),
    )
    .await;
    assert_eq!(*seen.lock().unwrap(), [Step::Prune, Step::Compact, Step::Check]);
    assert_eq!(calls(dir.path()), ["prune", "compact", "check"]);
    // How the summary and the logs say it.
    let ran = RetentionResult::Ran(outcome);
    assert_eq!(ran.to_string(), "prune_rc=0 compact_rc=0 check_rc=0");
    assert_eq!(
        RetentionResult::Skipped(SkipReason::NoNewArchive).to_string(),
        "skipped: no new archive"
    );
    assert_eq!(RetentionResult::NotConfigured.to_string(), "not configured");
    assert_eq!(
        serde_json::to_value(&ran).unwrap(),
        serde_json::json!({"status": "ran", "prune_rc": 0, "compact_rc": 0, "check_rc": 0})
    );
}
