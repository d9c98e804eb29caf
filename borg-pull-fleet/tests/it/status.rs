//! `status` against real repositories (fresh, stale, empty, missing, encrypted) and their sizes
//! (`borg info`), the Prometheus textfile checked by a strict parser and by Debian's promtool,
//! retention results from real prunes, compacts and checks, and the state store.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use borg_pull_fleet::config::{Fleet, PassphraseSource};
use borg_pull_fleet::limits::BorgLimits;
use borg_pull_fleet::metrics::{
    render, write_textfile, write_textfile_after_pulls, write_textfile_after_run, write_textfile_with_status,
};
use borg_pull_fleet::retention::{after_create_with, CheckPolicy, Retention};
use borg_pull_fleet::state::{ClientState, RunRecord, StateStore, StepRecord, StepResult};
use borg_pull_fleet::status::{status, status_table};
use tokio_util::sync::CancellationToken;

fn fleet(
    server: borg_pull_fleet::config::ServerSettings,
    clients: Vec<borg_pull_fleet::config::Client>,
) -> Fleet {
    Fleet {
        path: PathBuf::from("/nonexistent/fleet.toml"),
        server,
        clients,
        notify: Default::default(),
    }
}

fn record(started: u64, rc: Option<i32>, error: Option<(u8, &str)>) -> RunRecord {
    RunRecord {
        started,
        duration_ms: 12_345,
        archive: Some(format!("arch-{started}")),
        bytes_sent: 987_654,
        borg_rc: rc,
        error: error.map(|(c, m)| (c, m.to_owned())),
    }
}

