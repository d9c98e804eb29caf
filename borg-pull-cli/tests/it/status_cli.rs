//! The real `borg-pull-server status` binary on a fleet config: the table, `--json` (its error
//! shape), the textfile (written only with `--prometheus`) and the exit codes (0 fresh, 208
//! stale, 209 unreadable, 200 bad config).

use std::path::{Path, PathBuf};

use borg_pull_testkit::{assert_ok, server_bin, TestCommand, TestDir};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A repository `name` with one archive `time` seconds old (none for `None`).
fn repo(t: &TestDir, name: &str, age: Option<u64>) -> PathBuf {
    let repo = t.join(name);
    t.init_repo(&repo);
    if let Some(age) = age {
        let date = TestCommand::new("date")
            .args(["-u", "-d", &format!("@{}", now() - age), "+%Y-%m-%dT%H:%M:%S"])
            .output();
        assert_ok(&date, "date");
        let data = t.join(format!("{name}.data"));
        std::fs::create_dir(&data).unwrap();
        let out = t
            .borg(["create", "--timestamp", date.stdout_text().trim()])
            .arg(format!("{}::{name}-archive", repo.display()))
            .arg(&data)
            .output();
        assert_ok(&out, "borg create");
    }
    repo
}

/// A config for `clients` (name, repository), max_age 36 h, state and textfile in the test dir.
fn config(t: &TestDir, clients: &[(&str, &Path)]) -> PathBuf {
    let mut toml = format!(
        "[server]\nstate_dir = {:?}\nprometheus = {:?}\n\n[defaults]\nmax_age = \"36h\"\nargs = [\"create\", \"::{{now}}\", \"/etc\"]\n",
        t.join("state"),
        t.join("borg_pull.prom")
    );
    for (name, repo) in clients {
        toml.push_str(&format!(
            "\n[[client]]\nname = {name:?}\nhost = \"{name}.invalid\"\nrepo = {repo:?}\n"
        ));
    }
    let path = t.join("fleet.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn status(t: &TestDir, config: &Path, extra: &[&str]) -> borg_pull_testkit::Outcome {
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("status")
        .arg("--config")
        .arg(config)
        .args(extra);
    cmd.output()
}

/// The configured textfile's content and modification time.
fn textfile_state(path: &Path) -> (String, std::time::SystemTime) {
    let text = std::fs::read_to_string(path).unwrap();
    (text, std::fs::metadata(path).unwrap().modified().unwrap())
}

#[test]
fn status_flags_a_stale_client_and_writes_the_textfile_only_when_asked() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let t = TestDir::new();
    let fresh = repo(&t, "fresh", Some(3600));
    let stale = repo(&t, "stale", Some(3 * 86_400));
    let cfg = config(&t, &[("fresh", &fresh), ("stale", &stale)]);
    // The textfile `run` wrote last night, dated an hour ago: `status` must leave it alone.
    let configured = t.join("borg_pull.prom");
    std::fs::write(&configured, "# written by run\n").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .append(true)
        .open(&configured)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let before = textfile_state(&configured);

    let out = status(&t, &cfg, &[]);
    out.assert_code(208);
    let table = out.stdout_text();
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("fresh").contains(" ok "), "{}", out.describe());
    assert!(line("stale").contains("STALE"), "{}", out.describe());
    assert_eq!(
        textfile_state(&configured),
        before,
        "status without --prometheus wrote it"
    );
    status(&t, &cfg, &["--json"]).assert_code(208);
    assert_eq!(textfile_state(&configured), before, "status --json wrote it");

    // --prometheus=FILE writes FILE, and still not the configured one.
    let textfile = t.join("other.prom");
    let out = status(
        &t,
        &cfg,
        &["--json", &format!("--prometheus={}", textfile.display())],
    );
    out.assert_code(208);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "fresh");
    assert_eq!(json[0]["stale"], false);
    assert_eq!(json[1]["stale"], true);
    assert!(json[1]["age_seconds"].as_u64().unwrap() >= 3 * 86_400);
    assert!(json[1]["repository_size"]["unique_csize"].as_u64().unwrap() > 0);
    let other = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        other.contains("borg_pull_newest_archive_timestamp_seconds{client=\"stale\"}"),
        "{other}"
    );
    assert_eq!(textfile_state(&configured), before);

    // A bare --prometheus (before another option, or last) writes the configured textfile.
    for args in [&["--prometheus", "--json"][..], &["--prometheus"]] {
        std::fs::write(&configured, "# written by run\n").unwrap();
        status(&t, &cfg, args).assert_code(208);
        let prom = std::fs::read_to_string(&configured).unwrap();
        for needle in [
            "borg_pull_newest_archive_timestamp_seconds{client=\"stale\"}",
            "borg_pull_client_configured{client=\"fresh\"} 1",
            "borg_pull_last_success_timestamp_seconds{client=\"stale\"} 0",
            "borg_pull_repository_unique_csize_bytes{client=\"fresh\"}",
        ] {
            assert!(prom.contains(needle), "{args:?}: no {needle} in\n{prom}");
        }
    }

    // Only fresh clients: 0. A missing repository: 209, whatever else is stale.
    status(&t, &config(&t, &[("fresh", &fresh)]), &[]).assert_code(0);
    let missing = t.join("missing");
    let out = status(&t, &config(&t, &[("stale", &stale), ("missing", &missing)]), &[]);
    out.assert_code(209);
    assert!(out.stdout_text().contains("UNREADABLE"), "{}", out.describe());
}

