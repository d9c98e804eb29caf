//! The run history and the status page, end to end: the real `borg-pull-server run` against a
//! real OpenSSH sshd and real borg records each client's run and writes the page
//! (`[server] html`), `status --history` shows the records, and the page is loaded in a real
//! headless browser (Debian's chromium): it loads without a console message (no error, no
//! Content-Security-Policy violation), every client is in the DOM with its state, and hostile
//! text is text in the DOM, never an element.
//!
//! `BORG_PULL_SCREENSHOT=FILE` makes the demo test also save its screenshot there
//! (`scripts/screenshot-status-page`, for the README).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use borg_pull_fleet::history::{History, HistoryRecord};
use borg_pull_fleet::state::{ClientState, Outcome as Attempt, RunRecord, StateStore};
use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand, TestDir};

/// The error text a hostile client could make us record: markup, an SVG breakout, quotes.
const HOSTILE: &str = "<img src=x onerror=alert(1)></svg><script>alert(2)</script> \"quoted\" & 'single'";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// Debian's chromium, or `None` (skip) when missing; a failure under BORG_PULL_REQUIRE_DEPS=1.
fn chromium() -> Option<PathBuf> {
    if !borg_pull_testkit::require_tool("chromium") {
        return None;
    }
    borg_pull_testkit::find_on_path("chromium")
}

/// What chromium made of a page: its DOM as serialised after loading, and its log.
struct Loaded {
    dom: String,
    log: String,
}

/// Loads `page` in headless chromium (its own profile in `scratch`, so nothing of the machine's
/// is read or written) with `mode` (`--dump-dom`, or `--screenshot=FILE`), with the console
/// logged to stderr.
fn load(chromium: &Path, scratch: &Path, page: &Path, mode: &[String]) -> Outcome {
    let profile = scratch.join(format!("chromium-profile-{}", mode.len()));
    let _ = fs::remove_dir_all(&profile);
    fs::create_dir_all(&profile).unwrap();
    let mut cmd = TestCommand::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(mode)
    .arg(format!("file://{}", page.display()))
    .env("HOME", scratch)
    .env("XDG_CONFIG_HOME", scratch.join("xdg-config"))
    .env("XDG_CACHE_HOME", scratch.join("xdg-cache"));
    let out = cmd.output();
    assert_ok(&out, "chromium");
    out
}

/// Loads `page` and returns its DOM; fails on any console message (a script error, a blocked
/// resource or a Content-Security-Policy violation all are one).
fn dom_of(chromium: &Path, scratch: &Path, page: &Path) -> Loaded {
    let out = load(chromium, scratch, page, &["--dump-dom".to_owned()]);
    let loaded = Loaded {
        dom: out.stdout_text(),
        log: out.stderr_text(),
    };
    assert_clean_console(&loaded.log);
    assert!(
        loaded.dom.contains("<table id=\"fleet\">"),
        "the page did not load:\n{}",
        out.describe()
    );
    loaded
}

fn assert_clean_console(log: &str) {
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught") || l.contains("Failed to load resource"))
        .collect();
    assert!(
        console.is_empty(),
        "console messages while loading the page:\n{}",
        console.join("\n")
    );
}

