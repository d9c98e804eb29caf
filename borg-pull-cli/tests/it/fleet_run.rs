//! End-to-end tests of `borg-pull-server run` and `check-config` against a real OpenSSH sshd
//! (one on 127.0.0.1 standing for every client, reached directly and through `~/.ssh/config`
//! aliases) and real borg on both ends.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

/// The repositories' passphrase, in a file the config names; must never show in any output.
const PASSPHRASE: &str = "fleet 'secret' $(staple) \"horse\"";

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// One sshd, a relay the login user can run, a data set, a passphrase file, an ssh config with
/// aliases for the sshd, and repositories with hostile names.
struct Fleet {
    sshd: Sshd,
    relay: PathBuf,
    data: PathBuf,
    home: PathBuf,
    server_base: PathBuf,
    passphrase_file: PathBuf,
    repos_dir: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let relay = borg_pull_testkit::reachable_relay(&d);
        let data = d.join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("hello.txt"), b"hello from the fleet\n").unwrap();
        fs::write(data.join("it's $x"), b"hostile\n").unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&data);
        let home = d.join("home");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::write(
            home.join(".ssh/config"),
            format!(
                "Host alias-*\n    HostName 127.0.0.1\n    Port {}\nHost *\n    User nobody-from-ssh-config\n",
                sshd.port
            ),
        )
        .unwrap();
        let passphrase_file = d.join("passphrase");
        fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
        fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();
        let repos_dir = d.join("repos it's \"q\" $HOME");
        fs::create_dir(&repos_dir).unwrap();
        let server_base = d.join("server-base");
        fs::create_dir(&server_base).unwrap();
        Fleet {
            sshd,
            relay,
            data,
            home,
            server_base,
            passphrase_file,
            repos_dir,
        }
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.repos_dir.join(format!("{name} repo"))
    }

    fn local_borg(&self, args: &[&std::ffi::OsStr]) -> Outcome {
        let mut cmd = TestCommand::new("borg");
        cmd.args(args)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO");
        cmd.output()
    }

    fn init(&self, name: &str, encrypted: bool) {
        let repo = self.repo(name);
        let mode = if encrypted { "repokey" } else { "none" };
        let out = self.local_borg(&["init".as_ref(), "-e".as_ref(), mode.as_ref(), repo.as_os_str()]);
        assert_ok(&out, "borg init");
    }

    /// The config text: `[server]`, `[defaults]` for this sshd, then `clients`.
    fn config(&self, args: &[&str], clients: &str) -> PathBuf {
        let args: Vec<String> = args
            .iter()
            .map(|a| toml_str(a.replace("DATA", &self.data.to_string_lossy())))
            .collect();
        let text = format!(
            "[server]\nstate_dir = {state}\njobs = 2\n\n[defaults]\nuser = {user}\nidentity = {key}\n\
             known_hosts = {kh}\nrelay = {relay}\npassphrase_file = {pf}\nargs = [{args}]\n\
             env = {{ BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK = \"yes\" }}\n\n{clients}",
            state = toml_str(self.dir().join("state")),
            user = toml_str(&self.sshd.user),
            key = toml_str(self.sshd.client_key()),
            kh = toml_str(&self.sshd.known_hosts),
            relay = toml_str(&self.relay),
            pf = toml_str(&self.passphrase_file),
            args = args.join(", "),
        );
        let path = self.dir().join("fleet.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// A `[[client]]` entry; `host` None: 127.0.0.1 and this sshd's port.
    fn client(&self, name: &str, host: Option<&str>, extra: &str) -> String {
        let base = self.dir().join(format!("client-base-{name}"));
        if !base.exists() {
            fs::create_dir(&base).unwrap();
            borg_pull_testkit::sshd::chown_to_login_user(&base);
        }
        let host = match host {
            Some(alias) => format!("host = {}\n", toml_str(alias)),
            None => format!("host = \"127.0.0.1\"\nport = {}\n", self.sshd.port),
        };
        format!(
            "[[client]]\nname = {}\n{host}repo = {}\nenv = {{ BORG_BASE_DIR = {} }}\n{extra}\n",
            toml_str(name),
            toml_str(self.repo(name)),
            toml_str(&base),
        )
    }

    fn server(&self, args: &[&str]) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.args(args);
        self.server_env(&mut cmd);
        cmd
    }

    /// The environment `server` runs in, for a command that starts it (`script`).
    fn server_env(&self, cmd: &mut TestCommand) {
        cmd.env("HOME", &self.home)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .attach_log("sshd log", self.sshd.log_path());
    }

    /// Waits until no process mentions this test's directory (borg serve, relays, ...).
    fn assert_nothing_left(&self) {
        borg_pull_testkit::assert_no_process_mentions(self.dir());
    }
}

/// A closed port on 127.0.0.1.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A known_hosts file naming another key for the sshd.
fn wrong_known_hosts(f: &Fleet) -> PathBuf {
    let key = f.dir().join("other_host_key");
    let out = TestCommand::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output();
    assert_ok(&out, "ssh-keygen");
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let path = f.dir().join("wrong_known_hosts");
    fs::write(&path, format!("[127.0.0.1]:{} {}", f.sshd.port, public)).unwrap();
    path
}

const OK_CLIENTS: [&str; 8] = ["c1", "c2", "c3", "c4", "web.5", "db_6", "alias-7", "alias-8"];

fn fleet_config(f: &Fleet) -> PathBuf {
    let mut clients = String::new();
    for (i, name) in OK_CLIENTS.iter().enumerate() {
        f.init(name, i < 2);
        // Half reach the sshd through `~/.ssh/config` aliases (HostName and Port from there).
        let host = (i % 2 == 1).then(|| format!("alias-{name}"));
        clients.push_str(&f.client(name, host.as_deref(), ""));
    }
    f.init("unreachable", false);
    clients.push_str(&f.client(
        "unreachable",
        Some("127.0.0.1"),
        &format!("port = {}", closed_port()),
    ));
    f.init("wrong-key", false);
    clients.push_str(&f.client(
        "wrong-key",
        None,
        &format!("known_hosts = {}", toml_str(wrong_known_hosts(f))),
    ));
    f.config(
        &["create", "--stats", "::arch-{now:%Y-%m-%dT%H:%M:%S.%f}", "DATA"],
        &clients,
    )
}

