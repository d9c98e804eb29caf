//! `[notify]`: telling people about the fleet without them asking. Channels: a webhook (a JSON
//! POST), ntfy (a plain-text POST with its Title/Priority/Tags headers), Healthchecks-style ping
//! URLs per client (`/start`, success, `/fail`) and mail through the local `sendmail`.
//! Events: `failure` (a client's run failed), `recovery` (the first success after failures in a
//! row, or after an overdue alert), `overdue` (no success within the client's `max_age`, as
//! [`crate::schedule::standing`] judges it; alerted once, then not again until the client
//! recovered or a day passed) and `run` (every run's summary).
//!
//! A notification never blocks or fails a backup:
//! - every send is a task of its own, beside the pulls (nothing waits for it while it holds a
//!   repository lock or a pull slot), bounded in time ([`crate::limits::NOTIFY_TIMEOUT`] per
//!   attempt), tried twice, and a failure is one warn line; the run's exit code never changes;
//! - at the end of a run the tasks still going get [`crate::limits::NOTIFY_DRAIN`] to end, then
//!   they are stopped.
//!
//! URLs may carry tokens (a Healthchecks UUID, an ntfy topic, a webhook's secret path or query):
//! they are shown only as `scheme://host/…` ([`Endpoint`]'s `Display`), in logs, errors and
//! `Debug` output alike.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::client_result::ClientResult;
pub use crate::config::notify::{Endpoint, Event, NotifyConfig, DEFAULT_EVENTS, DEFAULT_SENDMAIL};
use crate::config::{Client, Fleet};
use crate::limits::{
    MAX_NOTIFY_STDERR, MAX_PING_BODY, NOTIFY_DRAIN, NOTIFY_RETRY_DELAY, NOTIFY_TIMEOUT, OVERDUE_REPEAT,
    SYSTEM_CA_BUNDLE,
};
use crate::schedule::{standing, Health};
use crate::state::{ClientState, StateStore};

// How ntfy shows an event: a sending matter, so beside the sending rather than the config.
impl Event {
    /// ntfy's priority: a failure or a stale backup needs someone; the rest is news.
    fn ntfy_priority(self) -> &'static str {
        match self {
            Event::Failure | Event::Overdue => "high",
            Event::Recovery => "default",
            Event::Run => "low",
        }
    }

    /// ntfy's tags (shown as emoji).
    fn ntfy_tags(self) -> &'static str {
        match self {
            Event::Failure => "warning,borg-pull",
            Event::Overdue => "hourglass,borg-pull",
            Event::Recovery => "white_check_mark,borg-pull",
            Event::Run => "floppy_disk,borg-pull",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending.

/// One thing to tell about one client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    /// What happened.
    pub event: Event,
    /// The client's name.
    pub client: String,
    /// One line for people: the result, the error, the age.
    pub message: String,
}

/// Sends notifications as tasks beside the caller's work; [`Notifier::finish`] waits for them
/// (bounded) and stops the rest. Their owner is the caller: `run` and `status --notify` call
/// `finish` before they return.
pub struct Notifier {
    config: NotifyConfig,
    agent: ureq::Agent,
    tasks: Mutex<JoinSet<()>>,
    timeout: Duration,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for `config`; `None` when it configures no channel.
    pub fn new(config: &NotifyConfig) -> Option<Arc<Self>> {
        Self::with_timeout(config, NOTIFY_TIMEOUT)
    }