/// The `data-health` of client `name`'s row in the DOM.
fn health_in_dom(dom: &str, name: &str) -> String {
    let marker = "<tr class=\"client health-";
    let row = dom
        .split(marker)
        .skip(1)
        .find(|row| row.contains(&format!("data-client=\"{name}\"")))
        .unwrap_or_else(|| panic!("no row for {name} in the DOM:\n{dom}"));
    let class = row.split('"').next().unwrap().to_owned();
    let attr = row
        .split("data-health=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let badge = row
        .split("<span class=\"badge\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        (&class, &badge),
        (&attr, &attr),
        "{name}'s row: class, badge and data-health agree"
    );
    attr
}

/// The names of the clients with a row in the DOM, in order.
fn rows_in_dom(dom: &str) -> Vec<String> {
    dom.split("<tr class=\"client ")
        .skip(1)
        .filter_map(|row| {
            row.split("data-client=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// One sshd standing for every client, a relay it can run, a data set and repositories.
struct Fleet {
    sshd: Sshd,
    relay: PathBuf,
    data: PathBuf,
    server_base: PathBuf,
    home: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let relay = borg_pull_testkit::reachable_relay(&d);
        let data = d.join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("hello.txt"), "hello from the page test\n".repeat(2000)).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&data);
        let server_base = d.join("server-base");
        fs::create_dir(&server_base).unwrap();
        let home = d.join("home");
        fs::create_dir(&home).unwrap();
        Fleet {
            sshd,
            relay,
            data,
            server_base,
            home,
        }
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.dir().join(format!("repo-{name}"))
    }

    fn init(&self, name: &str) {
        let mut cmd = TestCommand::new("borg");
        cmd.args(["init", "-e", "none"])
            .arg(self.repo(name))
            .env("BORG_BASE_DIR", &self.server_base)
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_REPO");
        assert_ok(&cmd.output(), "borg init");
    }

    /// The config: `[server]` with the page, then a client per name (`unreachable` on a closed
    /// port).
    fn config(&self, names: &[&str]) -> PathBuf {
        let mut text = format!(
            "[server]\nstate_dir = {}\njobs = 2\nhtml = {}\n\n[defaults]\nuser = {}\nidentity = {}\n\
             known_hosts = {}\nrelay = {}\nargs = [\"create\", \"--stats\", \"::a-{{now:%Y-%m-%dT%H:%M:%S.%f}}\", {}]\n\
             env = {{ BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK = \"yes\" }}\n",
            toml_str(self.dir().join("state")),
            toml_str(self.page()),
            toml_str(&self.sshd.user),
            toml_str(self.sshd.client_key()),
            toml_str(&self.sshd.known_hosts),
            toml_str(&self.relay),
            toml_str(&self.data),
        );
        for name in names {
            self.init(name);
            let base = self.dir().join(format!("client-base-{name}"));
            fs::create_dir(&base).unwrap();
            borg_pull_testkit::sshd::chown_to_login_user(&base);
            let port = if *name == "unreachable" {
                closed_port()
            } else {
                self.sshd.port
            };
            text.push_str(&format!(
                "\n[[client]]\nname = {}\nhost = \"127.0.0.1\"\nport = {port}\nrepo = {}\n\
                 env = {{ BORG_BASE_DIR = {} }}\n",
                toml_str(name),
                toml_str(self.repo(name)),
                toml_str(&base)
            ));
        }
        let path = self.dir().join("fleet.toml");
        fs::write(&path, text).unwrap();
        path
    }

    fn page(&self) -> PathBuf {
        self.dir().join("www/status.html")
    }

    fn server(&self, args: &[&str], config: &Path) -> Outcome {
        let mut cmd = TestCommand::new(server_bin());
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .env("HOME", &self.home)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .attach_log("sshd log", self.sshd.log_path());
        cmd.output()
    }
}

/// A closed port on 127.0.0.1.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_real_fleet_run_records_history_and_writes_a_page_chromium_loads() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let Some(chromium) = chromium() else {
        return;
    };
    let f = Fleet::new();
    fs::create_dir(f.dir().join("www")).unwrap();
    let config = f.config(&["c1", "c2", "unreachable"]);
    for round in 1..=2 {
        let run = f.server(&["run"], &config);
        run.assert_code(213);
        let records = History::at(&f.dir().join("state")).load("c1");
        assert_eq!(records.len(), round, "one record per run: {records:?}");
    }
    // The run's figures are in the history, borg's --stats sizes too.
    for name in ["c1", "c2"] {
        let records = History::at(&f.dir().join("state")).load(name);
        for r in &records {
            assert!(r.succeeded(), "{name}: {r:?}");
            assert!(r.bytes_sent > 0 && r.duration_ms > 0, "{name}: {r:?}");
            let original = r.original_size.expect("--stats original size");
            assert!(original >= 50_000, "{name}: the data set is 50 KB: {r:?}");
            assert!(
                r.deduplicated_size.is_some() && r.compressed_size.is_some(),
                "{r:?}"
            );
        }
        // The second run found everything already there.
        assert!(
            records[1].deduplicated_size < records[0].deduplicated_size,
            "{records:?}"
        );
    }
    // `run --due` pulls only the client that is due (the unreachable one, which has no
    // back-off): only it gets a record.
    let due = f.server(&["run", "--due"], &config);
    due.assert_code(213);
    let state = f.dir().join("state");
    assert_eq!(History::at(&state).load("c1").len(), 2, "{}", due.describe());
    assert_eq!(History::at(&state).load("c2").len(), 2);
    let failed = History::at(&state).load("unreachable");
    assert_eq!(failed.len(), 3, "{}", due.describe());
    assert!(
        failed
            .iter()
            .all(|r| r.error.as_ref().is_some_and(|e| e.0 == 213)),
        "{failed:?}"
    );
    let file = f.dir().join("state/history/c1.jsonl");
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(
        fs::metadata(f.dir().join("state/history")).unwrap().mode() & 0o7777,
        0o700
    );

    // status --history: the table and the records.
    let table = f.server(&["status", "--history", "c1"], &config);
    assert_ok(&table, "status --history");
    let lines: Vec<String> = table.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{}", table.describe());
    assert!(
        lines[0].starts_with("start (UTC)") && lines[0].contains("deduplicated"),
        "{lines:?}"
    );
    let json = f.server(&["status", "--history", "unreachable", "--json"], &config);
    assert_ok(&json, "status --history --json");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["error"]["code"], 213, "{records:?}");
    let unknown = f.server(&["status", "--history", "nobody"], &config);
    unknown.assert_code(200);
    assert!(
        unknown.stderr_text().contains("\"nobody\""),
        "{}",
        unknown.describe()
    );

    // The page `run` wrote: readable by all, no secret, every client with its state.
    let page = f.page();
    assert_eq!(fs::metadata(&page).unwrap().mode() & 0o7777, 0o644);
    let html = fs::read_to_string(&page).unwrap();
    for secret in [
        f.sshd.client_key().to_string_lossy().into_owned(),
        f.dir().to_string_lossy().into_owned(),
    ] {
        assert!(!html.contains(&secret), "the page names {secret}");
    }
    let loaded = dom_of(&chromium, f.dir(), &page);
    assert_eq!(rows_in_dom(&loaded.dom), ["c1", "c2", "unreachable"]);
    assert_eq!(health_in_dom(&loaded.dom, "c1"), "ok");
    assert_eq!(health_in_dom(&loaded.dom, "c2"), "ok");
    assert_eq!(health_in_dom(&loaded.dom, "unreachable"), "failing");
    assert_eq!(
        loaded.dom.matches("<svg class=\"chart\"").count(),
        9,
        "three charts per client"
    );
    // The schedule's count, and the last run's error, in the failing client's row.
    let row = loaded
        .dom
        .split("data-client=\"unreachable\"")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap();
    assert!(row.contains("<td class=\"num failures\">3</td>"), "{row}");
    assert!(row.contains("<td class=\"error\">213: "), "{row}");

    // status --html writes the same page elsewhere.
    let other = f.dir().join("other.html");
    let status = f.server(&["status", "--html", other.to_str().unwrap()], &config);
    // unreachable's repository has no archive: stale (208).
    status.assert_code(208);
    let again = dom_of(&chromium, f.dir(), &other);
    assert_eq!(rows_in_dom(&again.dom), ["c1", "c2", "unreachable"]);
    assert_eq!(health_in_dom(&again.dom, "unreachable"), "failing");
}