/// The summary's columns, as the header names them.
const COLUMNS: [&str; 8] = [
    "client",
    "archive",
    "start (UTC)",
    "duration",
    "sent",
    "borg rc",
    "retention",
    "error",
];

/// The summary row of `name`, cut into its cells where the header's names start (cells hold
/// spaces: `1.2 KiB`, `skipped: no new archive`): client, archive, start, duration, sent, borg
/// rc, retention, error.
fn row(summary: &str, name: &str) -> Vec<String> {
    let header = summary.lines().next().unwrap_or_default();
    let starts: Vec<usize> = COLUMNS
        .iter()
        .map(|c| {
            header
                .find(c)
                .unwrap_or_else(|| panic!("no column {c:?} in the header {header:?}"))
        })
        .collect();
    let line = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{summary}"));
    (0..COLUMNS.len())
        .map(|i| {
            let end = starts.get(i + 1).copied().unwrap_or(line.len()).min(line.len());
            line.get(starts[i].min(end)..end)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

/// A human-readable size as the summary and the logs print it: `512 B`, `1.2 KiB`.
fn is_human_size(s: &str) -> bool {
    let Some((number, unit)) = s.split_once(' ') else {
        return false;
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    units.contains(&unit) && number.parse::<f64>().is_ok() && (unit == "B") != number.contains('.')
}

/// What must never be in `run`'s output: Rust's debug text.
fn assert_no_debug_text(text: &str, what: &str) {
    for debug in ["Some(", "None", "ExitStatus(", "unix_wait_status", "Ok(", "Err("] {
        assert!(!text.contains(debug), "{debug:?} in {what}:\n{text}");
    }
}

#[test]
fn run_pulls_eight_clients_three_at_a_time_and_reports_the_failures() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    let config = fleet_config(&f);
    let out = f
        .server(&["run", "--jobs", "3", "--config"])
        .arg(&config)
        .output();
    let summary = out.stdout_text();
    let stderr = out.stderr_text();
    // The worst: our "cannot connect" (213) beats "host key" (210) and borg's 0.
    out.assert_code(213);
    assert!(summary.starts_with("client"), "{}", out.describe());
    for name in OK_CLIENTS {
        let cells = row(&summary, name);
        assert_eq!(cells[5], "0", "borg rc of {name}: {}", out.describe());
        assert_eq!(cells[7], "-", "error of {name}: {}", out.describe());
        assert_eq!(cells[6], "not configured", "retention of {name}: {summary}");
        assert!(
            is_human_size(&cells[4]) && cells[4] != "0 B",
            "bytes of {name}: {summary}"
        );
        let archive = cells[1].as_str();
        assert!(
            archive.starts_with("arch-2"),
            "archive name from --stats: {archive}"
        );
        assert!(
            stderr.contains(&format!("\n{name}: Archive name: {archive}")),
            "{name}'s borg output is prefixed: {}",
            out.describe()
        );
        // Every archive is in its repository and holds the data.
        let repo = f.repo(name);
        let list = f.local_borg(&["list".as_ref(), "--short".as_ref(), repo.as_os_str()]);
        assert_ok(&list, "borg list");
        assert_eq!(list.stdout_text().trim(), archive);
        let mut spec = repo.as_os_str().to_owned();
        spec.push("::");
        spec.push(archive);
        let file = f.data.join("hello.txt");
        let member = file.strip_prefix("/").unwrap();
        let extracted = f.local_borg(&[
            "extract".as_ref(),
            "--stdout".as_ref(),
            spec.as_os_str(),
            member.as_os_str(),
        ]);
        assert_ok(&extracted, "borg extract");
        assert_eq!(extracted.stdout_text(), "hello from the fleet\n");
    }
    let unreachable = row(&summary, "unreachable");
    assert!(unreachable[7].starts_with("213: "), "{summary}");
    let wrong = row(&summary, "wrong-key");
    assert!(wrong[7].starts_with("210: "), "{summary}");
    assert_no_debug_text(&summary, "the summary");
    assert_no_debug_text(&stderr, "the log");
    for (name, _) in [("unreachable", 0), ("wrong-key", 0)] {
        let list = f.local_borg(&["list".as_ref(), "--short".as_ref(), f.repo(name).as_os_str()]);
        assert_eq!(list.stdout_text().trim(), "", "no archive for {name}");
    }
    assert!(!summary.contains(PASSPHRASE) && !stderr.contains(PASSPHRASE));
    f.assert_nothing_left();

    // --json: stdout is exactly the JSON summary; no secret in it.
    let out = f
        .server(&["run", "--json", "--config"])
        .arg(&config)
        .args(["c1", "alias-8", "wrong-key"])
        .output();
    out.assert_code(210);
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| panic!("JSON: {e}: {}", out.describe()));
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["client"], "c1");
    assert_eq!(rows[0]["borg_rc"], 0);
    assert_eq!(rows[0]["retention"]["status"], "not configured");
    assert!(rows[0]["error"].is_null());
    assert!(rows[1]["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(rows[2]["error"]["code"], 210);
    // The one error shape of every JSON output (status --json too): {"code", "message"}.
    let error = rows[2]["error"].as_object().unwrap();
    assert_eq!(
        error.keys().collect::<Vec<_>>(),
        ["code", "message"],
        "{}",
        out.describe()
    );
    assert!(!error["message"].as_str().unwrap().is_empty());
    assert!(!out.stdout_text().contains(PASSPHRASE));
    assert!(!out.stderr_text().contains(PASSPHRASE));
    // Unknown names are usage errors.
    let out = f.server(&["run", "--config"]).arg(&config).arg("nope").output();
    out.assert_code(200);
    f.assert_nothing_left();
}

#[test]
fn config_errors_name_file_line_and_key() {
    let f = Fleet::new();
    let mut clients = f.client("c1", None, "");
    clients.push_str("keep_daly = 3\n");
    let config = f.config(&["create", "::x", "DATA"], &clients);
    for sub in ["run", "check-config"] {
        let out = f.server(&[sub, "--config"]).arg(&config).output();
        out.assert_code(200);
        let line = fs::read_to_string(&config)
            .unwrap()
            .lines()
            .position(|l| l.starts_with("keep_daly"))
            .unwrap()
            + 1;
        let expected = format!(
            "{} line {line}: unknown key \"keep_daly\" in [[client]] c1",
            config.display()
        );
        assert!(out.stderr_text().contains(&expected), "{}", out.describe());
    }
    let clients = f.client("c1", None, "port = \"ssh\"");
    let config = f.config(&["create", "::x", "DATA"], &clients);
    let out = f.server(&["check-config", "--config"]).arg(&config).output();
    out.assert_code(200);
    assert!(
        out.stderr_text().contains("key \"port\" in [[client]] c1"),
        "{}",
        out.describe()
    );
    // The schedule's keys: the key, the value and the accepted form.
    for (extra, expected) in [
        (
            "window = \"22-06\"",
            "key \"window\" in [[client]] c1: \"22-06\": expected \"HH:MM-HH:MM\"",
        ),
        (
            "every = \"daily\"",
            "key \"every\" in [[client]] c1: \"daily\": expected a number",
        ),
        (
            "blackout = [\"00:00-24:00\"]",
            "leave no minute of the day to start a pull",
        ),
    ] {
        let clients = f.client("c1", None, extra);
        let config = f.config(&["create", "::x", "DATA"], &clients);
        let out = f.server(&["check-config", "--config"]).arg(&config).output();
        out.assert_code(200);
        assert!(out.stderr_text().contains(expected), "{}", out.describe());
    }
}

#[test]
fn check_config_connect_reports_each_client() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    f.init("good", false);
    let mut clients = f.client("good", Some("alias-good"), "");
    clients.push_str(&f.client(
        "wrong-key",
        None,
        &format!("known_hosts = {}", toml_str(wrong_known_hosts(&f))),
    ));
    clients.push_str(&f.client("no-repo", None, ""));
    let config = f.config(&["create", "::x", "DATA"], &clients);
    let out = f.server(&["check-config", "--config"]).arg(&config).output();
    out.assert_code(0);
    let out = f
        .server(&["check-config", "--connect", "--config"])
        .arg(&config)
        .output();
    out.assert_code(210);
    let text = out.stdout_text();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}: {}", out.describe()))
            .to_owned()
    };
    let good = line("good");
    assert!(good.starts_with("good: ok: relay "), "{}", out.describe());
    assert!(
        good.contains("borg 1.") && good.contains("forwarding allowed"),
        "{good}"
    );
    assert!(line("wrong-key").starts_with("wrong-key: FAILED (210)"), "{text}");
    assert!(
        line("no-repo").contains("does not exist on this server"),
        "{text}"
    );
    f.assert_nothing_left();
}

