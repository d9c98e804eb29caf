//! When a client is due: the one rule behind `run --due`, `status`'s state column, its JSON and
//! the metrics (and everything else that shows or alerts on a client's standing).
//!
//! Per client (and in `[defaults]`): `every` (24h), an optional `window` in which a pull may
//! start, optional `blackout` ranges in which none may start (both in this server's local time,
//! `HH:MM-HH:MM`, wrapping midnight when the end is earlier), and `retry`: the delay after a
//! failed pull, doubled for each failure in a row, at most `every`.
//!
//! - A client **needs** a backup when it has no success, or its last success started `every`
//!   ago (less a slack of `every / 32`, see [`crate::limits::DUE_EARLY_DIVISOR`]).
//! - It is **due now** (pulled by `run --due`) when it needs one, the back-off after a failed
//!   pull has passed, and now is inside its window and outside its blackouts. A client that could
//!   not be reached at all (no SSH connection) has no back-off: trying it costs one connection
//!   attempt, and a laptop that shows up at 14:00 after missing the night is pulled at the next
//!   hourly run.
//! - Its **health**: `overdue` (no success within `max_age`; a client never successful counts
//!   from its first attempt) beats `failing` (the last attempt failed) beats `due` (it needs a
//!   backup) beats `ok`.
//!
//! ```
//! use borg_pull_fleet::schedule::{Hours, Backoff};
//! use std::time::Duration;
//! let night: Hours = "22:00-06:00".parse().unwrap();
//! assert!(night.contains_minute(23 * 60) && night.contains_minute(5 * 60) && !night.contains_minute(12 * 60));
//! let retry = Backoff { first: Duration::from_secs(3600), cap: Duration::from_secs(24 * 3600) };
//! assert_eq!(retry.delay(3), Duration::from_secs(4 * 3600));
//! assert_eq!(retry.delay(9), Duration::from_secs(24 * 3600));
//! ```

use std::fmt;
use std::time::Duration;

use serde::Serialize;

pub use crate::config::schedule::{Backoff, Hours, Schedule, DEFAULT_EVERY, DEFAULT_RETRY};
use crate::config::Client;
use crate::limits::DUE_EARLY_DIVISOR;
use crate::state::{ClientState, Outcome};
pub use crate::zone::Zone;

/// How a client stands, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Backed up within `every`.
    Ok,
    /// No success within `every`: the next `run --due` in its hours pulls it.
    Due,
    /// The last attempt failed (within `max_age` of the last success).
    Failing,
    /// No success within `max_age` (the "backup too old" alert).
    Overdue,
}

impl Health {
    /// Every state, for one-hot metrics.
    pub const ALL: [Health; 4] = [Health::Ok, Health::Due, Health::Failing, Health::Overdue];

    /// `ok`, `due`, `failing` or `overdue`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Due => "due",
            Health::Failing => "failing",
            Health::Overdue => "overdue",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's standing at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// Its health.
    pub health: Health,
    /// When its last successful pull started (Unix seconds).
    pub last_success: Option<u64>,
    /// When it is due next (Unix seconds); `None`: due now.
    pub next_due: Option<u64>,
    /// Whether `run --due` pulls it now (it needs a backup, its back-off has passed and now is
    /// inside its hours).
    pub due_now: bool,
    /// Failed attempts since the last success (unreachable ones included).
    pub failures_in_a_row: u32,
}

/// `client`'s standing at `now` (Unix seconds), in this server's local time zone.
pub fn standing(client: &Client, state: &ClientState, now: u64) -> Standing {
    standing_in(client, state, now, Zone::local())
}