/// A config of clients `names` whose repositories do not exist (the page reads only the state
/// directory), state in `t`.
fn offline_config(t: &TestDir, names: &[&str], page: &Path) -> PathBuf {
    let mut toml = format!(
        "[server]\nstate_dir = {}\nhtml = {}\n\n[defaults]\nargs = [\"create\", \"::{{now}}\", \"/etc\"]\n",
        toml_str(t.join("state")),
        toml_str(page),
    );
    for name in names {
        toml.push_str(&format!(
            "\n[[client]]\nname = {name:?}\nhost = \"{name}.invalid\"\nrepo = {}\n",
            toml_str(t.join(format!("no-repo-{name}")))
        ));
    }
    let path = t.join("fleet.toml");
    fs::write(&path, toml).unwrap();
    path
}

/// `status --html` (the config's page), which must write it whatever the repositories say.
fn status_html(t: &TestDir, config: &Path) -> Outcome {
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd).args(["status", "--html", "--config"]).arg(config);
    cmd.output()
}

/// A run at `started` that succeeded with these sizes, or failed with `error`.
fn run_record(started: u64, error: Option<&str>, size: u64) -> (RunRecord, HistoryRecord) {
    let failed = error.is_some();
    let record = HistoryRecord {
        started,
        duration_ms: 40_000 + size / 100_000,
        bytes_sent: size / 50,
        original_size: (!failed).then_some(size),
        compressed_size: None,
        deduplicated_size: (!failed).then_some(size / 40 + (started % 7) * 1_000_000),
        borg_rc: (!failed).then_some(0),
        error: error.map(|e| (213, e.to_owned())),
    };
    let run = RunRecord {
        started,
        duration_ms: record.duration_ms,
        archive: (!failed).then(|| format!("a-{started}")),
        bytes_sent: record.bytes_sent,
        borg_rc: record.borg_rc,
        error: record.error.clone(),
    };
    (run, record)
}