/// A bare `--prometheus` with no `[server] prometheus` in the config: a usage error naming the
/// config and both fixes, before any repository is read.
#[test]
fn a_bare_prometheus_needs_a_configured_textfile() {
    let t = TestDir::new();
    let cfg = t.join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstate_dir = {:?}\n\n[[client]]\nname = \"c\"\nhost = \"c.invalid\"\nrepo = \"/nonexistent\"\nargs = [\"create\", \"::x\", \"/etc\"]\n",
            t.join("state")
        ),
    )
    .unwrap();
    let out = status(&t, &cfg, &["--prometheus"]);
    out.assert_code(200);
    let err = out.stderr_text();
    assert!(
        err.contains("fleet.toml")
            && err.contains("[server] prometheus")
            && err.contains("--prometheus=FILE"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

/// `status --json` shows a recorded error as `run --json` does: `{"code": 213, "message": …}`,
/// also from a state file written before that shape (`[213, "…"]`).
#[test]
fn status_json_errors_have_the_shape_of_runs() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let t = TestDir::new();
    let stale = repo(&t, "stale", Some(3 * 86_400));
    let cfg = config(&t, &[("stale", &stale)]);
    std::fs::create_dir(t.join("state")).unwrap();
    std::fs::write(
        t.join("state/stale.json"),
        r#"{"last_run": {"started": 1767268800, "duration_ms": 1500, "archive": null,
            "bytes_sent": 0, "borg_rc": null, "error": [213, "cannot connect to stale.invalid"]},
            "last_success": null, "runs_since_check": 0, "last_check": null}"#,
    )
    .unwrap();
    let out = status(&t, &cfg, &["--json"]);
    out.assert_code(208);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json[0]["last_run"]["error"],
        serde_json::json!({"code": 213, "message": "cannot connect to stale.invalid"}),
        "{}",
        out.describe()
    );
    let out = status(&t, &cfg, &[]);
    assert!(
        out.stdout_text().contains("error 213") && out.stdout_text().contains("cannot connect"),
        "{}",
        out.describe()
    );
}

#[test]
fn status_with_an_unreadable_config_is_a_usage_error() {
    let t = TestDir::new();
    let out = status(&t, &t.join("no-such.toml"), &[]);
    out.assert_code(200);
    assert!(out.stderr_text().contains("no-such.toml"), "{}", out.describe());
    assert!(out.stdout.is_empty());
}
