//! Times as people write and read them: durations such as `36h` (configuration and command
//! lines) and dates in UTC (summaries, `status`, the page). One copy each, shared by the fleet
//! and the binaries.

use std::time::Duration;

/// `N`, `Ns`, `Nm`, `Nh` or `Nd` with N > 0 (`pull --max-runtime`, `max_age`, `every`, ...).
///
/// ```
/// use borg_pull_fleet::time_text::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("36h"), Ok(Duration::from_secs(36 * 3600)));
/// assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("0h").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: expected a number with s, m, h or d, e.g. 36h")),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long")),
        _ => Err(format!(
            "{s:?}: expected a number above 0 with s, m, h or d, e.g. 36h"
        )),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(seconds: u64) -> String {
    let (date, secs) = utc_date(seconds);
    format!("{date} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Unix seconds as `YYYY-MM-DD HH:MM` in UTC (tables where seconds are noise).
pub fn utc_minutes(seconds: u64) -> String {
    let (date, secs) = utc_date(seconds);
    format!("{date} {:02}:{:02}", secs / 3600, secs / 60 % 60)
}

/// `YYYY-MM-DD` of Unix seconds, and the seconds into that day (Howard Hinnant's
/// `civil_from_days`).
fn utc_date(seconds: u64) -> (String, u64) {
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), seconds % 86_400)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`): the
/// inverse of the date in [`utc`].
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit_and_a_positive_number() {
        assert_eq!(parse_duration("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        for bad in [
            "0h",
            "h",
            "",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_dates_by_hand() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc_minutes(0), "1970-01-01 00:00");
        assert_eq!(utc(1_767_268_800 + 59), "2026-01-01 12:00:59");
        assert_eq!(utc_minutes(1_709_164_800 + 61), "2024-02-29 00:01");
        assert_eq!(utc(951_868_799), "2000-02-29 23:59:59");
    }

    #[test]
    fn days_from_civil_inverts_the_date() {
        for days in [0i64, 1, 59, 365, 10_957, 11_016, 19_782, 20_454, 100_000] {
            let date = utc_date(days as u64 * 86_400).0;
            let (y, rest) = date.split_once('-').unwrap();
            let (m, d) = rest.split_once('-').unwrap();
            let back = days_from_civil(y.parse().unwrap(), m.parse().unwrap(), d.parse().unwrap());
            assert_eq!(back, days, "{date}");
        }
    }
}
