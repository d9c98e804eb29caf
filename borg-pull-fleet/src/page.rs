//! The status page (`status --html FILE`, `[server] html`): one self-contained HTML file, readable
//! offline from a file manager or any web server.
//!
//! - The fleet at a glance: a row per client coloured by its health (ok / due / failing /
//!   overdue), last success and its age, next due, failures in a row, the last run's duration,
//!   size and error. Then per client three small inline-SVG bar charts of its history: duration,
//!   original size and deduplicated size (failed runs in red).
//! - No external asset and no script at all: inline CSS only, and a Content-Security-Policy that
//!   allows nothing else, so even a page that somehow carried markup could not load or run
//!   anything.
//! - Every string from a config or a client (names, error messages, borg's output) is
//!   HTML-escaped; error texts are cut at [`PAGE_MAX_ERROR_CHARS`].
//! - It holds no secret: names, times, sizes, exit codes and the error messages `run` prints
//!   (they may name a host or a file, never a passphrase or an environment value); the page
//!   itself shows no repository path, host, command or environment.
//! - Written like the metrics textfile: temporary file, flush, rename, mode 0644.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::atomic_file::write_atomically;
use crate::config::Fleet;
use crate::history::{History, HistoryRecord};
use crate::limits::{PAGE_CHART_RUNS, PAGE_MAX_ERROR_CHARS};
use crate::progress::{human_bytes, short_duration};
use crate::retention::unix_now;
use crate::schedule::Health;
use crate::state::StateStore;
use crate::time_text::utc_minutes as utc;

/// What the page shows of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageClient {
    /// The client's name.
    pub name: String,
    /// Its health, from [`crate::schedule::standing`].
    pub health: Health,
    /// When its last successful run started (Unix seconds).
    pub last_success: Option<u64>,
    /// When it is next due (Unix seconds); `None`: due now.
    pub next_due: Option<u64>,
    /// Failed attempts since the last success.
    pub failures_in_a_row: u32,
    /// Its runs, oldest first (the page charts the newest [`PAGE_CHART_RUNS`]).
    pub history: Vec<HistoryRecord>,
}

/// What the page shows of each client of `fleet` at `now`: its standing (the schedule's one
/// rule) from its state file, and its history.
pub fn fleet_clients(fleet: &Fleet, store: &StateStore, now: u64) -> Vec<PageClient> {
    let history = History::at(&fleet.server.state_dir);
    fleet
        .clients
        .iter()
        .map(|client| {
            let state = store.load(&client.name);
            let standing = crate::schedule::standing(client, &state, now);
            PageClient {
                name: client.name.clone(),
                health: standing.health,
                last_success: standing.last_success,
                next_due: standing.next_due,
                failures_in_a_row: standing.failures_in_a_row,
                history: history.load(&client.name),
            }
        })
        .collect()
}

/// Writes the page of `fleet` as it stands now to `path` (`run` at its end, `status --html`).
pub fn write_fleet_page(path: &Path, fleet: &Fleet, store: &StateStore) -> io::Result<()> {
    let now = unix_now();
    write_page(path, &fleet_clients(fleet, store, now), now)
}

/// Writes the page for `clients` to `path` atomically (mode 0644: it holds no secret).
pub fn write_page(path: &Path, clients: &[PageClient], now: u64) -> io::Result<()> {
    write_atomically(path, 0o644, render(clients, now).as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write the status page {}: {e}", path.display()),
        )
    })
}