    /// [`Self::new`] with another bound per attempt (tests).
    pub fn with_timeout(config: &NotifyConfig, timeout: Duration) -> Option<Arc<Self>> {
        if config.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            agent: agent(config, timeout),
            config: config.clone(),
            tasks: Mutex::new(JoinSet::new()),
            timeout,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    fn spawn(self: &Arc<Self>, job: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap what has ended, so a long run does not keep every finished task's slot.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(job);
    }

    /// Healthchecks' `/start` for `client` (nothing without `healthchecks`).
    pub fn ping_start(self: &Arc<Self>, client: &str) {
        if let Some(url) = self.ping_url(client) {
            let me = self.clone();
            let url = url.with_path_suffix("/start");
            self.spawn(async move { me.post("healthchecks", &url, &[], Vec::new()).await });
        }
    }

    /// Healthchecks' success ping (`ok`) or `/fail` for `client`, with `log` (its last lines,
    /// cut to [`MAX_PING_BODY`] from the end) as the body.
    pub fn ping_end(self: &Arc<Self>, client: &str, ok: bool, log: &str) {
        if let Some(url) = self.ping_url(client) {
            let me = self.clone();
            let url = if ok { url } else { url.with_path_suffix("/fail") };
            let body = tail_bytes(log, MAX_PING_BODY).as_bytes().to_vec();
            self.spawn(async move {
                me.post(
                    "healthchecks",
                    &url,
                    &[("Content-Type", "text/plain; charset=utf-8")],
                    body,
                )
                .await;
            });
        }
    }

    fn ping_url(&self, client: &str) -> Option<Endpoint> {
        let base = self.config.healthchecks.as_ref()?;
        let url = base.secret_url().replace("{client}", client);
        Endpoint::parse(&url).ok()
    }

    /// Sends `alerts` of the events the config wants: per event one webhook POST (with
    /// `summary`, `run --json`'s array, when given), one ntfy message, one mail.
    pub fn alert(self: &Arc<Self>, alerts: &[Alert], summary: Option<&serde_json::Value>) {
        let mut by_event: BTreeMap<Event, Vec<&Alert>> = BTreeMap::new();
        for a in alerts.iter().filter(|a| self.config.wants(a.event)) {
            by_event.entry(a.event).or_default().push(a);
        }
        for (event, alerts) in by_event {
            let names: Vec<&str> = alerts.iter().map(|a| a.client.as_str()).collect();
            let title = title(event, &names);
            let text: String = alerts
                .iter()
                .map(|a| format!("{}: {}\n", a.client, a.message))
                .collect();
            info!(event = event.as_str(), clients = %names.join(","), "notifying: {title}");
            if let Some(url) = self.config.webhook.clone() {
                let body = serde_json::json!({
                    "event": event,
                    "clients": alerts,
                    "summary": summary,
                });
                let me = self.clone();
                let body = body.to_string().into_bytes();
                self.spawn(async move {
                    me.post("webhook", &url, &[("Content-Type", "application/json")], body)
                        .await;
                });
            }
            if let Some(url) = self.config.ntfy.clone() {
                let me = self.clone();
                let headers = [
                    ("Title", title.clone()),
                    ("Priority", event.ntfy_priority().to_owned()),
                    ("Tags", event.ntfy_tags().to_owned()),
                ];
                let body = text.clone().into_bytes();
                self.spawn(async move {
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    me.post("ntfy", &url, &headers, body).await;
                });
            }
            if !self.config.mail_to.is_empty() {
                let me = self.clone();
                let message = mail_message(&self.config.mail_to, event, &title, &text);
                self.spawn(async move { me.mail(message).await });
            }
        }
    }

    /// Waits for the sends still going, at most [`NOTIFY_DRAIN`]; stops the rest (said in one
    /// warn line).
    pub async fn finish(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(NOTIFY_DRAIN, drain).await.is_err() {
            warn!(
                left = tasks.len(),
                "notifications still not sent after {} s: stopped",
                NOTIFY_DRAIN.as_secs()
            );
            tasks.shutdown().await;
        }
    }

    /// One POST, tried twice; its failure is one warn line naming the channel and the URL's
    /// origin only.
    async fn post(&self, channel: &'static str, url: &Endpoint, headers: &[(&str, &str)], body: Vec<u8>) {
        let mut last = String::new();
        for attempt in 1..=2 {
            let agent = self.agent.clone();
            let target = url.secret_url().to_owned();
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let body = body.clone();
            let call = tokio::task::spawn_blocking(move || {
                let mut req = agent.post(&target);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                req.send(&body[..]).map(|r| r.status().as_u16())
            });
            // ureq's own global timeout ends the call; this one is the guard should it not.
            let outcome = tokio::time::timeout(self.timeout + Duration::from_secs(5), call).await;
            last = match outcome {
                Ok(Ok(Ok(status))) if (200..300).contains(&status) => {
                    debug!(channel, to = %url, status, "notification sent");
                    return;
                }
                Ok(Ok(Ok(status))) => format!("answered HTTP {status}"),
                Ok(Ok(Err(e))) => scrub(&describe(&e), url),
                Ok(Err(e)) => format!("internal error: {e}"),
                Err(_) => format!("no answer within {} s", self.timeout.as_secs() + 5),
            };
            if attempt == 1 {
                debug!(channel, to = %url, "notification not sent ({last}), trying again");
                tokio::time::sleep(NOTIFY_RETRY_DELAY).await;
            }
        }
        warn!(channel, to = %url, "notification not sent (tried twice): {last}");
    }

    /// The mail, to `sendmail -t -oi` on stdin, tried twice.
    async fn mail(&self, message: String) {
        let argv = &self.config.sendmail;
        let mut last = String::new();
        for attempt in 1..=2 {
            match tokio::time::timeout(self.timeout, sendmail(argv, message.as_bytes())).await {
                Ok(Ok(())) => {
                    debug!(program = %argv[0], "mail handed to sendmail");
                    return;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("{} did not end within {} s", argv[0], self.timeout.as_secs()),
            }
            if attempt == 1 {
                tokio::time::sleep(NOTIFY_RETRY_DELAY).await;
            }
        }
        warn!(program = %argv[0], "mail not sent (tried twice): {last}");
    }
}

/// ureq's errors, in words (its `Display` may name the URL: [`scrub`] removes it).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("I/O error: {io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

/// `text` without the URL, its path or its query.
fn scrub(text: &str, url: &Endpoint) -> String {
    let full = url.secret_url();
    let mut out = text.replace(full, &url.to_string());
    if let Some(rest) = full.split_once("://").map(|(_, r)| r) {
        if let Some(at) = rest.find(['/', '?']) {
            let secret = &rest[at..];
            if secret.len() > 1 {
                out = out.replace(secret, "/…");
            }
        }
    }
    out
}

/// The HTTP agent: every timeout bounded by `timeout` as a whole, HTTP status codes as answers
/// (not errors), no redirects (a redirect would carry the token to another URL), and for https
/// the roots of `ca_file`, else of the system's bundle, else the built-in Mozilla roots.
fn agent(config: &NotifyConfig, timeout: Duration) -> ureq::Agent {
    let needs_tls = [&config.webhook, &config.ntfy, &config.healthchecks]
        .iter()
        .any(|e| e.as_ref().is_some_and(|e| e.origin().starts_with("https:")));
    let roots = if needs_tls {
        let file = config
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        match read_roots(&file) {
            Ok(roots) => roots,
            Err(e) => {
                if config.ca_file.is_some() {
                    warn!(file = %file.display(), "cannot read ca_file, https:// notifications use the built-in roots: {e}");
                } else {
                    debug!(file = %file.display(), "no system CA bundle ({e}): the built-in roots");
                }
                ureq::tls::RootCerts::WebPki
            }
        }
    } else {
        ureq::tls::RootCerts::WebPki
    };
    let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("borg-pull/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .new_agent()
}

fn read_roots(file: &Path) -> Result<ureq::tls::RootCerts, String> {
    let pem = std::fs::read(file).map_err(|e| e.to_string())?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// Runs `argv -t -oi` with `message` on stdin; an error says what went wrong with sendmail's
/// first words of stderr.
async fn sendmail(argv: &[String], message: &[u8]) -> Result<(), String> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["-t", "-oi"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let write = async {
        let r = stdin.write_all(message).await;
        drop(stdin);
        r
    };
    let read = async {
        let mut buf = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_NOTIFY_STDERR as u64)
            .read_to_end(&mut buf)
            .await;
        buf
    };
    let (written, err) = tokio::join!(write, read);
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&err).trim().replace('\n', " ");
    match (written, status.success()) {
        (Ok(()), true) => Ok(()),
        (Err(e), true) => Err(format!("{} did not read the message: {e}", argv[0])),
        (_, false) => Err(format!("{} failed ({status}): {err}", argv[0])),
    }
}

/// `borg-pull: failure: web1` / `borg-pull: failure of 3 clients: a, b, c`.
fn title(event: Event, names: &[&str]) -> String {
    match names {
        [one] => format!("borg-pull: {}: {one}", event.as_str()),
        many => format!(
            "borg-pull: {} of {} clients: {}",
            event.as_str(),
            many.len(),
            many.join(", ")
        ),
    }
}

/// The mail, headers and body (client names are plain: no header can be injected).
fn mail_message(to: &[String], event: Event, title: &str, text: &str) -> String {
    format!(
        "To: {}\nSubject: {title}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\nAuto-Submitted: auto-generated\nX-Borg-Pull-Event: {}\n\n\
         {text}\n-- \nborg-pull-server\n",
        to.join(", "),
        event.as_str()
    )
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
fn tail_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut at = text.len() - max;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

// ---------------------------------------------------------------------------------------------
// Deciding what to tell.

/// Whether `state` records failures since the last success ([`crate::schedule::standing`]'s
/// count).
fn was_failing(client: &Client, state: &ClientState, now: u64) -> bool {
    standing(client, state, now).failures_in_a_row > 0
}

/// A run's alerts: `failure` per failed client, `recovery` per client whose success ends failures
/// in a row or an overdue alert, `run` per client. `before` is each client's state before the
/// run.
pub fn run_alerts(
    clients: &[Client],
    results: &[ClientResult],
    before: &BTreeMap<String, ClientState>,
    now: u64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for r in results {
        let ok = r.code() <= 1;
        let message = result_line(r);
        if let (true, Some(client), Some(state)) =
            (ok, clients.iter().find(|c| c.name == r.name), before.get(&r.name))
        {
            if was_failing(client, state, now) || state.overdue_alerted.is_some() {
                alerts.push(Alert {
                    event: Event::Recovery,
                    client: r.name.clone(),
                    message: format!("backed up again: {message}"),
                });
            }
        }
        if !ok {
            alerts.push(Alert {
                event: Event::Failure,
                client: r.name.clone(),
                message: message.clone(),
            });
        }
        alerts.push(Alert {
            event: Event::Run,
            client: r.name.clone(),
            message,
        });
    }
    alerts
}

/// One line about a result: the archive, or our error, or borg's rc.
fn result_line(r: &ClientResult) -> String {
    match (&r.error, r.borg_rc) {
        (Some((code, m)), _) => format!("failed ({code}): {}", m.replace('\n', " ")),
        (None, _) if !r.retention_errors.is_empty() => {
            format!(
                "backed up, but retention failed: {}",
                r.retention_errors.join("; ")
            )
        }
        (None, Some(rc @ (0 | 1))) => {
            format!("archive {} (borg rc {rc})", r.archive.as_deref().unwrap_or("-"))
        }
        (None, Some(rc)) => format!("borg exited with {rc}"),
        (None, None) => "ended without a result".into(),
    }
}

/// Why `client` is overdue, for the alert.
fn overdue_message(client: &Client, last_success: Option<u64>, now: u64) -> String {
    match last_success {
        Some(t) => format!(
            "no successful backup for {} (max_age {})",
            crate::progress::short_duration(Duration::from_secs(now.saturating_sub(t))),
            crate::progress::short_duration(client.max_age)
        ),
        None => format!(
            "never backed up successfully (max_age {})",
            crate::progress::short_duration(client.max_age)
        ),
    }
}

/// The `overdue` alerts due now for `clients`, as recorded in `store`: a client overdue per
/// [`crate::schedule::standing`] whose last overdue alert is absent or older than
/// [`OVERDUE_REPEAT`]; records the alert's time. A client no longer overdue has its mark
/// cleared (it recovered).
pub fn overdue_alerts(clients: &[Client], store: &StateStore, now: u64) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for client in clients {
        // Decided and marked under the record's lock: a `run` saving this client meanwhile
        // neither loses the mark nor has it alerted twice.
        let decided = store.update(&client.name, |state| {
            let s = standing(client, state, now);
            match (s.health, state.overdue_alerted) {
                (Health::Overdue, Some(at)) if now.saturating_sub(at) < OVERDUE_REPEAT.as_secs() => None,
                (Health::Overdue, _) => {
                    state.overdue_alerted = Some(now);
                    Some(overdue_message(client, s.last_success, now))
                }
                (_, Some(_)) => {
                    state.overdue_alerted = None;
                    None
                }
                (_, None) => None,
            }
        });
        match decided {
            Ok(Some(message)) => alerts.push(Alert {
                event: Event::Overdue,
                client: client.name.clone(),
                message,
            }),
            Ok(None) => {}
            Err(e) => warn!(client = %client.name, "cannot record the overdue alert: {e}"),
        }
    }
    alerts
}

/// `run`'s notifications once every pull has ended: its alerts (see [`run_alerts`]), then the
/// overdue ones of every client of the fleet, then waits for every send still going (bounded).
pub async fn after_run(
    notifier: &Arc<Notifier>,
    fleet: &Fleet,
    results: &[ClientResult],
    before: &BTreeMap<String, ClientState>,
    store: Option<&StateStore>,
) {
    let now = crate::time_text::unix_now();
    let mut alerts = run_alerts(&fleet.clients, results, before, now);
    if let Some(store) = store {
        // A client that succeeded now clears its overdue mark here (it is no longer overdue).
        alerts.extend(overdue_alerts(&fleet.clients, store, now));
    }
    let summary = serde_json::to_value(results).ok();
    notifier.alert(&alerts, summary.as_ref());
    notifier.finish().await;
}

/// `status --notify`: the overdue alerts of the fleet's clients, sent before it returns. Returns
/// how many alerts were sent.
pub async fn from_status(fleet: &Fleet, store: &StateStore) -> usize {
    let Some(notifier) = Notifier::new(&fleet.notify) else {
        return 0;
    };
    let alerts = overdue_alerts(&fleet.clients, store, crate::time_text::unix_now());
    notifier.alert(&alerts, None);
    notifier.finish().await;
    alerts.len()
}

/// The last lines of a client's log for its Healthchecks ping: at most [`TAIL_LINES`] lines,
/// each cut at [`TAIL_LINE`] bytes.
#[derive(Debug, Default, Clone)]
pub struct LogTail {
    lines: std::collections::VecDeque<String>,
}

/// Lines a [`LogTail`] keeps: borg's `--stats` block and an error fit.
pub const TAIL_LINES: usize = 30;
/// The longest line a [`LogTail`] keeps, in bytes.
pub const TAIL_LINE: usize = 1000;

impl LogTail {
    /// Keeps `line` (as the log shows it), dropping the oldest beyond [`TAIL_LINES`].
    pub fn push(&mut self, line: &[u8]) {
        let cut = &line[..line.len().min(TAIL_LINE)];
        let text = String::from_utf8_lossy(cut).trim_end().to_owned();
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(text);
    }

    /// The lines kept, one per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_only_their_origin() {
        let e = Endpoint::parse("https://user:pw@hc.example:8443/ping/SECRET-UUID?k=TOKEN").unwrap();
        assert_eq!(e.to_string(), "https://hc.example:8443/…");
        assert_eq!(format!("{e:?}"), "Endpoint(https://hc.example:8443/…)");
        let start = e.with_path_suffix("/start");
        assert_eq!(
            start.secret_url(),
            "https://user:pw@hc.example:8443/ping/SECRET-UUID/start?k=TOKEN"
        );
        assert!(!start.to_string().contains("SECRET"));
        for bad in [
            "ftp://x/y",
            "hc.example/ping",
            "https:///path",
            "http://a b/c",
            "https://:80/x",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(!err.contains("path") || !err.contains(bad), "{err}");
        }
        let msg = "error sending to https://user:pw@hc.example:8443/ping/SECRET-UUID?k=TOKEN and /ping/SECRET-UUID?k=TOKEN";
        let scrubbed = scrub(msg, &e);
        assert!(
            !scrubbed.contains("SECRET") && !scrubbed.contains("TOKEN"),
            "{scrubbed}"
        );
    }

    fn clients() -> Vec<Client> {
        let text = "[[client]]\nname = \"a\"\nhost = \"h\"\nrepo = \"/r/a\"\nargs = [\"create\", \"::x\", \"/\"]\nmax_age = \"1h\"\n\
                    [[client]]\nname = \"b\"\nhost = \"h\"\nrepo = \"/r/b\"\nargs = [\"create\", \"::x\", \"/\"]\nmax_age = \"1h\"\n";
        crate::config::parse_with_home(text, Path::new("fleet.toml"), None)
            .unwrap()
            .clients
    }

    fn result(name: &str, rc: i32) -> ClientResult {
        ClientResult {
            name: name.into(),
            archive: Some("x".into()),
            started: std::time::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            bytes_sent: 1,
            borg_rc: Some(rc),
            error: None,
            retention_errors: Vec::new(),
            retention: crate::retention::RetentionResult::NotConfigured,
        }
    }

    fn ran(state: &mut ClientState, at: u64, ok: bool) {
        let record = crate::state::RunRecord {
            started: at,
            duration_ms: 1000,
            archive: None,
            bytes_sent: 0,
            borg_rc: Some(if ok { 0 } else { 2 }),
            error: None,
        };
        if ok {
            state.last_success = Some(record.clone());
        }
        state.last_run = Some(record);
        let outcome = if ok {
            crate::state::Outcome::Succeeded
        } else {
            crate::state::Outcome::Failed
        };
        state.record_attempt(outcome, at, at + 1);
    }

    #[test]
    fn failure_then_recovery_only_after_failures() {
        let clients = clients();
        let now = 1_000_000;
        let mut failing = ClientState::default();
        ran(&mut failing, now - 7200, true);
        ran(&mut failing, now - 3600, false);
        let mut fine = ClientState::default();
        ran(&mut fine, now - 600, true);
        let before = BTreeMap::from([("a".to_owned(), failing), ("b".to_owned(), fine)]);
        let alerts = run_alerts(&clients, &[result("a", 0), result("b", 2)], &before, now);
        let kinds: Vec<(Event, &str)> = alerts.iter().map(|a| (a.event, a.client.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Event::Recovery, "a"),
                (Event::Run, "a"),
                (Event::Failure, "b"),
                (Event::Run, "b")
            ]
        );
        assert_eq!(alerts[2].message, "borg exited with 2");
        // A warning (rc 1) is a success: no failure.
        let alerts = run_alerts(&clients, &[result("b", 1)], &before, now);
        assert!(alerts.iter().all(|a| a.event == Event::Run), "{alerts:?}");
    }