#[tokio::test]
async fn fresh_stale_empty_missing_and_encrypted_clients() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let fresh_time = now - 3600;
    let fresh = repo_with(
        dir.path(),
        "fresh",
        &[("old", now - 5 * 86_400), ("new", fresh_time)],
    );
    let stale = repo_with(dir.path(), "stale", &[("three-days", now - 3 * 86_400)]);
    let empty = repo_with(dir.path(), "empty", &[]);
    let missing = dir.path().join("missing");
    let passphrase = "s3cret status";
    let enc = dir.path().join("enc");
    borg(
        &["init", "-e", "repokey", enc.to_str().unwrap()],
        &[("BORG_PASSPHRASE", passphrase)],
    );
    add_archives(&enc, &[("e1", now - 7200)], &[("BORG_PASSPHRASE", passphrase)]);
    let pass_file = dir.path().join("pass");
    secret_file(&pass_file, passphrase);

    let state_dir = dir.path().join("state");
    let store = StateStore::open(&state_dir).unwrap();
    store
        .save(
            "fresh",
            &ClientState {
                last_run: Some(record(fresh_time, Some(0), None)),
                last_success: Some(record(fresh_time, Some(0), None)),
                ..ClientState::default()
            },
        )
        .unwrap();
    store
        .save(
            "stale",
            &ClientState {
                last_run: Some(record(
                    now - 600,
                    None,
                    Some((213, "cannot connect to stale.invalid")),
                )),
                ..ClientState::default()
            },
        )
        .unwrap();

    let mut enc_client = client("enc", &enc);
    enc_client.passphrase = PassphraseSource::File(pass_file);
    let fleet = fleet(
        server(borg_bin(), &state_dir),
        vec![
            client("fresh", &fresh),
            client("stale", &stale),
            client("empty", &empty),
            client("missing", &missing),
            enc_client,
        ],
    );
    let statuses = status(&fleet, &store).await;
    let by_name: BTreeMap<&str, _> = statuses.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(
        statuses.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["fresh", "stale", "empty", "missing", "enc"]
    );

    let f = by_name["fresh"];
    assert_eq!(
        (f.newest_archive.as_deref(), f.newest_time, f.stale, &f.error),
        (Some("new"), Some(fresh_time), false, &None)
    );
    let age = f.age.unwrap();
    assert!(
        age >= Duration::from_secs(3600) && age < Duration::from_secs(3700),
        "{age:?}"
    );
    assert_eq!(f.last_run, Some(record(fresh_time, Some(0), None)));

    let s = by_name["stale"];
    assert_eq!(
        (s.newest_archive.as_deref(), s.stale, &s.error),
        (Some("three-days"), true, &None)
    );
    assert!(s.age.unwrap() > s.max_age);
    assert_eq!(s.last_run.as_ref().unwrap().error.as_ref().unwrap().0, 213);

    let e = by_name["empty"];
    assert_eq!(
        (&e.newest_archive, e.newest_time, e.age, e.stale, &e.error),
        (&None, None, None, true, &None)
    );
    assert_eq!(e.last_run, None);

    let m = by_name["missing"];
    assert!(m.stale && m.newest_archive.is_none());
    let error = m.error.as_deref().unwrap();
    assert!(
        error.contains("borg list exited with 2") && error.contains("does not exist"),
        "{error}"
    );

    let x = by_name["enc"];
    assert_eq!(
        (x.newest_archive.as_deref(), x.newest_time, x.stale, &x.error),
        (Some("e1"), Some(now - 7200), false, &None)
    );

    // borg info's sizes for every readable repository; none for the missing one.
    for name in ["fresh", "stale", "empty", "enc"] {
        let size = by_name[name]
            .repository_size
            .unwrap_or_else(|| panic!("no size for {name}"));
        // The empty repository has no archive: borg counts nothing in it.
        let sizes = [
            size.unique_csize,
            size.unique_size,
            size.total_csize,
            size.total_size,
        ];
        for figure in sizes {
            assert_eq!(figure.unwrap() == 0, name == "empty", "{name}: {size:?}");
        }
    }
    assert_eq!(m.repository_size, None);
    // Each archive holds one file whose content is its repository's path (add_archives): the
    // total is that file's size once per archive, however much of it is shared.
    let path_len = |repo: &Path| repo.to_str().unwrap().len() as u64;
    assert_eq!(s.repository_size.unwrap().total_size, Some(path_len(&stale)));
    assert_eq!(f.repository_size.unwrap().total_size, Some(2 * path_len(&fresh)));

    let table = status_table(&statuses);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(
        lines[0].starts_with("CLIENT") && lines[0].contains("MAX AGE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("fresh") && lines[1].contains(" ok "),
        "{table}"
    );
    assert!(
        lines[2].contains("STALE") && lines[2].contains("error 213") && lines[2].contains("cannot connect"),
        "{table}"
    );
    assert!(lines[3].contains("STALE"), "{table}");
    assert!(
        lines[4].contains("UNREADABLE") && lines[4].contains("does not exist"),
        "{table}"
    );
    assert!(lines[5].contains("36h00m"), "{table}");

    let json: serde_json::Value = serde_json::to_value(&statuses).unwrap();
    assert_eq!(json[0]["name"], "fresh");
    assert_eq!(json[0]["newest_time"], fresh_time);
    assert_eq!(json[0]["max_age_seconds"], 36 * 3600);
    assert!(json[0]["age_seconds"].as_u64().unwrap() >= 3600);
    assert_eq!(json[2]["age_seconds"], serde_json::Value::Null);
    assert_eq!(json[3]["stale"], true);
    assert!(!json.to_string().contains(passphrase));
    // Errors have one shape in every JSON output: {"code", "message"}.
    assert_eq!(
        json[1]["last_run"]["error"],
        serde_json::json!({"code": 213, "message": "cannot connect to stale.invalid"})
    );
    assert_eq!(json[0]["last_run"]["error"], serde_json::Value::Null);
    assert!(json[0]["repository_size"]["unique_csize"].as_u64().unwrap() > 0);
    assert_eq!(json[3]["repository_size"], serde_json::Value::Null);

    // The textfile, with the newest archive times status read.
    let prom_dir = dir.path().join("textfile");
    std::fs::create_dir(&prom_dir).unwrap();
    let prom = prom_dir.join("borg_pull.prom");
    write_textfile_with_status(&prom, &fleet, &store, &statuses).unwrap();
    let text = std::fs::read_to_string(&prom).unwrap();
    let samples = parse_exposition(&text);
    let value = |metric: &str, client: &str| {
        samples
            .iter()
            .find(|s| s.0 == metric && s.1 == [("client".to_owned(), client.to_owned())])
            .map(|s| s.2)
    };
    assert_eq!(
        value("borg_pull_newest_archive_timestamp_seconds", "fresh"),
        Some(fresh_time as f64)
    );
    assert_eq!(
        value("borg_pull_newest_archive_timestamp_seconds", "enc"),
        Some((now - 7200) as f64)
    );
    assert_eq!(value("borg_pull_newest_archive_timestamp_seconds", "empty"), None);
    assert_eq!(
        value("borg_pull_last_run_duration_seconds", "fresh"),
        Some(12.345)
    );
    assert_eq!(value("borg_pull_last_run_bytes_sent", "fresh"), Some(987_654.0));
    assert_eq!(value("borg_pull_last_run_borg_exit_code", "fresh"), Some(0.0));
    assert_eq!(value("borg_pull_last_run_error", "fresh"), Some(0.0));
    assert_eq!(value("borg_pull_last_run_error", "stale"), Some(1.0));
    assert_eq!(value("borg_pull_last_run_borg_exit_code", "stale"), None);
    assert_eq!(
        value("borg_pull_last_success_timestamp_seconds", "fresh"),
        Some((fresh_time + 12) as f64)
    );
    // Every configured client: a client that never succeeded shows 0, so the 36-hour alert fires.
    for name in ["fresh", "stale", "empty", "missing", "enc"] {
        assert_eq!(value("borg_pull_client_configured", name), Some(1.0), "{name}");
    }
    assert_eq!(
        value("borg_pull_last_success_timestamp_seconds", "stale"),
        Some(0.0)
    );
    assert_eq!(
        value("borg_pull_last_success_timestamp_seconds", "missing"),
        Some(0.0)
    );
    let f_size = f.repository_size.unwrap();
    assert_eq!(
        value("borg_pull_repository_unique_csize_bytes", "fresh"),
        Some(f_size.unique_csize.unwrap() as f64)
    );
    assert_eq!(
        value("borg_pull_repository_total_size_bytes", "enc"),
        Some(x.repository_size.unwrap().total_size.unwrap() as f64)
    );
    assert_eq!(value("borg_pull_repository_unique_csize_bytes", "missing"), None);
    assert_eq!(
        value("borg_pull_last_run_timestamp_seconds", "stale"),
        Some((now - 600) as f64)
    );
    promtool_check(&prom);
    assert_atomic_result(&prom_dir, &prom);
}

