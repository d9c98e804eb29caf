//! The schedule on a fake clock: 50 clients over 14 days, each online in its own pattern, pulled
//! by an hourly `run --due` or by a nightly `run` at 02:00. No SSH: a pull succeeds when its client
//! is online at the hour it starts, else the client is unreachable. The selection is
//! `borg_pull_fleet::run::select_due`, the function `run --due` calls, and each attempt is
//! recorded with `ClientState::record_attempt`, as `run` records it; the clients come from a fleet
//! config parsed by the real parser.
//!
//! ```text
//! cargo run -p borg-pull-fleet --example schedule-sim [-- SEED]
//! ```
//!
//! Prints a markdown table: per pattern, the share of client-days whose newest archive is younger
//! than 24 h at the end of the day (23:59:59, the server's time), the share of client-hours (at
//! the end of each hour), and pulls done / attempted.

use std::collections::HashMap;
use std::path::Path;

use borg_pull_fleet::config::{parse_with_home, Client};
use borg_pull_fleet::run::select_due;
use borg_pull_fleet::schedule::Zone;
use borg_pull_fleet::state::{ClientState, Outcome, RunRecord};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const DAYS: u64 = 14;
/// Monday 2026-01-05 00:00 UTC: the simulation's first hour.
const START: u64 = 1_767_571_200;
/// How long a pull takes (the next run at the hour finds it over).
const PULL: u64 = 10 * 60;

/// When a client is online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Always,
    /// Monday to Friday, 08:00-18:00.
    OfficeHours,
    /// 20% of the hours, drawn once per client and hour from the seed.
    RandomHours,
    /// Always, but off on days 6, 7 and 8 (counting from 0).
    OffThreeDays,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Always => "always",
            Pattern::OfficeHours => "office hours (Mon-Fri 08-18)",
            Pattern::RandomHours => "20% of random hours",
            Pattern::OffThreeDays => "off for 3 days (days 7-9)",
        }
    }
}

/// The patterns and how many clients follow each.
const MIX: [(Pattern, usize); 4] = [
    (Pattern::Always, 15),
    (Pattern::OfficeHours, 15),
    (Pattern::RandomHours, 10),
    (Pattern::OffThreeDays, 10),
];

/// xorshift64*: a seeded generator for the random hours, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Who is online at which hour: `online[client][hour]`.
fn online_table(patterns: &[Pattern], seed: u64) -> Vec<Vec<bool>> {
    let mut rng = Rng(seed.max(1));
    let hours = (DAYS * 24) as usize + 48;
    patterns
        .iter()
        .map(|p| {
            (0..hours)
                .map(|h| {
                    let (day, hour) = (h / 24, h % 24);
                    match p {
                        Pattern::Always => true,
                        Pattern::OfficeHours => day % 7 < 5 && (8..18).contains(&hour),
                        Pattern::RandomHours => rng.next() % 100 < 20,
                        Pattern::OffThreeDays => !(6..9).contains(&day),
                    }
                })
                .collect()
        })
        .collect()
}

/// How the server pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// `run` of every client at 02:00 (the shipped timer before `--due`).
    Nightly,
    /// `run --due` every hour.
    HourlyDue,
    /// `run --due` every hour, an unreachable client backed off as a failed one is.
    HourlyDueBackoffUnreachable,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    fresh_days: u64,
    days: u64,
    fresh_hours: u64,
    hours: u64,
    pulls: u64,
    attempts: u64,
}

fn simulate(clients: &[Client], online: &[Vec<bool>], policy: Policy) -> Vec<Tally> {
    let zone = Zone::utc();
    let mut states: HashMap<String, ClientState> = HashMap::new();
    // Every client was backed up the night before.
    for c in clients {
        let mut s = ClientState::default();
        record(&mut s, START - 22 * HOUR, true, Outcome::Succeeded);
        states.insert(c.name.clone(), s);
    }
    let mut tally = vec![Tally::default(); clients.len()];
    for hour in 0..DAYS * 24 {
        let now = START + hour * HOUR;
        let chosen: Vec<&Client> = match policy {
            Policy::Nightly if hour % 24 == 2 => clients.iter().collect(),
            Policy::Nightly => Vec::new(),
            Policy::HourlyDue | Policy::HourlyDueBackoffUnreachable => {
                select_due(clients, now, &zone, |name| states[name].clone()).due
            }
        };
        for c in chosen {
            let i = clients.iter().position(|x| x.name == c.name).unwrap_or(0);
            let up = online[i][hour as usize];
            let state = states.get_mut(&c.name).unwrap_or_else(|| unreachable!());
            tally[i].attempts += 1;
            if up {
                tally[i].pulls += 1;
                record(state, now, true, Outcome::Succeeded);
            } else {
                let outcome = match policy {
                    Policy::HourlyDueBackoffUnreachable => Outcome::Failed,
                    _ => Outcome::Unreachable,
                };
                record(state, now, false, outcome);
            }
        }
        // Sampled at the end of the hour, and of the day.
        let end = now + HOUR - 1;
        for (i, c) in clients.iter().enumerate() {
            let fresh = states[&c.name]
                .last_success
                .as_ref()
                .is_some_and(|r| end - (r.started + PULL) < DAY);
            tally[i].hours += 1;
            tally[i].fresh_hours += u64::from(fresh);
            if hour % 24 == 23 {
                tally[i].days += 1;
                tally[i].fresh_days += u64::from(fresh);
            }
        }
    }
    tally
}