#[test]
fn sigint_stops_every_client_and_leaves_nothing_running() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    let mut clients = String::new();
    for name in ["s1", "s2", "s3", "s4"] {
        f.init(name, false);
        clients.push_str(&f.client(name, None, ""));
    }
    // Enough incompressible data that the backups are still running when the signal comes (a
    // borg blocked outside the repository, e.g. opening a FIFO, would only notice the closed
    // session at its next request: stopping it needs sshd to deliver the signal).
    let big = f.dir().join("big");
    fs::create_dir(&big).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..4 {
        let mut v = vec![0u8; 8 << 20];
        for b in v.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        fs::write(big.join(format!("f{i}")), v).unwrap();
    }
    borg_pull_testkit::sshd::chown_to_login_user(&big);
    let config = f.config(&["create", "::interrupted", &big.to_string_lossy()], &clients);
    let mut run = f
        .server(&["run", "--jobs", "2", "--config"])
        .arg(&config)
        .spawn(f.dir().join("run.log"));
    let needle = f.repos_dir.as_os_str().as_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let serving = borg_pull_testkit::processes_mentioning(&needle)
            .into_iter()
            .filter(|(_, c)| c.contains("borg serve "))
            .count();
        if serving == 2 {
            break;
        }
        assert!(run.is_running(), "run ended early:\n{}", run.report());
        assert!(
            Instant::now() < deadline,
            "two borg serve never ran:\n{}",
            run.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.signal("INT");
    let status = run.wait_exit();
    assert_eq!(status.code(), Some(202), "{}", run.report());
    let log = run.log();
    for name in ["s1", "s2", "s3", "s4"] {
        assert!(
            log.lines().any(|l| l.starts_with(name) && l.contains("202")),
            "{name}: {log}"
        );
    }
    f.assert_nothing_left();
}