/// [`standing`] in the time zone `zone` (tests and the simulation use a fixed one).
pub fn standing_in(client: &Client, state: &ClientState, now: u64, zone: &Zone) -> Standing {
    let schedule = &client.schedule;
    let last_success = state.last_success.as_ref().map(|r| r.started);
    let slack = schedule.every / DUE_EARLY_DIVISOR;
    // A time recorded in the future (this server's clock was set back since) counts as now:
    // otherwise the client would wait for the clock to catch up, possibly for years.
    let needed_from = last_success.map_or(0, |at| add(at.min(now), schedule.every.saturating_sub(slack)));
    let last = state
        .last_attempt()
        .map(|(ended, outcome)| (ended.min(now), outcome));
    let failures = match last {
        // A record from before the count was kept: the failure it shows is one.
        Some((_, Outcome::Failed | Outcome::Unreachable)) => state.failures_in_a_row.max(1),
        _ => state.failures_in_a_row,
    };
    let retry_from = match last {
        Some((ended, Outcome::Failed)) => add(ended, schedule.retry.delay(failures)),
        _ => 0,
    };
    let earliest = needed_from.max(retry_from);
    let due_now = earliest <= now && schedule.may_start(now, zone);
    let next_due = if due_now {
        None
    } else {
        let from = earliest.max(now);
        Some(schedule.next_start(from, zone).unwrap_or(from))
    };
    let counted_from = last_success
        .or(state.first_attempt)
        .or(last.map(|(ended, _)| ended));
    let health = if counted_from.is_some_and(|at| now >= add(at, client.max_age)) {
        Health::Overdue
    } else if matches!(last, Some((_, Outcome::Failed | Outcome::Unreachable))) {
        Health::Failing
    } else if needed_from <= now {
        Health::Due
    } else {
        Health::Ok
    };
    Standing {
        health,
        last_success,
        next_due,
        due_now,
        failures_in_a_row: failures,
    }
}

