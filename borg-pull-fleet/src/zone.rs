//! Local time without a time-zone crate: the offset comes from the TZif file the C library would
//! use ($TZ, else /etc/localtime). Below the schedule's config (a window is local time) and the
//! schedule itself.

use std::path::Path;
use std::sync::OnceLock;

/// A time zone: UTC offsets over time, from a TZif file (`/etc/localtime`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Zone {
    /// `(from, offset)`: from Unix second `from` on, local time is UTC + `offset` seconds;
    /// sorted. Before the first: `initial`.
    transitions: Vec<(i64, i32)>,
    initial: i32,
}

/// The largest zone file read; the largest of tzdata's is under 4 KiB.
const MAX_TZIF: u64 = 256 * 1024;

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Self::fixed(0)
    }

    /// A fixed offset east of UTC, in seconds.
    pub fn fixed(offset: i32) -> Self {
        Self {
            transitions: Vec::new(),
            initial: offset,
        }
    }

    /// This server's zone as the C library reads it: `$TZ` naming a zone file (`Europe/Berlin`,
    /// `:/path`), else `/etc/localtime`; UTC when neither can be read (read once per process).
    /// Past the file's last transition (2037 in Debian's files) the last offset holds.
    pub fn local() -> &'static Zone {
        static LOCAL: OnceLock<Zone> = OnceLock::new();
        LOCAL.get_or_init(|| {
            let file = match std::env::var("TZ") {
                Ok(tz) if !tz.is_empty() => {
                    let tz = tz.strip_prefix(':').unwrap_or(&tz).to_owned();
                    if tz.starts_with('/') {
                        tz.into()
                    } else {
                        Path::new("/usr/share/zoneinfo").join(tz)
                    }
                }
                _ => "/etc/localtime".into(),
            };
            Self::read(&file).unwrap_or_else(|e| {
                // $TZ set but not a zone file (e.g. a POSIX rule like "CET-1CEST"): say so, the
                // windows and blackouts are then in UTC. No /etc/localtime: UTC is what libc uses.
                if std::env::var_os("TZ").is_some_and(|tz| !tz.is_empty()) {
                    tracing::warn!(
                        "windows and blackouts in UTC: TZ names no zone file ({}: {e})",
                        file.display()
                    );
                } else {
                    tracing::debug!("local time is UTC: {}: {e}", file.display());
                }
                Zone::utc()
            })
        })
    }

    /// The zone in TZif file `path`.
    pub fn read(path: &Path) -> Result<Zone, String> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TZIF).read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        Self::from_tzif(&bytes)
    }

    /// The zone in TZif data (RFC 8536): the 64-bit section of version 2 and later, else the
    /// 32-bit one. The footer's rule for times after the last transition is not read.
    pub fn from_tzif(data: &[u8]) -> Result<Zone, String> {
        let header = |at: usize| -> Result<(u8, [usize; 6]), String> {
            let h = data.get(at..at + 44).ok_or("truncated TZif header")?;
            if &h[..4] != b"TZif" {
                return Err("not a TZif file".into());
            }
            let mut counts = [0usize; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                let b = &h[20 + 4 * i..24 + 4 * i];
                *c = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            }
            Ok((h[4], counts))
        };
        let block_len = |counts: [usize; 6], time: usize| {
            let [isut, isstd, leap, time_n, type_n, chars] = counts;
            time_n * time + time_n + type_n * 6 + chars + leap * (time + 4) + isstd + isut
        };
        let (version, counts) = header(0)?;
        let (at, counts, time) = if version >= b'2' {
            let second = 44 + block_len(counts, 4);
            (second + 44, header(second)?.1, 8)
        } else {
            (44, counts, 4)
        };
        let [_, _, _, time_n, type_n, _] = counts;
        let body = data
            .get(at..at + block_len(counts, time))
            .ok_or("truncated TZif data")?;
        let times = &body[..time_n * time];
        let indices = &body[time_n * time..time_n * (time + 1)];
        let types = &body[time_n * (time + 1)..time_n * (time + 1) + type_n * 6];
        let offset_of = |i: usize| -> Result<i32, String> {
            let t = types.get(i * 6..i * 6 + 4).ok_or("bad TZif type index")?;
            Ok(i32::from_be_bytes([t[0], t[1], t[2], t[3]]))
        };
        if type_n == 0 {
            return Err("TZif file without local time types".into());
        }
        let mut transitions = Vec::with_capacity(time_n);
        for (i, &index) in indices.iter().enumerate() {
            let t = &times[i * time..(i + 1) * time];
            let from = if time == 8 {
                i64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
            } else {
                i64::from(i32::from_be_bytes([t[0], t[1], t[2], t[3]]))
            };
            transitions.push((from, offset_of(usize::from(index))?));
        }
        transitions.sort_by_key(|&(from, _)| from);
        Ok(Zone {
            transitions,
            initial: offset_of(0)?,
        })
    }

    /// Seconds east of UTC at Unix second `t`.
    pub fn offset_at(&self, t: u64) -> i32 {
        let t = i64::try_from(t).unwrap_or(i64::MAX);
        match self.transitions.partition_point(|&(from, _)| from <= t) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }

    /// The local minute of the day (0..1440) at Unix second `t`.
    pub fn minute_of_day(&self, t: u64) -> u32 {
        let local = i64::try_from(t).unwrap_or(i64::MAX) + i64::from(self.offset_at(t));
        u32::try_from(local.rem_euclid(86400) / 60).unwrap_or(0)
    }
}
