//! The real `borg-pull-server status` binary on a fleet config: the table, `--json`, the textfile
//! and the exit codes (0 fresh, 208 stale, 209 unreadable, 200 bad config).

mod common;

use std::path::{Path, PathBuf};

use common::{assert_ok, TestCommand, TestDir};

const SERVER: &str = env!("CARGO_BIN_EXE_borg-pull-server");

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

fn status(t: &TestDir, config: &Path, extra: &[&str]) -> common::Outcome {
    let mut cmd = TestCommand::new(SERVER);
    t.env(&mut cmd)
        .arg("status")
        .arg("--config")
        .arg(config)
        .args(extra);
    cmd.output()
}

#[test]
fn status_flags_a_stale_client_and_writes_the_textfile() {
    if !common::require_tool("borg") {
        return;
    }
    let t = TestDir::new();
    let fresh = repo(&t, "fresh", Some(3600));
    let stale = repo(&t, "stale", Some(3 * 86_400));
    let cfg = config(&t, &[("fresh", &fresh), ("stale", &stale)]);

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
    let prom = std::fs::read_to_string(t.join("borg_pull.prom")).unwrap();
    assert!(
        prom.contains("borg_pull_newest_archive_timestamp_seconds{client=\"stale\"}"),
        "{prom}"
    );

    let textfile = t.join("other.prom");
    let out = status(&t, &cfg, &["--json", "--prometheus", textfile.to_str().unwrap()]);
    out.assert_code(208);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "fresh");
    assert_eq!(json[0]["stale"], false);
    assert_eq!(json[1]["stale"], true);
    assert!(json[1]["age_seconds"].as_u64().unwrap() >= 3 * 86_400);
    assert!(textfile.exists());

    // Only fresh clients: 0. A missing repository: 209, whatever else is stale.
    status(&t, &config(&t, &[("fresh", &fresh)]), &[]).assert_code(0);
    let missing = t.join("missing");
    let out = status(&t, &config(&t, &[("stale", &stale), ("missing", &missing)]), &[]);
    out.assert_code(209);
    assert!(out.stdout_text().contains("UNREADABLE"), "{}", out.describe());
}

#[test]
fn status_with_an_unreadable_config_is_a_usage_error() {
    let t = TestDir::new();
    let out = status(&t, &t.join("no-such.toml"), &[]);
    out.assert_code(200);
    assert!(out.stderr_text().contains("no-such.toml"), "{}", out.describe());
    assert!(out.stdout.is_empty());
}