fn add(t: u64, d: Duration) -> u64 {
    t.saturating_add(d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::state::RunRecord;

    const H: u64 = 3600;
    const M: u64 = 60;
    /// A midnight, UTC (day 20000 after the epoch, a Friday).
    const DAY: u64 = 20_000 * 86400;

    fn client(extra: &str) -> Client {
        let text = format!(
            "[[client]]\nname = \"c\"\nhost = \"h\"\nrepo = \"/r\"\nargs = [\"create\", \"::a\", \"/etc\"]\n{extra}"
        );
        let fleet = crate::config::parse_with_home(&text, Path::new("fleet.toml"), None).unwrap();
        fleet.clients.into_iter().next().unwrap()
    }

    fn run(started: u64, ok: bool) -> RunRecord {
        RunRecord {
            started,
            duration_ms: 60_000,
            borg_rc: Some(if ok { 0 } else { 2 }),
            ..RunRecord::default()
        }
    }

    /// A state after `attempts` (start, outcome), in order.
    fn state(attempts: &[(u64, Outcome)]) -> ClientState {
        let mut s = ClientState::default();
        for &(at, outcome) in attempts {
            let record = run(at, outcome == Outcome::Succeeded);
            if outcome == Outcome::Succeeded {
                s.last_success = Some(record.clone());
            }
            s.last_run = Some(record);
            s.record_attempt(outcome, at, at + M);
        }
        s
    }

    fn at(client: &Client, state: &ClientState, now: u64) -> Standing {
        standing_in(client, state, now, &Zone::utc())
    }

    #[test]
    fn a_client_never_run_is_due_now_and_not_overdue() {
        let s = at(&client(""), &ClientState::default(), DAY);
        assert_eq!(
            s,
            Standing {
                health: Health::Due,
                last_success: None,
                next_due: None,
                due_now: true,
                failures_in_a_row: 0,
            }
        );
    }

    #[test]
    fn every_counts_from_the_last_success_with_three_percent_early() {
        let c = client("");
        let st = state(&[(DAY, Outcome::Succeeded)]);
        let s = at(&c, &st, DAY + H);
        assert_eq!((s.health, s.due_now), (Health::Ok, false));
        assert_eq!(s.last_success, Some(DAY));
        // 24 h less 45 min: tomorrow's run at the same hour finds it due though it starts early.
        assert_eq!(s.next_due, Some(DAY + 24 * H - 45 * M));
        let s = at(&c, &st, DAY + 24 * H - 10);
        assert_eq!((s.health, s.due_now, s.next_due), (Health::Due, true, None));
        let s = at(&c, &st, DAY + 25 * H);
        assert_eq!((s.health, s.due_now), (Health::Due, true));
        let c = client("every = \"6h\"");
        let s = at(&c, &st, DAY + 5 * H);
        assert_eq!((s.health, s.due_now), (Health::Ok, false));
        assert_eq!(s.next_due, Some(DAY + 6 * H - 6 * H / 32));
        assert!(at(&c, &st, DAY + 6 * H).due_now);
    }

    #[test]
    fn overdue_beats_failing_beats_due() {
        let c = client("max_age = \"36h\"");
        let st = state(&[(DAY, Outcome::Succeeded), (DAY + 30 * H, Outcome::Failed)]);
        assert_eq!(at(&c, &st, DAY + 31 * H).health, Health::Failing);
        assert_eq!(at(&c, &st, DAY + 36 * H).health, Health::Overdue);
        let st = state(&[(DAY, Outcome::Succeeded)]);
        assert_eq!(at(&c, &st, DAY + 35 * H).health, Health::Due);
        assert_eq!(at(&c, &st, DAY + 37 * H).health, Health::Overdue);
        // Never successful: counted from the first attempt, not the last.
        let st = state(&[(DAY, Outcome::Unreachable), (DAY + 30 * H, Outcome::Failed)]);
        assert_eq!(at(&c, &st, DAY + 31 * H).health, Health::Failing);
        assert_eq!(at(&c, &st, DAY + 36 * H).health, Health::Overdue);
        assert_eq!(at(&c, &st, DAY + 36 * H).failures_in_a_row, 2);
        // A success recovers: failures in a row back to 0.
        let st = state(&[(DAY, Outcome::Failed), (DAY + H, Outcome::Succeeded)]);
        let s = at(&c, &st, DAY + 2 * H);
        assert_eq!((s.health, s.failures_in_a_row), (Health::Ok, 0));
    }

    #[test]
    fn back_off_doubles_per_failure_up_to_every() {
        let c = client("retry = \"1h\"");
        let ok = (DAY - 30 * H, Outcome::Succeeded);
        // One failure that ended at DAY + 1 min: due again 1 h after its end, not before.
        let st = state(&[ok, (DAY, Outcome::Failed)]);
        let s = at(&c, &st, DAY + 10 * M);
        assert_eq!((s.health, s.due_now), (Health::Failing, false));
        assert_eq!(s.next_due, Some(DAY + M + H));
        assert!(at(&c, &st, DAY + M + H).due_now);
        let st = state(&[
            ok,
            (DAY, Outcome::Failed),
            (DAY, Outcome::Failed),
            (DAY, Outcome::Failed),
        ]);
        assert_eq!(at(&c, &st, DAY + M).next_due, Some(DAY + M + 4 * H));
        let many: Vec<_> = std::iter::once(ok)
            .chain(std::iter::repeat_n((DAY, Outcome::Failed), 12))
            .collect();
        let st = state(&many);
        assert_eq!(
            at(&c, &st, DAY + M).next_due,
            Some(DAY + M + 24 * H),
            "capped at every"
        );
        assert_eq!(at(&c, &st, DAY + M).failures_in_a_row, 12);
        let c = client("retry = \"2d\"\nevery = \"12h\"");
        assert_eq!(c.schedule.retry.first, Duration::from_secs(12 * H));
        let b = Backoff {
            first: Duration::from_secs(H),
            cap: Duration::from_secs(24 * H),
        };
        let delays: Vec<u64> = (1..=7).map(|n| b.delay(n).as_secs() / H).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 24, 24]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(24 * H));
    }

    #[test]
    fn an_unreachable_client_is_tried_at_the_next_run() {
        let c = client("retry = \"1h\"");
        let st = state(&[
            (DAY - 30 * H, Outcome::Succeeded),
            (DAY, Outcome::Unreachable),
            (DAY + H, Outcome::Unreachable),
        ]);
        let s = at(&c, &st, DAY + 2 * H);
        assert_eq!(
            (s.health, s.due_now, s.failures_in_a_row),
            (Health::Failing, true, 2)
        );
    }

    #[test]
    fn times_in_the_future_count_as_now() {
        // The clock was set back a year after a success and a failure were recorded.
        let c = client("");
        let later = DAY + 365 * 24 * H;
        let st = state(&[(later, Outcome::Succeeded), (later + H, Outcome::Failed)]);
        let s = at(&c, &st, DAY);
        assert_eq!(s.next_due, Some(DAY + 24 * H - 45 * M), "not a year from now");
        assert_eq!(s.health, Health::Failing);
    }

    #[test]
    fn a_record_from_before_attempts_were_kept_reads_its_last_run() {
        let c = client("");
        let st = ClientState {
            last_success: Some(run(DAY - 30 * H, true)),
            last_run: Some(run(DAY, false)),
            ..ClientState::default()
        };
        let s = at(&c, &st, DAY + 10 * M);
        assert_eq!(
            (s.health, s.due_now, s.failures_in_a_row),
            (Health::Failing, false, 1)
        );
        assert_eq!(s.next_due, Some(DAY + M + H));
    }

    #[test]
    fn a_window_wrapping_midnight() {
        let c = client("window = \"22:00-06:00\"");
        let never = ClientState::default();
        for (now, due) in [
            (DAY + 23 * H + 30 * M, true),
            (DAY + 22 * H, true),
            (DAY + 5 * H + 59 * M, true),
            (DAY + 6 * H, false),
            (DAY + 12 * H, false),
        ] {
            assert_eq!(at(&c, &never, now).due_now, due, "{}", (now - DAY) / M);
        }
        assert_eq!(at(&c, &never, DAY + 6 * H).next_due, Some(DAY + 22 * H));
        // Needed from 03:00 + 23:15 = 02:15 the next day: inside the window, so then.
        let st = state(&[(DAY + 3 * H, Outcome::Succeeded)]);
        assert_eq!(at(&c, &st, DAY + 4 * H).next_due, Some(DAY + 26 * H + 15 * M));
        // Needed from 07:15: the window opens at 22:00.
        let st = state(&[(DAY + 8 * H, Outcome::Succeeded)]);
        assert_eq!(at(&c, &st, DAY + 9 * H).next_due, Some(DAY + 24 * H + 22 * H));
        // In a zone one hour east of UTC, 21:30 UTC is 22:30 there.
        let s = standing_in(&c, &never, DAY + 21 * H + 30 * M, &Zone::fixed(3600));
        assert!(s.due_now);
        let s = standing_in(&c, &never, DAY + 20 * H + 30 * M, &Zone::fixed(3600));
        assert_eq!(s.next_due, Some(DAY + 21 * H));
    }

    #[test]
    fn blackouts_and_a_window_together() {
        let c = client("blackout = [\"08:00-18:00\"]");
        let never = ClientState::default();
        let s = at(&c, &never, DAY + 10 * H);
        assert_eq!(
            (s.health, s.due_now, s.next_due),
            (Health::Due, false, Some(DAY + 18 * H))
        );
        assert!(at(&c, &never, DAY + 18 * H).due_now);
        assert!(at(&c, &never, DAY + 7 * H).due_now);
        let c = client("window = \"22:00-06:00\"\nblackout = [\"23:00-01:00\", \"00:30-02:00\"]");
        let s = at(&c, &never, DAY + 23 * H + 30 * M);
        assert_eq!(
            s.next_due,
            Some(DAY + 26 * H),
            "the later of two overlapping blackouts"
        );
        assert!(at(&c, &never, DAY + 22 * H + 59 * M).due_now);
    }

    #[test]
    fn hours_parse_and_reject_with_the_form() {
        assert_eq!("00:00-24:00".parse::<Hours>().unwrap().to_string(), "00:00-24:00");
        assert_eq!(
            "8:30-17:00".parse::<Hours>(),
            Ok(Hours {
                start: 8 * 60 + 30,
                end: 17 * 60
            })
        );
        for bad in [
            "22-06",
            "25:00-01:00",
            "10:00-10:00",
            "24:00-01:00",
            "10:60-11:00",
            "",
            "x",
        ] {
            let e = bad.parse::<Hours>().unwrap_err();
            assert!(e.starts_with(&format!("{bad:?}")), "{e}");
        }
        assert!("22-06".parse::<Hours>().unwrap_err().contains("HH:MM-HH:MM"));
    }

    #[test]
    fn config_keys_apply_from_defaults_and_bad_values_name_key_value_and_form() {
        let text = "[defaults]\nevery = \"12h\"\nblackout = [\"08:00-18:00\"]\nretry = \"30m\"\n\
            [[client]]\nname = \"a\"\nhost = \"h\"\nrepo = \"/a\"\nargs = [\"create\", \"::x\", \"/\"]\n\
            [[client]]\nname = \"b\"\nhost = \"h\"\nrepo = \"/b\"\nargs = [\"create\", \"::x\", \"/\"]\nevery = \"2d\"\nwindow = \"20:00-23:00\"\n";
        let fleet = crate::config::parse_with_home(text, Path::new("f.toml"), None).unwrap();
        let [a, b] = &fleet.clients[..] else { panic!() };
        assert_eq!(a.schedule.every, Duration::from_secs(12 * H));
        assert_eq!(
            a.schedule.retry,
            Backoff {
                first: Duration::from_secs(30 * M),
                cap: Duration::from_secs(12 * H)
            }
        );
        assert_eq!(a.schedule.blackout.len(), 1);
        assert_eq!(b.schedule.every, Duration::from_secs(48 * H));
        assert_eq!(
            b.schedule.window.map(|w| w.to_string()).as_deref(),
            Some("20:00-23:00")
        );
        assert_eq!(client("").schedule, Schedule::default());
        let err = |extra: &str| {
            let text = format!(
                "[[client]]\nname = \"c\"\nhost = \"h\"\nrepo = \"/r\"\nargs = [\"create\", \"::a\", \"/etc\"]\n{extra}"
            );
            crate::config::parse_with_home(&text, Path::new("f.toml"), None)
                .unwrap_err()
                .to_string()
        };
        let e = err("window = \"22-06\"");
        assert!(
            e.starts_with(
                "f.toml line 6: key \"window\" in [[client]] c: \"22-06\": expected \"HH:MM-HH:MM\""
            ),
            "{e}"
        );
        let e = err("blackout = [\"08:00-18:00\", \"9-5\"]");
        assert!(e.contains("key \"blackout\"") && e.contains("\"9-5\""), "{e}");
        let e = err("every = \"daily\"");
        assert!(
            e.contains("key \"every\"") && e.contains("\"daily\"") && e.contains("e.g. 36h"),
            "{e}"
        );
        let e = err("retry = \"0h\"");
        assert!(e.contains("key \"retry\""), "{e}");
        let e = err("window = \"08:00-18:00\"\nblackout = [\"07:00-19:00\"]");
        assert!(
            e.contains("key \"window\"") && e.contains("no minute of the day"),
            "{e}"
        );
    }

    #[test]
    fn zone_files_give_the_offset_of_the_moment() {
        let berlin = Zone::read(Path::new("/usr/share/zoneinfo/Europe/Berlin")).unwrap();
        // 2026-01-15 and 2026-07-15, noon UTC.
        let (winter, summer) = (1_768_478_400, 1_784_116_800);
        assert_eq!(berlin.offset_at(winter), 3600);
        assert_eq!(berlin.offset_at(summer), 7200);
        assert_eq!(berlin.minute_of_day(summer), 14 * 60);
        let utc = Zone::read(Path::new("/usr/share/zoneinfo/Etc/UTC")).unwrap();
        assert_eq!(utc.offset_at(summer), 0);
        assert!(Zone::from_tzif(b"not a zone file at all, but long enough to have a header....").is_err());
        assert!(Zone::from_tzif(b"TZif2").is_err());
        // Truncated after the header: an error, not a panic.
        let bytes = std::fs::read("/usr/share/zoneinfo/Europe/Berlin").unwrap();
        for cut in [44, 100, bytes.len() / 2] {
            assert!(Zone::from_tzif(&bytes[..cut]).is_err(), "{cut}");
        }
    }
}