    #[test]
    fn overdue_is_alerted_once_a_day_and_cleared_by_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let clients = clients();
        let t0 = 1_000_000;
        let mut a = ClientState::default();
        ran(&mut a, t0, true);
        store.save("a", &a).unwrap();
        let mut b = ClientState::default();
        ran(&mut b, t0 + 7000, true);
        store.save("b", &b).unwrap();
        let names = |alerts: Vec<Alert>| alerts.into_iter().map(|a| a.client).collect::<Vec<_>>();
        // An hour and a bit after a's success: a is overdue, b is not.
        let now = t0 + 3700;
        assert_eq!(names(overdue_alerts(&clients, &store, now)), ["a"]);
        assert_eq!(store.load("a").overdue_alerted, Some(now));
        assert!(
            overdue_alerts(&clients, &store, now + 3600).is_empty(),
            "not every hour"
        );
        let a_day = now + OVERDUE_REPEAT.as_secs();
        assert_eq!(
            names(overdue_alerts(&clients, &store, a_day)),
            ["a", "b"],
            "again after a day"
        );
        // a backs up: its mark goes, and being overdue later is a new alert.
        let mut a = store.load("a");
        ran(&mut a, a_day + 10, true);
        store.save("a", &a).unwrap();
        assert!(overdue_alerts(&clients, &store, a_day + 20).is_empty());
        assert_eq!(store.load("a").overdue_alerted, None);
        assert_eq!(names(overdue_alerts(&clients, &store, a_day + 3700)), ["a"]);
    }

    #[test]
    fn tails_and_titles_are_bounded() {
        let mut t = LogTail::default();
        for i in 0..100 {
            t.push(format!("line {i} {}", "x".repeat(5000)).as_bytes());
        }
        let text = t.text();
        assert_eq!(text.lines().count(), TAIL_LINES);
        assert!(text.starts_with("line 70 "));
        assert!(text.lines().all(|l| l.len() <= TAIL_LINE));
        assert_eq!(tail_bytes("aé", 1), "");
        assert_eq!(tail_bytes("abc", 2), "bc");
        assert_eq!(title(Event::Failure, &["web1"]), "borg-pull: failure: web1");
        assert_eq!(
            title(Event::Overdue, &["a", "b"]),
            "borg-pull: overdue of 2 clients: a, b"
        );
        let m = mail_message(&["a@x".into(), "b@y".into()], Event::Failure, "T", "body\n");
        assert!(m.starts_with("To: a@x, b@y\nSubject: T\n"), "{m}");
        assert!(m.contains("\n\nbody\n"));
    }
}