/// One attempt at `at`, recorded as `run` records it.
fn record(state: &mut ClientState, at: u64, succeeded: bool, outcome: Outcome) {
    let (ended, rc) = if succeeded { (at + PULL, 0) } else { (at + 30, 2) };
    let run = RunRecord {
        started: at,
        duration_ms: (ended - at) * 1000,
        archive: succeeded.then(|| "sim".to_owned()),
        bytes_sent: 0,
        borg_rc: succeeded.then_some(rc),
        error: (!succeeded).then(|| (213, "unreachable".to_owned())),
    };
    if succeeded {
        state.last_success = Some(run.clone());
    }
    state.last_run = Some(run);
    state.record_attempt(outcome, at, ended);
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * part as f64 / whole.max(1) as f64)
}

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(19);
    let mut text = String::from("[server]\nstate_dir = \"/nonexistent\"\n[defaults]\nargs = [\"create\", \"::{now}\", \"/\"]\nevery = \"24h\"\nretry = \"1h\"\n");
    let mut patterns = Vec::new();
    for (pattern, n) in MIX {
        for _ in 0..n {
            let i = patterns.len();
            text.push_str(&format!(
                "[[client]]\nname = \"c{i:02}\"\nhost = \"c{i:02}.invalid\"\nrepo = \"/srv/borg/c{i:02}\"\n"
            ));
            patterns.push(pattern);
        }
    }
    let fleet = match parse_with_home(&text, Path::new("sim.toml"), None) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("schedule-sim: {e}");
            std::process::exit(1);
        }
    };
    let online = online_table(&patterns, seed);
    let policies = [
        (Policy::Nightly, "nightly `run` at 02:00"),
        (Policy::HourlyDue, "hourly `run --due`"),
        (Policy::HourlyDueBackoffUnreachable, "hourly `--due`, back-off when unreachable too"),
    ];
    let results: Vec<Vec<Tally>> = policies
        .iter()
        .map(|(p, _)| simulate(&fleet.clients, &online, *p))
        .collect();
    println!(
        "{} clients, {DAYS} days from Monday 2026-01-05 (UTC), seed {seed}; every = 24h, retry = 1h, \
         a pull takes 10 min; a client offline at the hour its pull starts is unreachable.",
        fleet.clients.len()
    );
    println!("Cells: client-days with an archive younger than 24 h at 23:59:59 / client-hours the same at each hour's end / pulls done of attempted.\n");
    let mut header = String::from("| clients | online |");
    let mut rule = String::from("|---|---|");
    for (_, name) in &policies {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    let mut rows: Vec<(String, String, Vec<usize>)> = MIX
        .iter()
        .map(|(p, n)| {
            let members = (0..patterns.len()).filter(|&i| patterns[i] == *p).collect();
            (n.to_string(), p.name().to_owned(), members)
        })
        .collect();
    rows.push(("50".into(), "**all**".into(), (0..patterns.len()).collect()));
    for (n, name, members) in rows {
        let mut line = format!("| {n} | {name} |");
        for tallies in &results {
            let sum = members.iter().fold(Tally::default(), |mut a, &i| {
                let t = tallies[i];
                a.fresh_days += t.fresh_days;
                a.days += t.days;
                a.fresh_hours += t.fresh_hours;
                a.hours += t.hours;
                a.pulls += t.pulls;
                a.attempts += t.attempts;
                a
            });
            line.push_str(&format!(
                " {} / {} / {} of {} |",
                percent(sum.fresh_days, sum.days),
                percent(sum.fresh_hours, sum.hours),
                sum.pulls,
                sum.attempts
            ));
        }
        println!("{line}");
    }
}
