//! The schedule's settings as the config holds them (`every`, `window`, `blackout`, `retry`):
//! data and parsing only; when a client is due is [`crate::schedule`]'s job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::zone::Zone;

/// `every` when unset: the nightly rhythm of `run` before the schedule existed.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(24 * 3600);
/// `retry` when unset: a failure caused by something passing (a reboot, a full disk cleaned up)
/// is retried within the hour; a lasting one costs at most log2(every / 1h) + 1 attempts a day.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3600);

/// A client's schedule (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// A backup at least this often (`every`, 24h).
    pub every: Duration,
    /// Pulls start only in these hours (`window`), if set.
    pub window: Option<Hours>,
    /// Pulls never start in these hours (`blackout`).
    pub blackout: Vec<Hours>,
    /// The delay after a failed pull (`retry`, capped at `every`).
    pub retry: Backoff,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            every: DEFAULT_EVERY,
            window: None,
            blackout: Vec::new(),
            retry: Backoff {
                first: DEFAULT_RETRY,
                cap: DEFAULT_EVERY,
            },
        }
    }
}

impl Schedule {
    /// Whether a pull may start at `t` (Unix seconds) by the window and the blackouts, in `zone`.
    pub fn may_start(&self, t: u64, zone: &Zone) -> bool {
        let minute = zone.minute_of_day(t);
        self.window.is_none_or(|w| w.contains_minute(minute))
            && !self.blackout.iter().any(|b| b.contains_minute(minute))
    }

    /// Whether some minute of the day is inside the window and outside every blackout (else no
    /// pull could ever start: a config error).
    pub fn leaves_time_to_start(&self) -> bool {
        (0..MINUTES_PER_DAY).any(|m| {
            self.window.is_none_or(|w| w.contains_minute(m))
                && !self.blackout.iter().any(|b| b.contains_minute(m))
        })
    }

    /// The first moment at or after `t` when a pull may start; `None` when there is none in the
    /// next three days (only a schedule that [`Self::leaves_time_to_start`] rejects).
    pub fn next_start(&self, t: u64, zone: &Zone) -> Option<u64> {
        if self.may_start(t, zone) {
            return Some(t);
        }
        // The moments when a closed time opens: a window's start, a blackout's end.
        let openings: Vec<u32> = self
            .window
            .iter()
            .map(|w| w.start)
            .chain(self.blackout.iter().map(|b| b.end % MINUTES_PER_DAY))
            .collect();
        let offset = i64::from(zone.offset_at(t));
        let local = i64::try_from(t).ok()? + offset;
        let midnight = local - local.rem_euclid(86400);
        let mut best: Option<u64> = None;
        for day in 0..3 {
            for &minute in &openings {
                let local_at = midnight + day * 86400 + i64::from(minute) * 60;
                // The offset there, not here: a DST change in between moves it by an hour.
                let guess = local_at - offset;
                let at = local_at - i64::from(zone.offset_at(u64::try_from(guess).unwrap_or(0)));
                let Ok(at) = u64::try_from(at) else { continue };
                if at > t && best.is_none_or(|b| at < b) && self.may_start(at, zone) {
                    best = Some(at);
                }
            }
        }
        best
    }
}

const MINUTES_PER_DAY: u32 = 24 * 60;

/// A daily range of local time, `HH:MM-HH:MM`: from the start up to (not including) the end; an
/// end earlier than the start wraps midnight (`22:00-06:00`); `24:00` may end a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Minute of the day it starts (0..1440).
    pub start: u32,
    /// Minute of the day it ends (1..=1440), excluded.
    pub end: u32,
}

impl Hours {
    /// The accepted form, for error messages.
    pub const FORM: &'static str =
        "\"HH:MM-HH:MM\" in this server's local time, e.g. \"22:00-06:00\" (wraps midnight)";

    /// Whether minute `m` of the day (0..1440) is inside.
    pub fn contains_minute(&self, m: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

impl FromStr for Hours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected {}", Hours::FORM);
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == MINUTES_PER_DAY {
            return Err(format!("{s:?}: a range cannot start at 24:00 (use 00:00)"));
        }
        if start == end {
            return Err(format!(
                "{s:?}: start and end are the same time; leave the key out for the whole day"
            ));
        }
        Ok(Hours { start, end })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// The retry delay after failures in a row: `first`, doubled per failure, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// After the first failure.
    pub first: Duration,
    /// The longest delay (the client's `every`: a failing client is still tried as often as a
    /// healthy one is backed up).
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `failures` failures in a row (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.first
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }
}