/// `text` with `& < > " '` escaped, safe in element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than white space are not valid in HTML text.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}
h2{font-size:1.1em;margin:1.2em 0 .3em}
.meta{color:#666;margin:0 0 1em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4;font-weight:600}
td.num{text-align:right;white-space:nowrap}
td.when{white-space:nowrap}
.age{color:#666}
.badge{display:inline-block;min-width:4.5em;text-align:center;border-radius:3px;padding:0 .4em;font-weight:600;color:#fff}
tr.health-ok td.health .badge{background:#2e7d32}
tr.health-due td.health .badge{background:#b28704}
tr.health-failing td.health .badge{background:#c62828}
tr.health-overdue td.health .badge{background:#6a1b9a}
tr.health-ok{background:#f1f8f1}
tr.health-due{background:#fffbe6}
tr.health-failing{background:#fdecea}
tr.health-overdue{background:#f5ecf8}
.error{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;max-width:40em}
.counts span{margin-right:1em}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}
figcaption{font-size:12px;color:#444}
svg{background:#fafafa;border:1px solid #e0e0e0}
svg .ok{fill:#4a7bb7}
svg .failed{fill:#c62828}
svg text{font-size:10px;fill:#666}
";

/// The whole page.
pub fn render(clients: &[PageClient], now: u64) -> String {
    let mut html = String::with_capacity(16 * 1024 + clients.len() * 8 * 1024);
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>borg-pull: fleet status</title>\n<style>",
    );
    html.push_str(STYLE);
    html.push_str("</style>\n</head>\n<body>\n<h1>borg-pull: fleet status</h1>\n");
    let _ = writeln!(
        html,
        "<p class=\"meta\">Written {} by borg-pull-server {}; times in UTC.</p>",
        utc(now),
        env!("CARGO_PKG_VERSION")
    );
    html.push_str("<p class=\"counts\">");
    for health in [Health::Ok, Health::Due, Health::Failing, Health::Overdue] {
        let n = clients.iter().filter(|c| c.health == health).count();
        let _ = write!(
            html,
            "<span class=\"count-{0}\">{0}: <b>{n}</b></span>",
            health.as_str()
        );
    }
    html.push_str("</p>\n");
    overview(&mut html, clients, now);
    for (i, client) in clients.iter().enumerate() {
        charts(&mut html, i, client);
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn overview(html: &mut String, clients: &[PageClient], now: u64) {
    html.push_str(
        "<table id=\"fleet\">\n<thead><tr><th>client</th><th>state</th><th>last success</th>\
         <th>next due</th><th>failures in a row</th><th>last run</th><th>duration</th>\
         <th>size</th><th>deduplicated</th><th>last error</th></tr></thead>\n<tbody>\n",
    );
    for (i, c) in clients.iter().enumerate() {
        let name = escape(&c.name);
        let health = c.health.as_str();
        let last = c.history.last();
        let success = match c.last_success {
            Some(t) => format!(
                "{}<br><span class=\"age\">{} ago</span>",
                utc(t),
                age(now.saturating_sub(t))
            ),
            None => "never".to_owned(),
        };
        let due = match c.next_due {
            Some(t) if t > now => format!("{}<br><span class=\"age\">in {}</span>", utc(t), age(t - now)),
            _ => "now".to_owned(),
        };
        let dash = || "-".to_owned();
        let last_run = last.map_or_else(dash, |r| {
            let result = if r.succeeded() { "ok" } else { "failed" };
            format!("{}<br><span class=\"age\">{result}</span>", utc(r.started))
        });
        let duration = last.map_or_else(dash, |r| short_duration(Duration::from_millis(r.duration_ms)));
        let size = last.and_then(|r| r.original_size).map_or_else(dash, human_bytes);
        let dedup = last
            .and_then(|r| r.deduplicated_size)
            .map_or_else(dash, human_bytes);
        let error = last
            .and_then(|r| r.error.as_ref())
            .map(|(code, message)| format!("{code}: {}", escape(&cut(message))))
            .or_else(|| {
                last.and_then(|r| r.borg_rc)
                    .filter(|rc| *rc >= 2)
                    .map(|rc| format!("borg exited with {rc}"))
            })
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "<tr class=\"client health-{health}\" data-client=\"{name}\" data-health=\"{health}\">\
             <td class=\"name\"><a href=\"#client-{i}\">{name}</a></td>\
             <td class=\"health\"><span class=\"badge\">{health}</span></td>\
             <td class=\"when last-success\">{success}</td><td class=\"when next-due\">{due}</td>\
             <td class=\"num failures\">{}</td><td class=\"when\">{last_run}</td>\
             <td class=\"num\">{duration}</td><td class=\"num\">{size}</td><td class=\"num\">{dedup}</td>\
             <td class=\"error\">{error}</td></tr>",
            c.failures_in_a_row,
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

/// The client's section: its three charts.
fn charts(html: &mut String, index: usize, c: &PageClient) {
    let _ = writeln!(
        html,
        "<section class=\"client-charts\" id=\"client-{index}\" data-client=\"{}\">\n<h2>{}</h2>",
        escape(&c.name),
        escape(&c.name)
    );
    let runs = &c.history[c.history.len().saturating_sub(PAGE_CHART_RUNS)..];
    if runs.is_empty() {
        html.push_str("<p class=\"meta\">No run recorded yet.</p>\n</section>\n");
        return;
    }
    let _ = writeln!(
        html,
        "<p class=\"meta\">The last {} runs, {} to {}.</p>\n<div class=\"charts\">",
        runs.len(),
        utc(runs[0].started),
        utc(runs[runs.len() - 1].started)
    );
    let duration = |r: &HistoryRecord| Some(r.duration_ms);
    chart(html, "duration", runs, duration, |v| {
        short_duration(Duration::from_millis(v))
    });
    chart(html, "size", runs, |r| r.original_size, human_bytes);
    chart(
        html,
        "deduplicated size",
        runs,
        |r| r.deduplicated_size,
        human_bytes,
    );
    html.push_str("</div>\n</section>\n");
}

const CHART_W: u64 = 360;
const CHART_H: u64 = 70;

/// One bar chart: a bar per run (its height `value` scaled to the largest), failed runs red.
fn chart(
    html: &mut String,
    title: &str,
    runs: &[HistoryRecord],
    value: impl Fn(&HistoryRecord) -> Option<u64>,
    show: impl Fn(u64) -> String,
) {
    let max = runs.iter().filter_map(&value).max().unwrap_or(0);
    let _ = write!(
        html,
        "<figure><figcaption>{title} (max {})</figcaption>\
         <svg class=\"chart\" width=\"{CHART_W}\" height=\"{CHART_H}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" \
         role=\"img\" aria-label=\"{title}\">",
        if max > 0 { show(max) } else { "-".to_owned() }
    );
    let n = runs.len() as u64;
    let step = (CHART_W as f64) / n as f64;
    let width = (step * 0.8).max(1.0);
    for (i, run) in runs.iter().enumerate() {
        let class = if run.succeeded() { "ok" } else { "failed" };
        let v = value(run);
        // A run without the figure (a failed run has no sizes) still shows as a thin mark.
        let h = match v {
            Some(v) if max > 0 => ((v as f64 / max as f64) * (CHART_H - 4) as f64).max(2.0),
            _ => 2.0,
        };
        let x = i as f64 * step;
        let y = CHART_H as f64 - h;
        let label = v.map_or_else(|| "-".to_owned(), &show);
        let _ = write!(
            html,
            "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{h:.1}\">\
             <title>{}: {label}</title></rect>",
            utc(run.started)
        );
    }
    html.push_str("</svg></figure>\n");
}

/// At most [`PAGE_MAX_ERROR_CHARS`] characters of `text`.
fn cut(text: &str) -> String {
    match text.char_indices().nth(PAGE_MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{} [...]", &text[..at]),
        None => text.to_owned(),
    }
}

/// `3d 4h`, `5h 02m`, `12m`, `40s`.
fn age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h {:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86400, secs / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn demo_clients(now: u64) -> Vec<PageClient> {
        let hostile = "<img src=x onerror=alert(1)></svg><script>alert(2)</script> & \"'";
        let runs = |n: u64, fail_from: u64, error: &str| -> Vec<HistoryRecord> {
            (0..n)
                .map(|i| {
                    let failed = i >= fail_from;
                    HistoryRecord {
                        started: now - (n - i) * 86400,
                        duration_ms: 60_000 + (i % 7) * 9_000,
                        bytes_sent: 10_000_000 + i * 100_000,
                        original_size: (!failed).then_some(2_000_000_000 + i * 5_000_000),
                        compressed_size: None,
                        deduplicated_size: (!failed).then_some(20_000_000 + (i % 5) * 4_000_000),
                        borg_rc: (!failed).then_some(0),
                        error: failed.then(|| (213, error.to_owned())),
                    }
                })
                .collect()
        };
        vec![
            PageClient {
                name: "web1".into(),
                health: Health::Ok,
                last_success: Some(now - 3 * 3600),
                next_due: Some(now + 21 * 3600),
                failures_in_a_row: 0,
                history: runs(30, 99, ""),
            },
            PageClient {
                name: "laptop-<b>anna</b>".into(),
                health: Health::Failing,
                last_success: Some(now - 30 * 3600),
                next_due: Some(now + 3600),
                failures_in_a_row: 2,
                history: runs(20, 18, hostile),
            },
            PageClient {
                name: "new".into(),
                health: Health::Due,
                last_success: None,
                next_due: None,
                failures_in_a_row: 0,
                history: Vec::new(),
            },
        ]
    }

    #[test]
    fn every_client_has_a_row_with_its_health_and_hostile_text_is_escaped() {
        let now = 1_800_000_000;
        let html = render(&demo_clients(now), now);
        assert!(html.contains("data-client=\"web1\" data-health=\"ok\""), "{html}");
        assert!(html.contains("data-client=\"laptop-&lt;b&gt;anna&lt;/b&gt;\" data-health=\"failing\""));
        assert!(html.contains("data-client=\"new\" data-health=\"due\""));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("<b>anna"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&lt;/svg&gt;&lt;script&gt;"));
        // Nothing external: no URL at all (the charts are inline SVG without a namespace).
        assert!(!html.contains("http:") && !html.contains("https:") && !html.contains("url("));
        assert_eq!(
            html.matches("<svg").count(),
            6,
            "three charts for each client with runs"
        );
        assert!(html.contains("No run recorded yet."));
    }

    #[test]
    fn charts_show_at_most_the_newest_runs() {
        let now = 1_800_000_000;
        let mut clients = demo_clients(now);
        clients.truncate(1);
        let many: Vec<HistoryRecord> = (0..PAGE_CHART_RUNS as u64 + 50)
            .map(|i| HistoryRecord {
                started: now - 1_000_000 + i * 600,
                duration_ms: 1000,
                borg_rc: Some(0),
                ..HistoryRecord::default()
            })
            .collect();
        clients[0].history = many;
        let html = render(&clients, now);
        assert_eq!(html.matches("<rect").count(), 3 * PAGE_CHART_RUNS);
    }

    #[test]
    fn long_errors_are_cut_and_control_characters_replaced() {
        assert_eq!(
            cut(&"é".repeat(PAGE_MAX_ERROR_CHARS + 5)).chars().count(),
            PAGE_MAX_ERROR_CHARS + 6
        );
        assert_eq!(escape("a\u{1b}[2Kb\nc"), "a\u{FFFD}[2Kb\nc");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 86400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(utc(0), "1970-01-01 00:00");
    }

    #[test]
    fn the_page_is_written_atomically_and_readable_by_all() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.html");
        write_page(&path, &demo_clients(1_800_000_000), 1_800_000_000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("<!DOCTYPE html>"));
    }
}