/// Retention runs on the server after the client's append-only create: `prune` keeps what the
/// policy says, `compact` and `check` run, the state and the textfile record the run, and
/// `status` (repositories only) sees a fresh archive.
#[test]
fn run_prunes_on_the_server_and_status_sees_the_result() {
    let f = Fleet::new();
    f.init("keeper", false);
    let repo = f.repo("keeper");
    for day in 1..=5 {
        let archive = format!("{}::old-{day}", repo.display());
        let stamp = format!("2026-01-0{day}T12:00:00");
        let args: [&std::ffi::OsStr; 6] = [
            "create".as_ref(),
            "--timestamp".as_ref(),
            stamp.as_ref(),
            archive.as_ref(),
            f.data.as_os_str(),
            "--one-file-system".as_ref(),
        ];
        assert_ok(&f.local_borg(&args), "borg create --timestamp");
    }
    let client = f.client(
        "keeper",
        None,
        "prune = { keep_daily = 2 }\ncompact = true\ncheck_every_runs = 1\nmax_age = \"1h\"",
    );
    let config = f.config(&["create", "::fleet-{now}", "DATA"], &client);
    let prom = f.dir().join("borg_pull.prom");
    let text = fs::read_to_string(&config).unwrap().replacen(
        "jobs = 2\n",
        &format!("jobs = 2\nprometheus = {}\n", toml_str(&prom)),
        1,
    );
    fs::write(&config, text).unwrap();

    let out = f.server(&["run", "--json", "--config"]).arg(&config).output();
    out.assert_code(0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json[0]["retention_errors"],
        serde_json::json!([]),
        "{}",
        out.describe()
    );
    assert_eq!(
        json[0]["retention"],
        serde_json::json!({"status": "ran", "prune_rc": 0, "compact_rc": 0, "check_rc": 0}),
        "{}",
        out.describe()
    );
    // keep_daily = 2: today's new archive and the newest of the faked days.
    let list = f.local_borg(&["list".as_ref(), "--short".as_ref(), repo.as_os_str()]);
    assert_ok(&list, "borg list");
    let mut names: Vec<String> = list.stdout_text().lines().map(str::to_owned).collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[1], "old-5", "{names:?}");
    assert!(names[0].starts_with("fleet-"), "{names:?}");
    let log = out.stderr_text();
    assert!(
        log.contains("retention done: prune_rc=0 compact_rc=0 check_rc=0"),
        "{}",
        out.describe()
    );
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dir().join("state/keeper.json")).unwrap()).unwrap();
    assert_eq!(state["runs_since_check"], 0, "the check ran: {state}");
    assert_eq!(state["last_check"][1], true, "{state}");
    let metrics = fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("borg_pull_last_success_timestamp_seconds{client=\"keeper\"}"),
        "{metrics}"
    );
    // The run's retention steps and the repository's size (read after the run) are there too.
    for step in ["prune", "compact", "check"] {
        let sample = format!("borg_pull_retention_last_success{{client=\"keeper\",step=\"{step}\"}} 1\n");
        assert!(metrics.contains(&sample), "no {sample:?} in\n{metrics}");
    }
    assert!(
        metrics.contains("borg_pull_repository_unique_csize_bytes{client=\"keeper\"} "),
        "{metrics}"
    );

    let out = f.server(&["status", "--config"]).arg(&config).output();
    out.assert_code(0);
    let line = out
        .stdout_text()
        .lines()
        .find(|l| l.starts_with("keeper"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("fleet-"), "{}", out.describe());
    f.assert_nothing_left();
}

/// Ctrl-C while retention runs on the server stops it at once: the hanging `borg prune` (a
/// stand-in that never ends) is killed with its process group, nothing is left running, and the
/// summary says the retention was stopped.
#[test]
fn sigint_during_retention_kills_the_servers_borg() {
    let f = Fleet::new();
    f.init("slow", false);
    let marker = f.dir().join("prune-started");
    let wrapper = f.dir().join("server-borg");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in prune) : > '{}'; while :; do sleep 1; done;; esac\nexec borg \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let client = f.client("slow", None, "prune = { keep_daily = 1 }");
    let config = f.config(&["create", "::retention-{now}", "DATA"], &client);
    let text = fs::read_to_string(&config).unwrap().replacen(
        "jobs = 2\n",
        &format!("jobs = 2\nborg = {}\n", toml_str(&wrapper)),
        1,
    );
    fs::write(&config, text).unwrap();
    let mut run = f
        .server(&["run", "--json", "--config"])
        .arg(&config)
        .spawn(f.dir().join("run.log"));
    borg_pull_testkit::wait_until("borg prune to start on the server", || {
        assert!(run.is_running(), "run ended early:\n{}", run.report());
        marker.exists()
    });
    run.signal("INT");
    let status = run.wait_exit();
    assert_ne!(status.code(), Some(0), "{}", run.report());
    assert!(
        run.log().contains("retention stopped: interrupted"),
        "{}",
        run.report()
    );
    // The stand-in prune (its argv names the test's directory) is gone with its group.
    f.assert_nothing_left();
}

/// The archive names in `repo`, sorted.
fn archives(f: &Fleet, repo: &Path) -> Vec<String> {
    let list = f.local_borg(&["list".as_ref(), "--short".as_ref(), repo.as_os_str()]);
    assert_ok(&list, "borg list");
    let mut names: Vec<String> = list.stdout_text().lines().map(str::to_owned).collect();
    names.sort();
    names
}

/// Adds archive `name` to `repo` from this server.
fn local_archive(f: &Fleet, repo: &Path, name: &str) {
    let spec = format!("{}::{name}", repo.display());
    let out = f.local_borg(&["create".as_ref(), spec.as_ref(), f.data.as_os_str()]);
    assert_ok(&out, "borg create");
}

/// The log line of `client` that contains `what`.
fn log_line<'a>(log: &'a str, client: &str, what: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(what) && l.contains(&format!("client={client}")))
        .unwrap_or_else(|| panic!("no {what:?} line for {client} in:\n{log}"))
}