/// Records `runs` (start, error) for client `name` as `run` would: the history and the state.
fn record_runs(state_dir: &Path, name: &str, runs: &[(u64, Option<&str>)], size: u64) {
    let store = StateStore::open(state_dir).unwrap();
    let history = History::open(state_dir).unwrap();
    let mut state = ClientState::default();
    for (i, (started, error)) in runs.iter().enumerate() {
        let (run, record) = run_record(*started, *error, size + i as u64 * size / 50);
        history.append(name, &record).unwrap();
        if error.is_none() {
            state.last_success = Some(run.clone());
        }
        let outcome = if error.is_none() {
            Attempt::Succeeded
        } else {
            Attempt::Failed
        };
        state.record_attempt(outcome, run.started, run.started + run.duration_ms / 1000);
        state.last_run = Some(run);
    }
    store.save(name, &state).unwrap();
}

#[test]
fn hostile_error_text_is_text_in_the_dom() {
    let Some(chromium) = chromium() else {
        return;
    };
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let t = TestDir::new();
    let page = t.join("status.html");
    let config = offline_config(&t, &["good", "evil"], &page);
    let now = now();
    record_runs(&t.join("state"), "good", &[(now - 7200, None)], 1_000_000_000);
    record_runs(
        &t.join("state"),
        "evil",
        &[(now - 90_000, None), (now - 3600, Some(HOSTILE))],
        1_000_000_000,
    );
    let out = status_html(&t, &config);
    // The repositories do not exist (209); the page is written all the same.
    out.assert_code(209);
    let html = fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<img") && !html.contains("<script"),
        "unescaped in the file"
    );
    let loaded = dom_of(&chromium, t.path(), &page);
    assert_eq!(rows_in_dom(&loaded.dom), ["good", "evil"]);
    assert_eq!(health_in_dom(&loaded.dom, "good"), "ok");
    assert_eq!(health_in_dom(&loaded.dom, "evil"), "failing");
    // Not an element: no <img>, no <script> in the document chromium built ...
    for element in ["<img", "<script", "onerror=\"", "<svg class=\"chart\"><script"] {
        assert!(
            !loaded.dom.contains(element),
            "{element} in the DOM:\n{}",
            loaded.dom
        );
    }
    // ... but the text, in the evil row's error cell, as chromium serialises text.
    let shown = "&lt;img src=x onerror=alert(1)&gt;&lt;/svg&gt;&lt;script&gt;alert(2)&lt;/script&gt; \"quoted\" &amp; 'single'";
    assert!(
        loaded.dom.contains(shown),
        "the hostile text is not shown as text:\n{}",
        loaded.dom
    );
    assert_eq!(loaded.dom.matches("<svg class=\"chart\"").count(), 6);
}