/// Mode 0644 whatever the umask, and no temporary file left beside it.
fn assert_atomic_result(dir: &Path, file: &Path) {
    assert_eq!(std::fs::metadata(file).unwrap().mode() & 0o7777, 0o644);
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [file.file_name().unwrap()]);
}

/// `promtool check metrics` (Debian's, put in place by scripts/install-deps; BORG_PULL_PROMTOOL
/// names another): Prometheus's own reading of the file beside the strict parser below. Missing,
/// it fails the test under BORG_PULL_REQUIRE_DEPS=1 (scripts/test) and is skipped, said, without.
fn promtool_check(file: &Path) {
    let promtool =
        std::env::var_os("BORG_PULL_PROMTOOL").unwrap_or_else(|| "/opt/borg-pull/bin/promtool".into());
    let out = match std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
    {
        Ok(out) => out,
        Err(e) if std::env::var_os("BORG_PULL_REQUIRE_DEPS").is_some_and(|v| v == "1") => {
            panic!(
                "{}: {e} (scripts/install-deps installs it)",
                Path::new(&promtool).display()
            )
        }
        Err(e) => {
            eprintln!("promtool not run ({e}): only the strict parser checked the textfile");
            return;
        }
    };
    // promtool also lints (HELP text style, metric naming): any finding is a failure too.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the text exposition format as node_exporter's textfile collector takes it:
/// every line is `# HELP name text`, `# TYPE name gauge|counter|...` or `name{label="value",...}
/// value`; HELP and TYPE come once per metric, before its samples, and a metric's samples are
/// together; names and label names are valid; label values use only the escapes `\\`, `\"`, `\n`;
/// the file ends with a newline; no label set appears twice. Returns the samples, labels unescaped.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "no final newline");
    let valid_name = |n: &str, colon: bool| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    let (mut helped, mut typed, mut finished) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            let (name, arg) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad {kind} {line:?}"));
            assert!(valid_name(name, true), "{line:?}");
            assert!(
                !finished.contains(name) && samples.iter().all(|s: &Sample| s.0 != name),
                "{kind} after samples: {line:?}"
            );
            match kind {
                "HELP" => {
                    assert!(helped.insert(name.to_owned()), "second HELP {line:?}");
                    let mut chars = arg.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' {
                            assert!(matches!(chars.next(), Some('\\' | 'n')), "bad escape in {line:?}");
                        }
                    }
                }
                "TYPE" => {
                    assert!(typed.insert(name.to_owned()), "second TYPE {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "{line:?}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            if current.as_deref() != Some(name) {
                if let Some(done) = current.replace(name.to_owned()) {
                    finished.insert(done);
                }
            }
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "bad line {line:?}");
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = &line[..name_end];
        assert!(valid_name(name, true), "{line:?}");
        assert!(
            typed.contains(name) && helped.contains(name),
            "sample before HELP/TYPE: {line:?}"
        );
        assert_eq!(
            current.as_deref(),
            Some(name),
            "samples of {name} not together: {line:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            loop {
                let (start, c) = chars.next().unwrap_or_else(|| panic!("open labels: {line:?}"));
                if c == '}' {
                    rest = &inner[start + 1..];
                    break;
                }
                let eq = inner[start..]
                    .find('=')
                    .unwrap_or_else(|| panic!("no = in {line:?}"))
                    + start;
                let label = &inner[start..eq];
                assert!(
                    valid_name(label, false) && !label.starts_with("__"),
                    "label {label:?} in {line:?}"
                );
                while chars.next().is_some_and(|(i, _)| i < eq) {}
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "unquoted value in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("open value: {line:?}")).1 {
                        '"' => break,
                        '\\' => value.push(match chars.next().map(|c| c.1) {
                            Some('\\') => '\\',
                            Some('"') => '"',
                            Some('n') => '\n',
                            other => panic!("bad escape {other:?} in {line:?}"),
                        }),
                        '\n' => unreachable!(),
                        c => value.push(c),
                    }
                }
                labels.push((label.to_owned(), value));
                match chars.next().unwrap_or_else(|| panic!("open labels: {line:?}")) {
                    (_, ',') => {}
                    (i, '}') => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    (_, c) => panic!("{c:?} after a label value in {line:?}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
        assert!(!value.contains(' '), "timestamps are not for textfiles: {line:?}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            seen.insert((name.to_owned(), labels.clone())),
            "duplicate sample {line:?}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// The parser above is only worth what it refuses.
#[test]
fn the_strict_parser_refuses_malformed_files() {
    let good = "# HELP m Help.\n# TYPE m gauge\nm{client=\"a\\\\b\\\"c\\nd\"} 1.5\n";
    assert_eq!(
        parse_exposition(good)[0].1,
        [("client".to_owned(), "a\\b\"c\nd".to_owned())]
    );
    for bad in [
        "# TYPE m gauge\n# HELP m Help.\nm 1", // no final newline
        "m 1\n",                               // no HELP/TYPE
        "# HELP m Help.\n# TYPE m gauge\nm{client=\"a\\tb\"} 1\n", // unknown escape
        "# HELP m Help.\n# TYPE m gauge\nm{client=\"a} 1\n", // open value
        "# HELP m Help.\n# TYPE m gauge\nm{client=a} 1\n", // unquoted
        "# HELP m Help.\n# TYPE m gauge\nm{client=\"a\"} x\n", // not a number
        "# HELP m Help.\n# TYPE m gauge\nm{client=\"a\"} 1\nm{client=\"a\"} 2\n", // twice
        "# HELP m Help.\n# TYPE m gauge\nm 1\n# HELP n N.\n# TYPE n gauge\nn 1\nm 2\n", // apart
        "# HELP m Help.\n# TYPE m gauge\nm 1\n# HELP m Again.\n", // HELP after samples
        "# HELP m Help.\n# TYPE m gauge\n1m 1\n", // bad name
        "# HELP m Help.\n# TYPE m gauge\nm 1 1700000000\n", // timestamp
    ] {
        let parsed = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn textfile_escapes_hostile_names_and_is_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(&dir.path().join("state")).unwrap();
    let hostile = ["quote\"d", "back\\slash", "new\nline", "plain"];
    for (i, name) in hostile.iter().enumerate() {
        store
            .save(
                name,
                &ClientState {
                    last_run: Some(record(1_000 + i as u64, Some(i as i32), None)),
                    last_success: Some(record(1_000, Some(0), None)),
                    ..ClientState::default()
                },
            )
            .unwrap();
    }
    let clients = hostile
        .iter()
        .chain(["never-ran"].iter())
        .map(|n| client(n, Path::new("/nonexistent")))
        .collect();
    let fleet = fleet(server(borg_bin(), dir.path()), clients);
    let samples = parse_exposition(&render(&fleet, &store, &[]));
    for (i, name) in hostile.iter().enumerate() {
        let rc = samples
            .iter()
            .find(|s| s.0 == "borg_pull_last_run_borg_exit_code" && s.1[0].1 == *name)
            .unwrap_or_else(|| panic!("no sample for {name:?}"));
        assert_eq!(rc.2, i as f64);
        let newest = samples
            .iter()
            .find(|s| s.0 == "borg_pull_newest_archive_timestamp_seconds" && s.1[0].1 == *name);
        assert_eq!(newest.map(|s| s.2), Some(1_000.0), "from the last success");
    }
    // A client that never ran: configured, never succeeded (0), and nothing else but its
    // standing by the schedule: due now, no failure.
    let schedule_metric = |name: &str| {
        [
            "borg_pull_client_health",
            "borg_pull_client_next_due_timestamp_seconds",
            "borg_pull_client_failures_in_a_row",
        ]
        .contains(&name)
    };
    let never: Vec<_> = samples.iter().filter(|s| s.1[0].1 == "never-ran").collect();
    assert_eq!(
        never
            .iter()
            .filter(|s| !schedule_metric(&s.0))
            .map(|s| (s.0.as_str(), s.2))
            .collect::<Vec<_>>(),
        [
            ("borg_pull_client_configured", 1.0),
            ("borg_pull_last_success_timestamp_seconds", 0.0)
        ]
    );
    let health: Vec<_> = never
        .iter()
        .filter(|s| s.0 == "borg_pull_client_health")
        .map(|s| (s.1[1].1.as_str(), s.2))
        .collect();
    assert_eq!(
        health,
        [("ok", 0.0), ("due", 1.0), ("failing", 0.0), ("overdue", 0.0)]
    );
    let failures = never.iter().find(|s| s.0 == "borg_pull_client_failures_in_a_row");
    assert_eq!(failures.map(|s| s.2), Some(0.0));

    // Written atomically over an older file: mode 0644 although the old one was 0600.
    let prom_dir = dir.path().join("textfile");
    std::fs::create_dir(&prom_dir).unwrap();
    let prom = prom_dir.join("borg_pull.prom");
    std::fs::write(&prom, "old").unwrap();
    std::fs::set_permissions(&prom, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    write_textfile(&prom, &fleet, &store).unwrap();
    assert_eq!(
        parse_exposition(&std::fs::read_to_string(&prom).unwrap()),
        samples
    );
    assert_atomic_result(&prom_dir, &prom);
    promtool_check(&prom);
    // A directory that does not exist: an error naming the file, nothing written anywhere.
    let error = write_textfile(&dir.path().join("no/such.prom"), &fleet, &store).unwrap_err();
    assert!(error.to_string().contains("no/such.prom"), "{error}");
}

#[test]
fn state_store_round_trip_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("var/lib/borg-pull");
    let store = StateStore::open(&state_dir).unwrap();
    assert_eq!(std::fs::metadata(&state_dir).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(store.load("web1"), ClientState::default());

    let state = ClientState {
        last_run: Some(record(
            1_700_000_000,
            Some(1),
            Some((213, "cannot connect: \"quotes\" \n and newlines")),
        )),
        last_success: Some(record(1_690_000_000, Some(0), None)),
        runs_since_check: 4,
        last_check: Some((1_680_000_000, false)),
        last_prune: Some(StepRecord {
            at: 1_700_000_100,
            rc: Some(0),
        }),
        last_compact: Some(StepRecord {
            at: 1_700_000_200,
            rc: None,
        }),
        last_check_run: Some(StepRecord {
            at: 1_700_000_300,
            rc: Some(143),
        }),
        failures_in_a_row: 3,
        first_attempt: Some(1_600_000_000),
        last_attempt: Some(borg_pull_fleet::state::Attempt {
            ended: 1_700_000_060,
            outcome: borg_pull_fleet::state::Outcome::Unreachable,
        }),
        overdue_alerted: Some(1_700_000_400),
        repo_reading: Some(borg_pull_fleet::state::RepoReading {
            at: 1_700_000_500,
            newest_archive: Some("web1-\"2023\"".to_owned()),
            newest_time: Some(1_699_999_000),
            size: Some(borg_pull_fleet::status::RepoSize {
                unique_csize: Some(1),
                unique_size: Some(2),
                total_csize: None,
                total_size: Some(4),
            }),
            error: None,
        }),
    };
    store.save("web1", &state).unwrap();
    store.save("web1", &state).unwrap();
    assert_eq!(store.load("web1"), state);
    let file = state_dir.join("web1.json");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
    let names: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["web1.json"]);
    // Reopening an existing directory works and sees the same records.
    assert_eq!(StateStore::open(&state_dir).unwrap().load("web1"), state);

    // The file's error has the shape of every JSON output.
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["last_run"]["error"]["code"], 213, "{json}");
    assert_eq!(json["last_success"]["error"], serde_json::Value::Null, "{json}");

    // A record written before this version ([code, message] errors, no retention steps) reads
    // as it was meant.
    let old = r#"{"last_run": {"started": 5, "duration_ms": 7, "archive": null, "bytes_sent": 9,
        "borg_rc": null, "error": [213, "cannot connect"]}, "last_success": null,
        "runs_since_check": 2, "last_check": [4, true]}"#;
    std::fs::write(&file, old).unwrap();
    let read = store.load("web1");
    assert_eq!(
        read.last_run.clone().unwrap().error,
        Some((213, "cannot connect".to_owned()))
    );
    assert_eq!(
        (read.runs_since_check, read.last_check, read.last_prune),
        (2, Some((4, true)), None)
    );
    // Its finished check is the check's last result (exit code unknown).
    let results = read.retention_results();
    assert_eq!(
        results.check,
        Some(StepResult {
            at: 4,
            succeeded: true,
            rc: None
        })
    );
    assert_eq!((results.prune, results.compact), (None, None));

    for corrupt in ["", "{", "[1,2]", "{\"runs_since_check\": -1}", "\u{0}\u{1}"] {
        std::fs::write(&file, corrupt).unwrap();
        assert_eq!(store.load("web1"), ClientState::default(), "{corrupt:?}");
    }
    std::fs::write(&file, vec![b' '; 2 << 20]).unwrap();
    assert_eq!(store.load("web1"), ClientState::default(), "oversized");
    std::fs::create_dir(state_dir.join("dir.json")).unwrap();
    assert_eq!(store.load("dir"), ClientState::default(), "a directory");

    for bad in ["", ".", "..", "a/b", "../escape"] {
        assert!(store.save(bad, &state).is_err(), "{bad:?}");
        assert_eq!(store.load(bad), ClientState::default());
    }
    assert!(!dir.path().join("var/lib/escape.json").exists());
}

/// Retention's results in the textfile, from real prunes, compacts and checks run by
/// `after_create` and recorded with `ClientState::record_retention` as `run` records them: a good
/// prune, compact and check; then a prune that cannot start (its passphrase file is gone), which
/// replaces the prune's record with a failure without an exit code and leaves the others.
#[tokio::test]
async fn retention_results_become_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let passphrase = "retention metrics";
    let repo = dir.path().join("kept");
    borg(
        &["init", "-e", "repokey", repo.to_str().unwrap()],
        &[("BORG_PASSPHRASE", passphrase)],
    );
    add_archives(
        &repo,
        &[
            ("a1", now - 3 * 86_400),
            ("a2", now - 2 * 86_400),
            ("a3", now - 3600),
        ],
        &[("BORG_PASSPHRASE", passphrase)],
    );
    let pass_file = dir.path().join("pass");
    secret_file(&pass_file, passphrase);
    let mut kept = client("kept", &repo);
    kept.passphrase = PassphraseSource::File(pass_file.clone());
    kept.prune = Retention {
        keep_last: Some(1),
        ..Retention::default()
    };
    kept.compact = true;
    kept.check = CheckPolicy {
        every_runs: Some(1),
        every_days: None,
    };
    let state_dir = dir.path().join("state");
    let store = StateStore::open(&state_dir).unwrap();
    let fleet = fleet(server(borg_bin(), &state_dir), vec![kept.clone()]);
    let limits = BorgLimits::default();

    let mut state = ClientState::default();
    let before = now;
    let outcome = after_create_with(&kept, &fleet.server, &mut state, &limits).await;
    assert!(outcome.ok(), "{outcome:?}");
    assert_eq!(
        (outcome.pruned, outcome.compacted, outcome.checked),
        (Some(0), Some(0), Some(0))
    );
    state.record_retention(&outcome, crate::common::now());
    store.save("kept", &state).unwrap();

    let statuses = status(&fleet, &store).await;
    let text = render(&fleet, &store, &statuses);
    let samples = parse_exposition(&text);
    let step = |metric: &str, step: &str| {
        let labels = [
            ("client".to_owned(), "kept".to_owned()),
            ("step".to_owned(), step.to_owned()),
        ];
        samples
            .iter()
            .find(|s| s.0 == metric && s.1 == labels)
            .map(|s| s.2)
    };
    for name in ["prune", "compact", "check"] {
        assert_eq!(
            step("borg_pull_retention_last_success", name),
            Some(1.0),
            "{name}\n{text}"
        );
        assert_eq!(
            step("borg_pull_retention_last_exit_code", name),
            Some(0.0),
            "{name}\n{text}"
        );
        let at = step("borg_pull_retention_last_timestamp_seconds", name).unwrap();
        assert!(
            at >= before as f64 && at <= crate::common::now() as f64,
            "{name}: {at}"
        );
    }
    // status --json shows the same results.
    let json = serde_json::to_value(&statuses[0]).unwrap();
    for name in ["prune", "compact", "check"] {
        let step = &json["retention"][name];
        assert_eq!(
            (&step["succeeded"], &step["rc"]),
            (&true.into(), &0.into()),
            "{json}"
        );
        assert!(step["at"].as_u64().unwrap() >= before, "{json}");
    }
    // keep_last = 1: one archive is left; its size is what borg info says after the compact.
    assert_eq!(statuses[0].newest_archive.as_deref(), Some("a3"));
    let size = statuses[0].repository_size.unwrap();
    let listed = borg(
        &["info", "--json", repo.to_str().unwrap()],
        &[("BORG_PASSPHRASE", passphrase)],
    );
    let info: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(size.unique_csize, info["cache"]["stats"]["unique_csize"].as_u64());
    let path_len = repo.to_str().unwrap().len() as u64;
    assert_eq!(
        size.total_size,
        Some(path_len),
        "one archive of the one file left"
    );
    let samples_size = samples
        .iter()
        .find(|s| s.0 == "borg_pull_repository_unique_csize_bytes")
        .map(|s| s.2);
    assert_eq!(samples_size, size.unique_csize.map(|v| v as f64));

    // The passphrase file is gone: prune cannot start, so compact does not run (nothing was
    // pruned) and the check is not due again (every run: it is, and cannot start either).
    std::fs::remove_file(&pass_file).unwrap();
    let outcome = after_create_with(&kept, &fleet.server, &mut state, &limits).await;
    assert_eq!(
        (outcome.pruned, outcome.compacted, outcome.checked),
        (None, None, None),
        "{outcome:?}"
    );
    let compact_before = state.last_compact;
    state.record_retention(&outcome, crate::common::now());
    assert_eq!(state.last_prune.unwrap().rc, None);
    assert_eq!(state.last_check_run.unwrap().rc, None);
    assert_eq!(
        state.last_compact, compact_before,
        "compact did not run: its record stays"
    );
    store.save("kept", &state).unwrap();
    let text = render(&fleet, &store, &[]);
    let samples = parse_exposition(&text);
    let step = |metric: &str, step: &str| {
        samples
            .iter()
            .find(|s| s.0 == metric && s.1[1].1 == step)
            .map(|s| s.2)
    };
    assert_eq!(
        step("borg_pull_retention_last_success", "prune"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        step("borg_pull_retention_last_exit_code", "prune"),
        None,
        "{text}"
    );
    assert_eq!(
        step("borg_pull_retention_last_success", "check"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        step("borg_pull_retention_last_success", "compact"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        step("borg_pull_retention_last_exit_code", "compact"),
        Some(0.0),
        "{text}"
    );
    let file = dir.path().join("r.prom");
    std::fs::write(&file, &text).unwrap();
    promtool_check(&file);
}

/// The textfile at the end of `run`: the repositories are read as `status` reads them (newest
/// archive from borg list, size from borg info); when the run was interrupted, it is written at
/// once from the records alone, and a borg still reading a repository is stopped with its group.
#[tokio::test]
async fn the_runs_textfile_reads_the_repositories_unless_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let repo = repo_with(dir.path(), "repo", &[("listed", now - 7200)]);
    let state_dir = dir.path().join("state");
    let store = StateStore::open(&state_dir).unwrap();
    // The record's start differs from the archive's time: which of them is shown tells the source.
    let recorded = now - 600;
    let state = ClientState {
        last_run: Some(record(recorded, Some(0), None)),
        last_success: Some(record(recorded, Some(0), None)),
        ..ClientState::default()
    };
    store.save("c", &state).unwrap();
    let fleet_of = |borg: &Path| fleet(server(borg, &state_dir), vec![client("c", &repo)]);
    let prom = dir.path().join("c.prom");
    let read = |prom: &Path| {
        let text = std::fs::read_to_string(prom).unwrap();
        let samples = parse_exposition(&text);
        let value = |metric: &str| samples.iter().find(|s| s.0 == metric).map(|s| s.2);
        (
            value("borg_pull_newest_archive_timestamp_seconds"),
            value("borg_pull_repository_unique_csize_bytes"),
            value("borg_pull_last_success_timestamp_seconds"),
        )
    };

    let running = CancellationToken::new();
    write_textfile_after_run(&prom, &fleet_of(borg_bin()), &store, &running)
        .await
        .unwrap();
    let (newest, size, success) = read(&prom);
    assert_eq!(newest, Some((now - 7200) as f64), "from borg list");
    assert!(size.is_some_and(|s| s > 0.0), "{size:?}");
    assert_eq!(success, Some((recorded + 12) as f64));
    promtool_check(&prom);

    let interrupted = CancellationToken::new();
    interrupted.cancel();
    write_textfile_after_run(&prom, &fleet_of(borg_bin()), &store, &interrupted)
        .await
        .unwrap();
    assert_eq!(
        read(&prom),
        (Some(recorded as f64), None, Some((recorded + 12) as f64)),
        "from the records alone"
    );

    // Interrupted while borg list hangs (a stand-in that writes its pid and its child's).
    std::fs::remove_file(&prom).unwrap();
    let pids = dir.path().join("pids");
    let hanging = stand_in(
        dir.path(),
        "hanging-borg",
        &format!(
            "echo $$ > '{0}.new'\nsleep 1000 &\necho $! >> '{0}.new'\nmv '{0}.new' '{0}'\nwait",
            pids.display()
        ),
    );
    let fleet = fleet_of(&hanging);
    let token = CancellationToken::new();
    let writer = write_textfile_after_run(&prom, &fleet, &store, &token);
    let interrupt = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !pids.exists() {
            assert!(std::time::Instant::now() < deadline, "the stand-in never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
    };
    let (written, ()) = tokio::join!(writer, interrupt);
    written.unwrap();
    assert_eq!(read(&prom).1, None, "no size: borg was stopped");
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let proc_dir = Path::new("/proc").join(pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // A zombie is gone for our purpose: it holds nothing and runs nothing.
        let alive = || {
            std::fs::read_to_string(proc_dir.join("stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        while alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} still running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `list` and `info` calls of a logging borg wrapper for `repo` (one argv per line).
fn borg_calls(log: &Path, repo: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let repo = format!(" {}", repo.display());
    let count = |verb: &str| {
        text.lines()
            .filter(|l| l.starts_with(verb) && l.ends_with(&repo))
            .count()
    };
    (count("list "), count("info "))
}

/// The end of `run` (real borg behind a wrapper that logs every argv): the pulled client's
/// repository is read again, a client with a current stored reading is not read at all and its
/// metrics come from that reading, a reading older than the bound and a state file without one are
/// refreshed; `status` reads every repository and stores what it read.
#[tokio::test]
async fn the_end_of_run_reads_only_the_pulled_and_the_unread_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let names = ["pulled", "current", "old", "none"];
    let repos: Vec<PathBuf> = names
        .iter()
        .enumerate()
        .map(|(i, name)| repo_with(dir.path(), name, &[("a1", now - 7200 - i as u64 * 600)]))
        .collect();
    let log = dir.path().join("borg-argv.log");
    let wrapper = stand_in(
        dir.path(),
        "logging-borg",
        &format!(
            "printf '%s\\n' \"$*\" >> '{}'\nexec {} \"$@\"",
            log.display(),
            borg_bin().display()
        ),
    );
    let state_dir = dir.path().join("state");
    let store = StateStore::open(&state_dir).unwrap();
    let clients = names.iter().zip(&repos).map(|(n, r)| client(n, r)).collect();
    let fleet = fleet(server(&wrapper, &state_dir), clients);

    // `status` reads all four and stores each reading.
    let first = status(&fleet, &store).await;
    for (name, repo) in names.iter().zip(&repos) {
        assert_eq!(borg_calls(&log, repo), (1, 1), "{name}");
        let reading = store.load(name).repo_reading.expect(name);
        assert!(
            reading.at >= now && reading.error.is_none(),
            "{name}: {reading:?}"
        );
        let s = first.iter().find(|s| s.name == *name).unwrap();
        assert_eq!(
            (reading.newest_time, reading.size),
            (s.newest_time, s.repository_size)
        );
    }
    std::fs::remove_file(&log).unwrap();

    // Since then: the pulled client got a new archive; "old"'s reading is a day and a bit old
    // (and wrong: someone pruned by hand); "none" has a state file from before readings.
    add_archives(&repos[0], &[("a2", now - 60)], &[]);
    let mut old = store.load("old");
    let reading = old.repo_reading.as_mut().unwrap();
    reading.at = now - 25 * 3600;
    reading.newest_time = Some(now - 30 * 86_400);
    reading.size = Some(borg_pull_fleet::status::RepoSize {
        unique_csize: Some(1),
        ..Default::default()
    });
    store.save("old", &old).unwrap();
    let mut none = store.load("none");
    none.repo_reading = None;
    store.save("none", &none).unwrap();
    let current_reading = store.load("current").repo_reading.unwrap();

    let prom = dir.path().join("fleet.prom");
    let running = CancellationToken::new();
    write_textfile_after_pulls(&prom, &fleet, &store, &["pulled"], &running)
        .await
        .unwrap();
    let calls: Vec<(usize, usize)> = repos.iter().map(|r| borg_calls(&log, r)).collect();
    assert_eq!(
        calls,
        [(1, 1), (0, 0), (1, 1), (1, 1)],
        "pulled, current, old, none"
    );
    promtool_check(&prom);

    // Every client has its metrics, each as a fresh reading of its repository would give them.
    let text = std::fs::read_to_string(&prom).unwrap();
    let samples = parse_exposition(&text);
    let value = |metric: &str, client: &str| {
        let found = samples
            .iter()
            .find(|s| s.0 == metric && s.1.iter().any(|(k, v)| k == "client" && v == client));
        found.map(|s| s.2)
    };
    let truth = status(&fleet, &StateStore::open(&dir.path().join("truth")).unwrap()).await;
    std::fs::remove_file(&log).unwrap();
    for s in &truth {
        let name = s.name.as_str();
        assert_eq!(
            value("borg_pull_newest_archive_timestamp_seconds", name),
            s.newest_time.map(|t| t as f64),
            "{name}"
        );
        let size = s.repository_size.unwrap();
        for (metric, bytes) in [
            ("borg_pull_repository_unique_csize_bytes", size.unique_csize),
            ("borg_pull_repository_unique_size_bytes", size.unique_size),
            ("borg_pull_repository_total_csize_bytes", size.total_csize),
            ("borg_pull_repository_total_size_bytes", size.total_size),
        ] {
            assert_eq!(value(metric, name), bytes.map(|b| b as f64), "{metric} {name}");
        }
        assert_eq!(value("borg_pull_client_configured", name), Some(1.0), "{name}");
    }
    assert_eq!(
        value("borg_pull_newest_archive_timestamp_seconds", "pulled"),
        Some((now - 60) as f64),
        "the pulled client's new archive"
    );
    // The stored readings: refreshed for the three read, untouched for "current".
    assert_eq!(store.load("current").repo_reading, Some(current_reading));
    for name in ["pulled", "old", "none"] {
        let reading = store.load(name).repo_reading.unwrap();
        assert!(reading.at >= now, "{name}: {reading:?}");
    }
    assert_eq!(
        store.load("old").repo_reading.unwrap().newest_time,
        Some(now - 7200 - 2 * 600)
    );

    // A second run pulling nothing reads nothing: every reading is current.
    write_textfile_after_pulls(&prom, &fleet, &store, &[], &running)
        .await
        .unwrap();
    assert!(!log.exists(), "{:?}", std::fs::read_to_string(&log));
    let without_next_due = |text: &str| {
        let mut samples = parse_exposition(text);
        samples.retain(|s| s.0 != "borg_pull_client_next_due_timestamp_seconds");
        samples
    };
    assert_eq!(
        without_next_due(&std::fs::read_to_string(&prom).unwrap()),
        without_next_due(&text)
    );
    promtool_check(&prom);

    // Interrupted: nothing is read; the clients not pulled keep their stored sizes, the pulled
    // one has none (its repository may have changed) and its newest archive from its record.
    let interrupted = CancellationToken::new();
    interrupted.cancel();
    write_textfile_after_pulls(&prom, &fleet, &store, &["pulled"], &interrupted)
        .await
        .unwrap();
    assert!(!log.exists());
    let text = std::fs::read_to_string(&prom).unwrap();
    let samples = parse_exposition(&text);
    let has = |metric: &str, client: &str| {
        samples
            .iter()
            .any(|s| s.0 == metric && s.1.iter().any(|(k, v)| k == "client" && v == client))
    };
    assert!(
        !has("borg_pull_repository_unique_csize_bytes", "pulled"),
        "{text}"
    );
    assert_eq!(store.load("pulled").repo_reading, None, "read again next time");
    assert!(store.load("pulled").last_success.is_none());
    for name in ["current", "old", "none"] {
        assert!(
            has("borg_pull_repository_unique_csize_bytes", name),
            "{name}: {text}"
        );
    }
}

/// Writers of one client's record in parallel (a `run` saving its result, a `status` storing a
/// repository reading, `status --notify` marking an alert) each change their own fields; under
/// the record's lock none replaces the file with a copy loaded before the other's write.
#[test]
fn parallel_changes_to_one_record_are_all_kept() {
    const CHANGES: u32 = 100;
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(&dir.path().join("state")).unwrap();
    std::thread::scope(|scope| {
        let checks = scope.spawn(|| {
            // A store opened apart, as another process would: its own lock file descriptor.
            let store = StateStore::open(store.dir()).unwrap();
            for _ in 0..CHANGES {
                store.update("web1", |s| s.runs_since_check += 1).unwrap();
            }
        });
        let failures = scope.spawn(|| {
            let store = StateStore::open(store.dir()).unwrap();
            for _ in 0..CHANGES {
                store.update("web1", |s| s.failures_in_a_row += 1).unwrap();
            }
        });
        checks.join().unwrap();
        failures.join().unwrap();
    });
    let state = store.load("web1");
    assert_eq!(
        (state.runs_since_check, state.failures_in_a_row),
        (CHANGES, CHANGES)
    );
    // A change that changes nothing writes nothing; a name that is no file name is refused.
    let modified = std::fs::metadata(dir.path().join("state/web1.json"))
        .unwrap()
        .modified()
        .unwrap();
    store.update("web1", |_| ()).unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("state/web1.json"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    assert!(store.update("../web1", |s| s.runs_since_check = 1).is_err());
}