/// In logs (stderr not a terminal), against the real sshd and borg: borg's `--progress` lines
/// (carriage returns) never reach the log as they came, every field is plain (no Rust debug
/// text), sizes read `1.9 KiB`; retention runs where the job made an archive and says why not
/// where it did not: a `list` job ("no new archive") and a failed pull ("the job failed").
#[test]
fn run_logs_plain_fields_and_says_why_retention_was_skipped() {
    let f = Fleet::new();
    for name in ["maker", "lister", "failing"] {
        f.init(name, name == "maker");
        local_archive(&f, &f.repo(name), "before");
    }
    let retention = "prune = { keep_last = 1 }\ncompact = true";
    let mut clients = f.client("maker", None, retention);
    clients.push_str(&f.client("lister", None, &format!("{retention}\nargs = [\"list\"]")));
    clients.push_str(&f.client(
        "failing",
        Some("127.0.0.1"),
        &format!("{retention}\nport = {}", closed_port()),
    ));
    let config = f.config(
        &["create", "--progress", "--stats", "::made-{now}", "DATA"],
        &clients,
    );
    let out = f.server(&["run", "--json", "--config"]).arg(&config).output();
    out.assert_code(213);
    let log = out.stderr_text();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON: {e}: {}", out.describe()));
    let by_name = |name: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|r| r["client"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json}"))
            .clone()
    };
    let (maker, lister, failing) = (by_name("maker"), by_name("lister"), by_name("failing"));
    assert_eq!(
        maker["retention"],
        serde_json::json!({"status": "ran", "prune_rc": 0, "compact_rc": 0, "check_rc": null}),
        "{}",
        out.describe()
    );
    assert_eq!(
        lister["retention"],
        serde_json::json!({"status": "skipped", "reason": "no new archive"}),
        "{}",
        out.describe()
    );
    assert_eq!(
        failing["retention"],
        serde_json::json!({"status": "skipped", "reason": "the job failed"}),
        "{}",
        out.describe()
    );
    for row in [&maker, &lister, &failing] {
        assert_eq!(row["retention_errors"], serde_json::json!([]), "{row}");
    }
    // Exact bytes in the JSON, a readable size in the log.
    let sent = maker["bytes_sent"].as_u64().unwrap();
    assert!(sent > 1024, "{maker}");

    // keep_last = 1 after the create: only the new archive; the list job pruned nothing.
    let made = archives(&f, &f.repo("maker"));
    assert!(made.len() == 1 && made[0].starts_with("made-"), "{made:?}");
    assert_eq!(archives(&f, &f.repo("lister")), ["before"]);
    assert_eq!(archives(&f, &f.repo("failing")), ["before"]);

    // The log: plain fields, one line each.
    assert_no_debug_text(&log, "the log");
    assert!(!log.contains('\r'), "a carriage return in the log:\n{log:?}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a {longest}-byte log line:\n{log}");
    // borg did draw progress (its "Initializing cache transaction" lines end in \r), and the
    // lines it finished with \n are all there.
    assert!(log.contains("maker: Archive name: made-"), "{log}");
    let finished = log_line(&log, "maker", "pull finished");
    assert!(finished.contains(" rc=0 "), "{finished}");
    let size = finished
        .split(" sent=")
        .nth(1)
        .and_then(|rest| rest.split(" duration=").next())
        .unwrap_or_default();
    assert!(is_human_size(size), "sent={size:?} in {finished}");
    let duration = finished.split(" duration=").nth(1).unwrap_or_default();
    assert!(
        duration
            .split_whitespace()
            .next()
            .is_some_and(|d| d.ends_with('s')),
        "{finished}"
    );
    assert!(
        log_line(&log, "maker", "retention done").contains("retention done: prune_rc=0 compact_rc=0"),
        "{log}"
    );
    log_line(&log, "lister", "retention: skipped, no new archive");
    log_line(&log, "failing", "retention: skipped, the job failed");
    assert!(
        log_line(&log, "failing", "pull failed").contains(" code=213 "),
        "{log}"
    );
    f.assert_nothing_left();
}

/// `s` with ANSI escape sequences (CSI and OSC) removed.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                for c in chars.by_ref() {
                    if c == '\x07' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A single-quoted POSIX shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// On a terminal (a real pseudo-terminal from util-linux `script`), `run` draws one line per
/// running client (name, phase, time, borg's latest progress text) in place, then clears it and
/// prints the summary. borg on the clients is held (a wrapper waits for a file the test writes
/// once it has seen both lines), so what is asserted was on the screen whatever the timing.
#[test]
fn run_on_a_terminal_draws_a_live_line_per_client() {
    if !borg_pull_testkit::require_tool("script") {
        return;
    }
    let f = Fleet::new();
    let release = f.dir().join("release");
    let wrapper = f.relay.with_file_name("held-borg");
    // Bounded: at most 120 s of waiting; `--version` (the pull's version check) passes at once.
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec borg \"$@\";; esac\n\
             printf 'warming up 42%%\\r' >&2\n\
             i=0\nwhile [ ! -e {} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n\
             exec borg \"$@\"\n",
            sh_quote(&release.to_string_lossy())
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut clients = String::new();
    for name in ["live1", "live2"] {
        f.init(name, false);
        clients.push_str(&f.client(
            name,
            None,
            &format!(
                "remote_borg = {}\nprune = {{ keep_last = 1 }}",
                toml_str(&wrapper)
            ),
        ));
    }
    let config = f.config(&["create", "--progress", "::tty-{now}", "DATA"], &clients);
    let inner = format!(
        "stty cols 100 rows 30; exec {} run --config {}",
        sh_quote(&server_bin().to_string_lossy()),
        sh_quote(&config.to_string_lossy())
    );
    let mut cmd = TestCommand::new("script");
    cmd.args(["-qfec", &inner, "/dev/null"]);
    f.server_env(&mut cmd);
    let mut run = cmd.spawn(f.dir().join("tty.log"));
    let drawn = |name: &str, log: &str| {
        strip_ansi(log).lines().any(|l| {
            let l = l.trim_end_matches('\r');
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() >= 5
                && cells[0] == name
                && cells[1] == "create"
                && cells[2].ends_with('s')
                && l.ends_with("warming up 42%")
        })
    };
    borg_pull_testkit::wait_until("both clients' lines on the terminal", || {
        assert!(run.is_running(), "run ended early:\n{}", run.report());
        let log = run.log();
        drawn("live1", &log) && drawn("live2", &log)
    });
    fs::write(&release, b"").unwrap();
    let status = run.wait_exit();
    let screen = run.log();
    assert_eq!(status.code(), Some(0), "{}", run.report());
    assert!(
        screen.contains("borg-pull run: 0/2 done, 2 running, 0 waiting"),
        "{screen:?}"
    );
    // Redrawn in place: cursor up over the lines, cleared to the end of the screen.
    assert!(screen.contains("A\x1b[J"), "{screen:?}");
    // Every drawn line fits the 100 columns.
    let widest = strip_ansi(&screen)
        .split(['\n', '\r'])
        .filter(|l| l.starts_with("live") || l.starts_with("borg-pull run:"))
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    assert!(widest < 100, "a {widest}-column line");
    // The display is cleared before the summary, which is all that follows.
    let after = &screen[screen.rfind("\x1b[J").unwrap()..];
    let summary = strip_ansi(after).replace('\r', "");
    assert!(!summary.contains("borg-pull run:"), "{summary}");
    for name in ["live1", "live2"] {
        let cells = row(&summary[summary.find("client").unwrap_or(0)..], name);
        assert_eq!(cells[5], "0", "{summary}");
        assert_eq!(cells[6], "prune_rc=0", "{summary}");
        assert_eq!(archives(&f, &f.repo(name)).len(), 1);
    }
    assert_no_debug_text(&screen, "the terminal");
    f.assert_nothing_left();
}