/// A config cannot name a client `<img ...>` (names are letters, digits, `.`, `_`, `-`), so the
/// page writer itself is given one: the name is text in the DOM, in the row and its charts.
#[test]
fn a_hostile_client_name_is_text_in_the_dom() {
    use borg_pull_fleet::page::{write_page, PageClient};
    use borg_pull_fleet::schedule::Health;
    let Some(chromium) = chromium() else {
        return;
    };
    let t = TestDir::new();
    let page = t.join("status.html");
    let now = now();
    let (_, record) = run_record(now - 600, Some(HOSTILE), 0);
    let client = PageClient {
        name: HOSTILE.to_owned(),
        health: Health::Overdue,
        last_success: None,
        next_due: None,
        failures_in_a_row: 7,
        history: vec![record],
    };
    write_page(&page, &[client], now).unwrap();
    let loaded = dom_of(&chromium, t.path(), &page);
    for element in ["<img", "<script", "onerror=\""] {
        assert!(
            !loaded.dom.contains(element),
            "{element} in the DOM:\n{}",
            loaded.dom
        );
    }
    let text = "&lt;img src=x onerror=alert(1)&gt;&lt;/svg&gt;&lt;script&gt;alert(2)&lt;/script&gt;";
    // The row's link, the charts' heading and the error cell.
    assert!(loaded.dom.matches(text).count() >= 3, "{}", loaded.dom);
    assert_eq!(
        loaded.dom.matches("<tr class=\"client health-overdue\"").count(),
        1
    );
    assert_eq!(loaded.dom.matches("<svg class=\"chart\"").count(), 3);
}

/// The demo fleet of the README's screenshot: a client in each state, a month of history.
#[test]
fn demo_page_renders_in_chromium_and_screenshots() {
    let Some(chromium) = chromium() else {
        return;
    };
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let t = TestDir::new();
    let page = t.join("status.html");
    let names = ["web1", "db1", "laptop-anna", "nas", "build-03"];
    let config = offline_config(&t, &names, &page);
    let now = now();
    let day = 86_400;
    let nightly = |days: u64, last_ago: u64| -> Vec<(u64, Option<&'static str>)> {
        (0..days)
            .rev()
            .map(|d| (now - last_ago - d * day, None))
            .collect()
    };
    let state = t.join("state");
    record_runs(&state, "web1", &nightly(30, 3 * 3600), 4_200_000_000);
    let mut db = nightly(30, 4 * 3600);
    db[12].1 =
        Some("borg-pull: cannot connect to db1 (127.0.0.1:22): Connection refused; is sshd running there?");
    record_runs(&state, "db1", &db, 61_000_000_000);
    let mut laptop: Vec<(u64, Option<&str>)> = nightly(20, 27 * 3600);
    laptop.push((
        now - 2 * 3600,
        Some("borg-pull: cannot connect to laptop-anna: No route to host (is it on this network?)"),
    ));
    record_runs(&state, "laptop-anna", &laptop, 180_000_000_000);
    record_runs(&state, "nas", &nightly(25, 26 * 3600), 900_000_000_000);
    record_runs(&state, "build-03", &nightly(10, 5 * day), 12_000_000_000);
    let out = status_html(&t, &config);
    out.assert_code(209);
    let loaded = dom_of(&chromium, t.path(), &page);
    assert_eq!(rows_in_dom(&loaded.dom), names);
    assert_eq!(health_in_dom(&loaded.dom, "web1"), "ok");
    assert_eq!(health_in_dom(&loaded.dom, "laptop-anna"), "failing");
    assert_eq!(health_in_dom(&loaded.dom, "build-03"), "overdue");
    assert_eq!(health_in_dom(&loaded.dom, "nas"), "due");

    let shot = std::env::var_os("BORG_PULL_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| t.join("status.png"));
    let _ = fs::remove_file(&shot);
    let out = load(
        &chromium,
        t.path(),
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1000".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
    );
    assert_clean_console(&out.stderr_text());
    let png = fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot {}: {e}\n{}", shot.display(), out.describe()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 20_000, "a blank screenshot? {} bytes", png.len());
}
