//! `[notify]` end to end: `borg-pull-server run` and `status --notify` against a real OpenSSH
//! sshd and real borg (one client that backs up, one whose repository does not exist, so borg
//! exits 2), notifying receivers the tests start themselves: an HTTP server on 127.0.0.1 that
//! records every request (webhook, ntfy, Healthchecks pings), one that never answers, one that
//! answers 500, and a real MTA (Debian's exim4, with its own config, spool, log and pid file in
//! the test's directory; `sendmail -t` hands the mail to an exim daemon on a loopback port, which
//! delivers it to a mailbox file).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand};

/// In every URL's path and query: must never show in any output.
const SECRET: &str = "SeCrEt-T0ken";

fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The HTTP receiver.

/// How a [`Receiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    /// HTTP 500 to everything.
    Error500,
    /// Reads the request and never answers (the connection stays open until the receiver goes).
    Never,
}

/// One request as received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 server on 127.0.0.1 recording every request; stopped when dropped.
struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (requests, stop, held) = (requests.clone(), stop.clone(), held.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, held) = (requests.clone(), held.clone());
                    std::thread::spawn(move || serve(stream, answer, &requests, &held));
                }
            })
        };
        Receiver {
            port,
            requests,
            stop,
            held,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn to(&self, prefix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection: requests one after another (keep-alive), each recorded, until the
/// peer closes or a read times out (bounded).
fn serve(stream: TcpStream, answer: Answer, requests: &Mutex<Vec<Request>>, held: &Mutex<Vec<TcpStream>>) {
    stream
        .set_read_timeout(Some(borg_pull_testkit::DEADLINE))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // A connection serves at most this many requests: every loop in a test is bounded.
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = BTreeMap::new();
        for _ in 0..200 {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.lock().unwrap().push(Request {
            method,
            path,
            headers,
            body,
        });
        match answer {
            Answer::Ok => {
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
            }
            Answer::Error500 => {
                let _ =
                    writer.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope");
            }
            Answer::Never => {
                held.lock().unwrap().push(writer);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The MTA.

/// Debian's exim4 with its own config in a private directory: a daemon on a loopback port (the
/// test's child, stopped when dropped) and the `sendmail` command line that hands mail to it.
struct Mta {
    dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<std::process::Child>,
    port: u16,
}

/// Debian's exim binary.
const EXIM: &str = "/usr/sbin/exim4";

impl Mta {
    fn start() -> Option<Mta> {
        if !Path::new(EXIM).exists() {
            borg_pull_testkit::missing("exim4 (package exim4-daemon-light)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("borg-pull-mta")
            .tempdir()
            .unwrap();
        // exim gives up root for a -C config and runs as its own user: it must reach its files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        for sub in ["spool", "log"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(d.join("mailbox"), b"").unwrap();
        let chown = TestCommand::new("chown")
            .arg("Debian-exim")
            .arg(d.join("spool"))
            .arg(d.join("log"))
            .arg(d.join("mailbox"))
            .output();
        assert_ok(&chown, "chown Debian-exim");
        let port = free_port();
        let config = d.join("exim.conf");
        fs::write(
            &config,
            format!(
                r#"primary_hostname = borg-pull-test.invalid
qualify_domain = borg-pull-test.invalid
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
pid_file_path = {d}/exim.pid
keep_environment =
local_interfaces = <; 127.0.0.1
daemon_smtp_ports = {port}
tls_advertise_hosts =
acl_smtp_rcpt = accept
acl_smtp_data = accept
host_lookup =
rfc1413_hosts =
begin routers
to_loopback:
  driver = manualroute
  condition = ${{if eq{{$received_protocol}}{{local}}}}
  route_list = * 127.0.0.1::{port}
  self = send
  transport = smtp_loopback
mailbox:
  driver = accept
  transport = mailbox
begin transports
smtp_loopback:
  driver = smtp
  allow_localhost
  hosts_avoid_tls = *
mailbox:
  driver = appendfile
  file = {d}/mailbox
  user = Debian-exim
  use_lockfile = false
  envelope_to_add
begin retry
*  *  F,1m,10s
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let daemon = std::process::Command::new(EXIM)
            .arg("-C")
            .arg(&config)
            .arg("-bdf")
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(d.join("daemon.err")).unwrap())
            .spawn()
            .unwrap();
        let mta = Mta {
            dir,
            config,
            daemon: Some(daemon),
            port,
        };
        borg_pull_testkit::wait_until("exim listening on its loopback port", || {
            TcpStream::connect(("127.0.0.1", mta.port)).is_ok()
        });
        Some(mta)
    }

    /// `sendmail = [...]` for the fleet config.
    fn sendmail_toml(&self) -> String {
        format!("[{}, \"-C\", {}]", toml_str(EXIM), toml_str(&self.config))
    }

    fn mailbox(&self) -> String {
        fs::read_to_string(self.dir.path().join("mailbox")).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log/mainlog")).unwrap_or_default()
    }

    /// The delivered messages (mbox: each starts with a `From ` line).
    fn messages(&self) -> Vec<String> {
        let text = self.mailbox();
        let mut out: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with("From ") {
                out.push(String::new());
            }
            if let Some(last) = out.last_mut() {
                last.push_str(line);
                last.push('\n');
            }
        }
        out
    }
}

impl Drop for Mta {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The fleet (as in tests/fleet_run.rs: one sshd standing for every client, real borg).

struct Fleet {
    sshd: Sshd,
    relay: PathBuf,
    data: PathBuf,
    home: PathBuf,
    server_base: PathBuf,
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
        borg_pull_testkit::sshd::chown_to_login_user(&data);
        let home = d.join("home");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        let repos_dir = d.join("repos");
        fs::create_dir(&repos_dir).unwrap();
        let server_base = d.join("server-base");
        fs::create_dir(&server_base).unwrap();
        Fleet {
            sshd,
            relay,
            data,
            home,
            server_base,
            repos_dir,
        }
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.repos_dir.join(name)
    }

    fn init(&self, name: &str) {
        let mut cmd = TestCommand::new("borg");
        cmd.args(["init", "-e", "none"])
            .arg(self.repo(name))
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO");
        assert_ok(&cmd.output(), "borg init");
    }

    /// The config: `[server]`, `[defaults]` for this sshd, the clients `good` and `bad` (`bad`
    /// with `bad_extra`), then `notify` (a whole `[notify]` table).
    fn config(&self, bad_extra: &str, notify: &str) -> PathBuf {
        let mut clients = String::new();
        for (name, extra) in [("good", ""), ("bad", bad_extra)] {
            let base = self.dir().join(format!("client-base-{name}"));
            if !base.exists() {
                fs::create_dir(&base).unwrap();
                borg_pull_testkit::sshd::chown_to_login_user(&base);
            }
            clients.push_str(&format!(
                "[[client]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\nrepo = {}\n\
                 env = {{ BORG_BASE_DIR = {} }}\n{extra}\n\n",
                self.sshd.port,
                toml_str(self.repo(name)),
                toml_str(&base),
            ));
        }
        let text = format!(
            "[server]\nstate_dir = {state}\njobs = 2\n\n[defaults]\nuser = {user}\nidentity = {key}\n\
             known_hosts = {kh}\nrelay = {relay}\nargs = [\"create\", \"--stats\", \"::a-{{now:%H%M%S.%f}}\", {data}]\n\
             env = {{ BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK = \"yes\" }}\n\n{clients}{notify}\n",
            state = toml_str(self.dir().join("state")),
            user = toml_str(&self.sshd.user),
            key = toml_str(self.sshd.client_key()),
            kh = toml_str(&self.sshd.known_hosts),
            relay = toml_str(&self.relay),
            data = toml_str(&self.data),
        );
        let path = self.dir().join("fleet.toml");
        fs::write(&path, text).unwrap();
        path
    }

    fn server(&self, args: &[&str], config: &Path) -> TestCommand {
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
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }
}

/// Nothing of a URL's secret part in `what`'s text.
#[track_caller]
fn assert_no_secret(text: &str, what: &str) {
    assert!(!text.contains(SECRET), "the URL's token shows in {what}:\n{text}");
}

fn assert_clean(out: &Outcome) {
    assert_no_secret(&out.stdout_text(), "stdout");
    assert_no_secret(&out.stderr_text(), "stderr");
}

/// The webhook requests of `event`.
fn webhooks(r: &Receiver, event: &str) -> Vec<serde_json::Value> {
    r.to("/hook/")
        .iter()
        .map(|q| serde_json::from_slice::<serde_json::Value>(&q.body).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

/// The mails whose Subject is `subject`.
fn mails_with(mta: &Mta, subject: &str) -> Vec<String> {
    mta.messages()
        .into_iter()
        .filter(|m| m.lines().any(|l| l == format!("Subject: {subject}")))
        .collect()
}

#[test]
fn run_notifies_failure_run_and_recovery_through_every_channel() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let Some(mta) = Mta::start() else { return };
    let f = Fleet::new();
    f.init("good");
    // `bad`'s repository does not exist yet: borg on the client exits 2.
    let http = Receiver::start(Answer::Ok);
    let notify = format!(
        "[notify]\nwebhook = {}\nntfy = {}\nhealthchecks = {}\nmail_to = [\"ops@example.org\", \"oncall@example.net\"]\n\
         sendmail = {}\nevents = [\"failure\", \"recovery\", \"overdue\", \"run\"]\n",
        toml_str(http.url(&format!("/hook/{SECRET}?token={SECRET}"))),
        toml_str(http.url(&format!("/ntfy/{SECRET}-topic"))),
        toml_str(http.url(&format!("/hc/{SECRET}/{{client}}"))),
        mta.sendmail_toml(),
    );
    let config = f.config("", &notify);

    // 1. good backs up, bad fails.
    let out = f.server(&["run", "--json"], &config).output();
    out.assert_code(2);
    assert_clean(&out);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(summary.as_array().map(Vec::len), Some(2), "{}", out.describe());

    // Healthchecks: start and success for good, start and fail for bad, bodies = the log's end.
    let hc = |path: &str| {
        http.to(&format!("/hc/{SECRET}/{path}"))
            .into_iter()
            .filter(|r| r.path == format!("/hc/{SECRET}/{path}"))
            .collect::<Vec<_>>()
    };
    for path in ["good/start", "good", "bad/start", "bad/fail"] {
        assert_eq!(hc(path).len(), 1, "one ping to /{path}: {:#?}", http.requests());
        assert_eq!(hc(path)[0].method, "POST");
    }
    let good = &hc("good")[0];
    assert!(
        good.text().contains("Archive name: a-"),
        "good's ping body: {}",
        good.text()
    );
    let bad = &hc("bad/fail")[0];
    assert!(
        bad.text().contains("does not exist") || bad.text().contains("Repository"),
        "bad's ping body: {}",
        bad.text()
    );
    assert!(bad.text().len() <= 10_000);

    // Webhook: one POST per event, the summary as `run --json` gives it.
    let failures = webhooks(&http, "failure");
    assert_eq!(failures.len(), 1, "{:#?}", http.requests());
    assert_eq!(failures[0]["clients"][0]["client"], "bad");
    assert_eq!(failures[0]["clients"][0]["event"], "failure");
    assert_eq!(
        failures[0]["summary"], summary,
        "the webhook's summary is run --json's"
    );
    let runs = webhooks(&http, "run");
    assert_eq!(runs.len(), 1);
    let named: Vec<&str> = runs[0]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["good", "bad"]);
    assert!(webhooks(&http, "recovery").is_empty());
    let hook = &http.to("/hook/")[0];
    assert_eq!(hook.header("content-type"), Some("application/json"));
    assert_eq!(
        hook.path,
        format!("/hook/{SECRET}?token={SECRET}"),
        "the query is sent"
    );

    // ntfy: plain text and its headers.
    let ntfy = http.to("/ntfy/");
    let failure = ntfy
        .iter()
        .find(|r| r.header("title") == Some("borg-pull: failure: bad"))
        .unwrap_or_else(|| panic!("no ntfy failure message: {ntfy:#?}"));
    assert_eq!(failure.header("priority"), Some("high"));
    assert!(failure.header("tags").unwrap_or("").contains("warning"));
    assert!(failure.text().starts_with("bad: "), "{}", failure.text());
    assert!(ntfy.iter().any(
        |r| r.header("title") == Some("borg-pull: run of 2 clients: good, bad")
            && r.header("priority") == Some("low")
    ));

    // Mail, through exim's sendmail to its daemon on loopback, into the mailbox.
    // One copy per recipient (the mailbox takes both).
    borg_pull_testkit::wait_until("the failure and run mails delivered to both recipients", || {
        mails_with(&mta, "borg-pull: failure: bad").len() == 2
            && mails_with(&mta, "borg-pull: run of 2 clients: good, bad").len() == 2
    });
    let mail = mails_with(&mta, "borg-pull: failure: bad");
    let mut envelope: Vec<&str> = mail
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Envelope-to: ")))
        .collect();
    envelope.sort_unstable();
    assert_eq!(
        envelope,
        ["oncall@example.net", "ops@example.org"],
        "{}",
        mta.log()
    );
    assert!(
        mail[0].contains("\nTo: ops@example.org, oncall@example.net\n"),
        "{}",
        mail[0]
    );
    assert!(mail[0].contains("\nX-Borg-Pull-Event: failure\n"));
    assert!(
        mail[0].contains("\n\nbad: failed") || mail[0].contains("\n\nbad: borg exited with 2"),
        "{}",
        mail[0]
    );
    assert!(
        mail[0].contains("Received: from [127.0.0.1]"),
        "delivered over loopback SMTP: {}",
        mail[0]
    );
    assert_no_secret(&mta.mailbox(), "the mail");

    // 2. bad gets its repository: its next success is a recovery.
    f.init("bad");
    let before = http.requests().len();
    let out = f.server(&["run", "--json", "bad"], &config).output();
    out.assert_code(0);
    assert_clean(&out);
    let recoveries = webhooks(&http, "recovery");
    assert_eq!(recoveries.len(), 1, "{:#?}", &http.requests()[before..]);
    assert_eq!(recoveries[0]["clients"][0]["client"], "bad");
    assert_eq!(hc("bad").len(), 1, "bad's success ping");
    borg_pull_testkit::wait_until("the recovery mail", || {
        mails_with(&mta, "borg-pull: recovery: bad").len() == 2
    });
    assert_eq!(webhooks(&http, "failure").len(), 1, "no new failure");
}

#[test]
fn status_notify_alerts_an_overdue_client_once_then_not_again() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    f.init("good");
    f.init("bad");
    let http = Receiver::start(Answer::Ok);
    let notify = format!(
        "[notify]\nwebhook = {}\nntfy = {}\n",
        toml_str(http.url(&format!("/hook/{SECRET}"))),
        toml_str(http.url(&format!("/ntfy/{SECRET}"))),
    );
    // bad's backups are too old one second after they are made.
    let config = f.config("max_age = \"1s\"", &notify);
    let out = f.server(&["run"], &config).output();
    out.assert_code(0);
    assert_clean(&out);
    // Wait (bounded) until bad's success is older than its max_age, by the clock its state uses.
    let start = Instant::now();
    borg_pull_testkit::wait_until("bad's backup older than max_age", || {
        start.elapsed() > Duration::from_secs(2)
    });
    let overdue = |http: &Receiver| webhooks(http, "overdue");
    // The run's own overdue check may have come after max_age already: either it or the first
    // `status --notify` alerts, once.
    let out = f.server(&["status", "--notify"], &config).output();
    assert_clean(&out);
    let alerts = overdue(&http);
    assert_eq!(alerts.len(), 1, "{}\n{:#?}", out.describe(), http.requests());
    let names: Vec<&str> = alerts[0]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad"], "only the overdue client");
    assert!(http.to("/ntfy/").iter().any(
        |r| r.header("title") == Some("borg-pull: overdue: bad") && r.header("priority") == Some("high")
    ));
    // Cron again: nothing new (it was alerted less than a day ago).
    let out = f.server(&["status", "--notify"], &config).output();
    assert_clean(&out);
    assert_eq!(overdue(&http).len(), 1, "not repeated: {:#?}", http.requests());
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(f.dir().join("state/bad.json")).unwrap()).unwrap();
    assert!(state["overdue_alerted"].is_u64(), "{state}");
    // Without --notify, status sends nothing.
    let n = http.requests().len();
    let _ = f.server(&["status"], &config).output();
    assert_eq!(http.requests().len(), n);
}

#[test]
fn receivers_that_hang_or_answer_500_neither_fail_nor_hold_the_run() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fleet::new();
    f.init("good");
    f.init("bad");
    let hang = Receiver::start(Answer::Never);
    let broken = Receiver::start(Answer::Error500);
    let notify = format!(
        "[notify]\nwebhook = {}\nntfy = {}\nhealthchecks = {}\nevents = [\"run\"]\n",
        toml_str(hang.url(&format!("/hook/{SECRET}"))),
        toml_str(broken.url(&format!("/ntfy/{SECRET}"))),
        toml_str(broken.url(&format!("/hc/{SECRET}/{{client}}"))),
    );
    let config = f.config("", &notify);
    let started = Instant::now();
    let out = f.server(&["run", "--json"], &config).output();
    let took = started.elapsed();
    // The exit code is the backups' own.
    out.assert_code(0);
    assert_clean(&out);
    let stderr = out.stderr_text();
    let warned = |channel: &str, what: &str| {
        stderr.lines().any(|l| {
            l.contains("WARN")
                && l.contains(channel)
                && l.contains("notification not sent (tried twice)")
                && l.contains(what)
        })
    };
    assert!(warned("ntfy", "HTTP 500"), "{}", out.describe());
    assert!(warned("healthchecks", "HTTP 500"), "{}", out.describe());
    assert!(warned("webhook", "timed out"), "{}", out.describe());
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{}/…", hang.port)),
        "the warning names the origin: {stderr}"
    );
    // The 500 was tried twice: ntfy's one message and each Healthchecks ping.
    assert_eq!(broken.to("/ntfy/").len(), 2, "{:#?}", broken.requests());
    assert_eq!(broken.to(&format!("/hc/{SECRET}/good/start")).len(), 2);
    assert_eq!(broken.to(&format!("/hc/{SECRET}/bad/start")).len(), 2);
    // The hanging webhook got both attempts, and the run still ended: within the documented
    // drain bound (30 s) after the backups, with generous slack for this shared machine.
    assert_eq!(hang.to("/hook/").len(), 2);
    assert!(took < Duration::from_secs(150), "the run took {took:?}");
    let summary: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(summary.as_array().map(Vec::len), Some(2));
}

#[test]
fn check_config_refuses_a_bad_notify_table_without_showing_the_url() {
    let dir = borg_pull_testkit::TestDir::new();
    let config = dir.join("fleet.toml");
    fs::write(
        &config,
        format!("[notify]\nntfy = \"gopher://ntfy.example/{SECRET}\"\n"),
    )
    .unwrap();
    let mut cmd = TestCommand::new(server_bin());
    cmd.args(["check-config", "--config"]).arg(&config);
    let out = cmd.output();
    out.assert_code(200);
    assert_clean(&out);
    let stderr = out.stderr_text();
    assert!(
        stderr.contains("line 2")
            && stderr.contains("key \"ntfy\" in [notify]")
            && stderr.contains("http://"),
        "{stderr}"
    );
    // A valid table: check-config names the channels by origin only, and warns about a
    // world-readable file holding them.
    fs::write(
        &config,
        format!(
            "[notify]\nwebhook = \"https://hooks.example.org/x/{SECRET}?k={SECRET}\"\n\
             healthchecks = \"http://user:{SECRET}@hc.example:8000/ping/{SECRET}/{{client}}\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd.output();
    assert_ok(&out, "check-config");
    assert_clean(&out);
    let stdout = out.stdout_text();
    assert!(
        stdout.contains("notify: webhook https://hooks.example.org/…, healthchecks http://hc.example:8000/…; events: failure, recovery, overdue"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: readable by every user (mode 0644)"),
        "{stdout}"
    );
    fs::set_permissions(&config, fs::Permissions::from_mode(0o640)).unwrap();
    let out = cmd.output();
    assert!(!out.stdout_text().contains("warning"), "{}", out.describe());
    fs::write(&config, "[notify]\nsendmail = \"/usr/sbin/sendmail\"\n").unwrap();
    let out = cmd.output();
    out.assert_code(200);
    assert!(out.stderr_text().contains("mail_to"), "{}", out.describe());
}

/// A TLS front on 127.0.0.1 for a [`Receiver`]: socat with a self-signed certificate for
/// 127.0.0.1 (made by openssl), forwarding to the receiver; stopped when dropped.
struct TlsFront {
    port: u16,
    cert: PathBuf,
    socat: std::process::Child,
}

impl TlsFront {
    fn start(dir: &Path, to: &Receiver) -> Option<TlsFront> {
        if !borg_pull_testkit::require_tool("openssl") || !borg_pull_testkit::require_tool("socat") {
            return None;
        }
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = TestCommand::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        assert_ok(&out, "openssl req");
        let port = free_port();
        let socat = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{}", to.port))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let front = TlsFront { port, cert, socat };
        borg_pull_testkit::wait_until("socat's TLS port", || {
            TcpStream::connect(("127.0.0.1", front.port)).is_ok()
        });
        Some(front)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

#[test]
fn https_is_verified_against_ca_file_and_refused_without_it() {
    let dir = borg_pull_testkit::TestDir::new();
    let http = Receiver::start(Answer::Ok);
    let Some(tls) = TlsFront::start(dir.path(), &http) else {
        return;
    };
    // No SSH here: `status --notify` alerts a client overdue by its state (first attempt long
    // ago, never successful); its repository does not exist, which status reports (209).
    let state = dir.join("state");
    fs::create_dir(&state).unwrap();
    let overdue_state = r#"{"last_run": null, "last_success": null, "runs_since_check": 0,
        "last_check": null, "first_attempt": 1000}"#;
    let config = dir.join("fleet.toml");
    let write = |ca_file: Option<&Path>| {
        fs::write(state.join("web1.json"), overdue_state).unwrap();
        fs::write(
            &config,
            format!(
                "[server]\nstate_dir = {}\n\n[[client]]\nname = \"web1\"\nhost = \"web1.invalid\"\n\
                 repo = {}\nargs = [\"create\", \"::x\", \"/\"]\n\n[notify]\nwebhook = {}\n{}",
                toml_str(&state),
                toml_str(dir.join("no-repo")),
                toml_str(format!("https://127.0.0.1:{}/hook/{SECRET}", tls.port)),
                ca_file.map_or(String::new(), |f| format!("ca_file = {}\n", toml_str(f))),
            ),
        )
        .unwrap();
    };
    let status = || {
        let mut cmd = TestCommand::new(server_bin());
        cmd.args(["status", "--notify", "--config"])
            .arg(&config)
            .env("HOME", dir.home())
            .env("BORG_BASE_DIR", dir.base())
            // trace: even the most verbose log holds no token.
            .env("BORG_PULL_LOG", "trace")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        cmd.output()
    };
    write(Some(&tls.cert));
    let out = status();
    out.assert_code(209);
    assert_clean(&out);
    let hooks = webhooks(&http, "overdue");
    assert_eq!(hooks.len(), 1, "{}\n{:#?}", out.describe(), http.requests());
    assert_eq!(hooks[0]["clients"][0]["client"], "web1");
    // The same server without ca_file: the system's roots do not know it, nothing is sent.
    write(None);
    let out = status();
    out.assert_code(209);
    assert_clean(&out);
    assert_eq!(http.requests().len(), 1, "{:#?}", http.requests());
    assert!(
        out.stderr_text()
            .lines()
            .any(|l| l.contains("notification not sent (tried twice)") && l.contains("cert")),
        "{}",
        out.describe()
    );
}