/// When the repository cannot be listed (here the server's borg refuses `list`), whether the job
/// made an archive is unknown: retention is skipped, never run blind, and that is an error of the
/// run (201) naming borg's complaint, while the backup itself is there.
#[test]
fn retention_is_skipped_as_an_error_when_the_repository_cannot_be_listed() {
    let f = Fleet::new();
    f.init("blind", false);
    local_archive(&f, &f.repo("blind"), "before");
    let wrapper = f.dir().join("server-borg");
    fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$1\" in list) echo 'list refused by the test' >&2; exit 2;; esac\nexec borg \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let client = f.client("blind", None, "prune = { keep_last = 1 }");
    let config = f.config(&["create", "::blind-{now}", "DATA"], &client);
    let text = fs::read_to_string(&config).unwrap().replacen(
        "jobs = 2\n",
        &format!("jobs = 2\nborg = {}\n", toml_str(&wrapper)),
        1,
    );
    fs::write(&config, text).unwrap();
    let out = f.server(&["run", "--config"]).arg(&config).output();
    out.assert_code(201);
    let summary = out.stdout_text();
    let cells = row(&summary, "blind");
    assert_eq!(cells[5], "0", "{summary}");
    assert_eq!(cells[6], "skipped: cannot list the repository", "{summary}");
    assert!(
        cells[7].starts_with("201: retention: cannot tell whether the job created an archive: borg list exited with 2: list refused by the test"),
        "{summary}"
    );
    let log = out.stderr_text();
    assert!(
        log_line(&log, "blind", "retention: skipped, cannot tell").contains("list refused by the test"),
        "{log}"
    );
    // Nothing was pruned: the old archive and the new one.
    let names = archives(&f, &f.repo("blind"));
    assert_eq!(names.len(), 2, "{names:?}");
    f.assert_nothing_left();
}

/// A client's state file as `run` writes it: its last success `success_ago` seconds before
/// `now`, and a last attempt `attempt` = (seconds ago, outcome) after it, if any.
fn write_state(f: &Fleet, name: &str, now: u64, success_ago: Option<u64>, attempt: Option<(u64, &str)>) {
    let record = |ago: u64, rc: i32| {
        serde_json::json!({
            "started": now - ago, "duration_ms": 60_000, "archive": "earlier", "bytes_sent": 1000,
            "borg_rc": rc, "error": null,
        })
    };
    let success = success_ago.map(|ago| record(ago, 0));
    let (last_run, last_attempt, failures) = match attempt {
        Some((ago, outcome)) => (
            Some(record(ago, 2)),
            Some(serde_json::json!({ "ended": now - ago + 60, "outcome": outcome })),
            1,
        ),
        None => (
            success.clone(),
            success_ago.map(|ago| serde_json::json!({ "ended": now - ago + 60, "outcome": "succeeded" })),
            0,
        ),
    };
    let state = serde_json::json!({
        "last_run": last_run, "last_success": success, "runs_since_check": 0, "last_check": null,
        "failures_in_a_row": failures, "first_attempt": now - 40 * 86400, "last_attempt": last_attempt,
    });
    let dir = f.dir().join("state");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("{name}.json")), state.to_string()).unwrap();
}

