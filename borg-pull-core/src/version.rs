//! borg's version, as `borg --version` prints it: `borg 1.2.4`, `borg 1.4.5`, `borg 2.0.0b25`.
//!
//! The major version decides the `borg serve` flags (borg 2 has no `--append-only`; it serves
//! current repositories only with `--rest --backend FILE:REPO`) and the client's `BORG_REPO` and
//! `BORG_RSH`/`BORGSTORE_RSH` (see `borg_pull_tunnel`).

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// A borg version: `major.minor.patch` and a pre-release tag such as `b25` or `rc1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BorgVersion {
    /// 1 or 2.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch level.
    pub patch: u32,
    /// A pre-release or local tag (`b25`, `rc1`, `.dev3+g1234`), empty for a release.
    pub pre: String,
}

impl BorgVersion {
    /// Parses `borg --version` output (`borg 1.2.4`, `borg 2.0.0b25`; a leading program name
    /// other than `borg`, as `borg.exe` or `borgfs`, is accepted, trailing whitespace ignored).
    ///
    /// ```
    /// use borg_pull_core::version::BorgVersion;
    /// let v = BorgVersion::parse("borg 2.0.0b25\n").unwrap();
    /// assert_eq!((v.major, v.minor, v.patch, v.pre.as_str()), (2, 0, 0, "b25"));
    /// assert_eq!(BorgVersion::parse("borg 1.2.4").unwrap().to_string(), "1.2.4");
    /// assert!(BorgVersion::parse("usage: borg [-h]").is_none());
    /// ```
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().find(|l| !l.trim().is_empty())?.trim();
        // `borg 1.2.4`, `borg.exe 1.4.0`: the program's name first. A bare `2.1.10` is another
        // program (borgmatic prints its own version so) and must not pass for a borg.
        let (name, text) = line.split_once(' ')?;
        if !name.starts_with("borg") || name.starts_with("borgmatic") {
            return None;
        }
        let text = text.trim();
        let mut numbers = text.splitn(3, '.');
        let number = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let major = number(numbers.next()?)?;
        let minor = number(numbers.next()?)?;
        let rest = numbers.next()?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let patch = number(&rest[..digits])?;
        let pre = rest[digits..].to_owned();
        if pre.contains(char::is_whitespace) || !(1..=2).contains(&major) {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// Runs `program --version` and parses what it prints.
    ///
    /// Blocking (borg's start-up, a fraction of a second); done once per program at start-up.
    pub fn probe(program: &Path) -> Result<Self> {
        let output = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::SpawnBorgVersion {
                program: program.to_owned(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        match Self::parse(&text) {
            Some(v) if output.status.success() => Ok(v),
            _ => Err(Error::BorgVersionUnknown {
                program: program.to_owned(),
                output: crate::text::escape_truncated(
                    &[&output.stdout[..], &output.stderr[..]].concat(),
                    crate::limits::LOG_LINE_MAX,
                ),
            }),
        }
    }
}

impl fmt::Display for BorgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}{}", self.major, self.minor, self.patch, self.pre)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_borg_prints() {
        for (text, want) in [
            ("borg 1.1.18\n", (1, 1, 18, "")),
            ("borg 1.2.4\n", (1, 2, 4, "")),
            ("borg 1.4.5\n", (1, 4, 5, "")),
            ("borg 2.0.0b25\n", (2, 0, 0, "b25")),
            ("borg 2.0.0rc1", (2, 0, 0, "rc1")),
            ("borg.exe 1.4.0\r\n", (1, 4, 0, "")),
            ("borg 1.4.1.dev3+g1234", (1, 4, 1, ".dev3+g1234")),
            ("\nborg 2.1.0\n", (2, 1, 0, "")),
        ] {
            let v = BorgVersion::parse(text).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!((v.major, v.minor, v.patch, v.pre.as_str()), want, "{text:?}");
        }
        assert_eq!(
            BorgVersion::parse("borg 2.0.0b25").unwrap().to_string(),
            "2.0.0b25"
        );
    }

    #[test]
    fn not_versions() {
        for text in [
            "",
            "borg",
            "borg x.y.z",
            "borg 1.2",
            "borg 0.29.0",
            "borg 3.0.0",
            "borg 1.2.x",
            "usage: borg [-V] [-h]",
            "borg -1.2.3",
            "borg 1..2",
            // borgmatic's --version: not a borg.
            "2.1.10",
            "borgmatic 2.1.10",
        ] {
            assert!(BorgVersion::parse(text).is_none(), "{text:?}");
        }
    }
}