/// `run --due` against the real sshd: the clock is set by the state files (last success 25 h
/// ago, 1 h ago; a failure 10 minutes ago) and by a blackout around the current hour of the
/// server's local time (TZ=Asia/Kolkata, UTC+05:30 all year, so local time is not UTC here).
/// Only the due clients are pulled; the others are logged and are not failures; `status` and the
/// textfile show each one's standing.
#[test]
fn run_due_pulls_only_the_clients_that_are_due() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    const KOLKATA: u64 = 5 * 3600 + 1800;
    let f = Fleet::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = (now + KOLKATA) % 86400 / 3600;
    let blackout = format!("blackout = [\"{hour:02}:00-{:02}:00\"]", (hour + 2) % 24);
    let mut clients = String::new();
    for (name, extra) in [
        ("stale", String::new()),
        ("fresh", String::new()),
        ("blacked-out", blackout),
        ("backing-off", "retry = \"1h\"".to_owned()),
        ("unreachable", format!("port = {}", closed_port())),
        ("new", String::new()),
    ] {
        f.init(name, false);
        // The unreachable one names its host so its own (closed) port counts.
        let host = (name == "unreachable").then_some("127.0.0.1");
        clients.push_str(&f.client(name, host, &extra));
    }
    let config = f.config(&["create", "::due-{now}", "DATA"], &clients);
    let prom = f.dir().join("borg_pull.prom");
    let text = fs::read_to_string(&config).unwrap().replacen(
        "jobs = 2\n",
        &format!("jobs = 2\nprometheus = {}\n", toml_str(&prom)),
        1,
    );
    fs::write(&config, text).unwrap();
    write_state(&f, "stale", now, Some(25 * 3600), None);
    write_state(&f, "fresh", now, Some(3600), None);
    write_state(&f, "blacked-out", now, Some(25 * 3600), None);
    write_state(&f, "backing-off", now, Some(30 * 3600), Some((600, "failed")));
    write_state(
        &f,
        "unreachable",
        now,
        Some(30 * 3600),
        Some((600, "unreachable")),
    );

    let out = f
        .server(&["run", "--due", "--config"])
        .arg(&config)
        .env("TZ", "Asia/Kolkata")
        .output();
    // The unreachable client is tried (no back-off for it) and fails: the run's worst code.
    out.assert_code(213);
    let summary = out.stdout_text();
    let log = out.stderr_text();
    for name in ["stale", "new"] {
        let cells = row(&summary, name);
        assert_eq!(
            (cells[5].as_str(), cells[7].as_str()),
            ("0", "-"),
            "{name}: {}",
            out.describe()
        );
        assert_eq!(archives(&f, &f.repo(name)).len(), 1, "{name} was pulled");
    }
    assert!(row(&summary, "unreachable")[7].starts_with("213: "), "{summary}");
    for name in ["fresh", "blacked-out", "backing-off"] {
        assert!(
            !summary.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "{name} is not due: {}",
            out.describe()
        );
        assert!(archives(&f, &f.repo(name)).is_empty(), "{name} was not pulled");
        let line = log_line(&log, name, "not due");
        assert!(line.contains("next due 20"), "{line}");
    }
    assert!(
        log_line(&log, "backing-off", "not due").contains("health=failing"),
        "{log}"
    );
    assert!(log_line(&log, "fresh", "not due").contains("health=ok"), "{log}");
    assert!(
        log_line(&log, "blacked-out", "not due").contains("health=due"),
        "{log}"
    );
    assert!(
        summary.ends_with("due: 3 of 6 clients (3 not due)\n"),
        "{}",
        out.describe()
    );
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dir().join("state/unreachable.json")).unwrap()).unwrap();
    assert_eq!(state["last_attempt"]["outcome"], "unreachable", "{state}");
    assert_eq!(state["failures_in_a_row"], 2, "{state}");
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dir().join("state/stale.json")).unwrap()).unwrap();
    assert_eq!(state["last_attempt"]["outcome"], "succeeded", "{state}");

    let out = f
        .server(&["status", "--json", "--config"])
        .arg(&config)
        .env("TZ", "Asia/Kolkata")
        .output();
    let json: serde_json::Value =
        serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| panic!("JSON: {e}: {}", out.describe()));
    let by_name = |name: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {json}"))
            .clone()
    };
    let expect = [
        ("stale", "ok", 0, false),
        ("new", "ok", 0, false),
        ("fresh", "ok", 0, false),
        ("blacked-out", "due", 0, false),
        ("backing-off", "failing", 1, false),
        ("unreachable", "failing", 2, true),
    ];
    for (name, health, failures, due_now) in expect {
        let c = by_name(name);
        assert_eq!(
            (
                c["health"].as_str(),
                c["failures_in_a_row"].as_u64(),
                c["due_now"].as_bool()
            ),
            (Some(health), Some(failures), Some(due_now)),
            "{name}: {c}"
        );
    }
    // The back-off: 1 h after the failed attempt's end (10 minutes ago, it took a minute).
    assert_eq!(by_name("backing-off")["next_due"], now - 540 + 3600);
    // The blackout's end, in UTC.
    let local_midnight = (now + KOLKATA) / 86400 * 86400;
    let mut end = local_midnight + (hour + 2) * 3600 - KOLKATA;
    if end <= now {
        end += 86400;
    }
    assert_eq!(by_name("blacked-out")["next_due"], end);
    let fresh = by_name("fresh");
    assert_eq!(fresh["last_success"], now - 3600);
    assert!(
        fresh["last_success_age_seconds"].as_u64().unwrap() >= 3600,
        "{fresh}"
    );
    // A daily client pulled now is due again in 23 h 15 min (every, less its 3%).
    let next = by_name("stale")["next_due"].as_u64().unwrap();
    assert!(
        (now + 23 * 3600 + 900..now + 23 * 3600 + 900 + 600).contains(&next),
        "{next}"
    );
    let out = f
        .server(&["status", "--config"])
        .arg(&config)
        .env("TZ", "Asia/Kolkata")
        .output();
    let table = out.stdout_text();
    assert!(
        table.lines().next().unwrap_or_default().contains("HEALTH"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("backing-off"))
        .unwrap_or_default();
    assert!(line.contains("failing"), "{table}");

    let metrics = fs::read_to_string(&prom).unwrap();
    for sample in [
        "borg_pull_client_health{client=\"backing-off\",state=\"failing\"} 1\n",
        "borg_pull_client_health{client=\"backing-off\",state=\"ok\"} 0\n",
        "borg_pull_client_health{client=\"stale\",state=\"ok\"} 1\n",
        "borg_pull_client_failures_in_a_row{client=\"unreachable\"} 2\n",
        &format!(
            "borg_pull_client_next_due_timestamp_seconds{{client=\"backing-off\"}} {}\n",
            now - 540 + 3600
        ),
    ] {
        assert!(metrics.contains(sample), "no {sample:?} in\n{metrics}");
    }
    f.assert_nothing_left();
}

/// `promtool check metrics` on `file` (Debian's, put in place by scripts/install-deps); any
/// finding, lint included, fails.
fn promtool_check_file(file: &Path) {
    let promtool =
        std::env::var_os("BORG_PULL_PROMTOOL").unwrap_or_else(|| "/opt/borg-pull/bin/promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(fs::File::open(file).unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/install-deps installs it)",
                Path::new(&promtool).display()
            )
        });
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How often the logging borg wrapper ran `borg list --json --last 1` and `borg info --json` on
/// `repo` (one argv per line of `log`).
fn status_reads(log: &Path, repo: &Path) -> (usize, usize) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let repo = format!(" {}", repo.display());
    let count = |start: &str| {
        text.lines()
            .filter(|l| l.starts_with(start) && l.ends_with(&repo))
            .count()
    };
    (count("list --json --last 1 "), count("info --json "))
}

/// An hourly `run --due` against the real sshd and borg, with `[server] borg` a wrapper that logs
/// each argv and execs the real borg: only the due client's repository is read at the end, plus
/// the one whose stored reading is older than a day and the one whose state file has no reading;
/// the client with a current reading is not read, and the textfile still carries every client's
/// newest archive and sizes as a fresh `status --json` reads them.
#[test]
fn run_due_reads_only_the_repositories_that_may_have_changed() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let names = ["due", "current", "old", "unread", "unreachable"];
    let mut clients = String::new();
    for name in names {
        f.init(name, false);
        let (host, extra) = match name {
            // Due (its last success 25 h ago) but off: its repository stays as read.
            "unreachable" => (Some("127.0.0.1"), format!("port = {}", closed_port())),
            _ => (None, String::new()),
        };
        clients.push_str(&f.client(name, host, &extra));
    }
    let config = f.config(&["create", "::hourly-{now}", "DATA"], &clients);
    let prom = f.dir().join("borg_pull.prom");
    let log = f.dir().join("borg-argv.log");
    let wrapper = f.dir().join("logging-borg");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexec borg \"$@\"\n",
            sh_quote(&log.to_string_lossy())
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let text = fs::read_to_string(&config).unwrap().replacen(
        "jobs = 2\n",
        &format!(
            "jobs = 2\nprometheus = {}\nborg = {}\n",
            toml_str(&prom),
            toml_str(&wrapper)
        ),
        1,
    );
    fs::write(&config, text).unwrap();
    // The three not due were pulled an hour ago; their repositories hold that archive.
    for name in &names[1..] {
        local_archive(&f, &f.repo(name), "an-hour-ago");
        let ago = if *name == "unreachable" { 25 * 3600 } else { 3600 };
        write_state(&f, name, now, Some(ago), None);
    }

    // `status` reads every repository and stores each reading beside the records.
    // (The due client's repository is empty: stale, so not a success.)
    f.server(&["status", "--config"]).arg(&config).output();
    for name in names {
        assert_eq!(status_reads(&log, &f.repo(name)), (1, 1), "{name}");
    }
    let state_file = |name: &str| f.dir().join("state").join(format!("{name}.json"));
    let state = |name: &str| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(state_file(name)).unwrap()).unwrap()
    };
    let current_reading = state("current")["repo_reading"].clone();
    assert!(
        current_reading["size"]["unique_csize"].as_u64().is_some(),
        "{current_reading}"
    );
    assert_eq!(state("current")["last_success"]["archive"], "earlier");
    // "old": its reading is a day and an hour old; "unread": a state file from before readings.
    let mut old = state("old");
    old["repo_reading"]["at"] = (now - 25 * 3600).into();
    fs::write(state_file("old"), old.to_string()).unwrap();
    write_state(&f, "unread", now, Some(3600), None);
    fs::remove_file(&log).unwrap();

    let unreachable_reading = state("unreachable")["repo_reading"].clone();
    let out = f.server(&["run", "--due", "--config"]).arg(&config).output();
    assert!(
        out.stdout_text().ends_with("due: 2 of 5 clients (3 not due)\n"),
        "{}",
        out.stdout_text()
    );
    let summary = out.stdout_text();
    assert_eq!(row(&summary, "due")[7], "-", "{summary}");
    assert_ne!(row(&summary, "unreachable")[7], "-", "{summary}");
    let reads: Vec<(usize, usize)> = names.iter().map(|n| status_reads(&log, &f.repo(n))).collect();
    assert_eq!(
        reads,
        [(1, 1), (0, 0), (1, 1), (1, 1), (0, 0)],
        "due, current, old, unread, unreachable\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(state("current")["repo_reading"], current_reading);
    assert_eq!(state("unreachable")["repo_reading"], unreachable_reading);
    assert_eq!(state("unreachable")["last_attempt"]["outcome"], "unreachable");
    for name in ["due", "old", "unread"] {
        let at = state(name)["repo_reading"]["at"].as_u64().unwrap();
        assert!(at >= now, "{name}: {at}");
    }
    promtool_check_file(&prom);

    // Every client's figures are what a fresh reading gives.
    let metrics = fs::read_to_string(&prom).unwrap();
    let out = f.server(&["status", "--json", "--config"]).arg(&config).output();
    let fresh: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    for name in names {
        let s = fresh
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        let time = s["newest_time"].as_u64().unwrap();
        assert!(time + 2 * 3600 > now, "{name}: {s}");
        let mut expected = vec![format!(
            "borg_pull_newest_archive_timestamp_seconds{{client=\"{name}\"}} {time}\n"
        )];
        for field in ["unique_csize", "unique_size", "total_csize", "total_size"] {
            let bytes = s["repository_size"][field].as_u64().unwrap();
            expected.push(format!(
                "borg_pull_repository_{field}_bytes{{client=\"{name}\"}} {bytes}\n"
            ));
        }
        for sample in expected {
            assert!(metrics.contains(&sample), "no {sample:?} in\n{metrics}");
        }
    }
    f.assert_nothing_left();
}
