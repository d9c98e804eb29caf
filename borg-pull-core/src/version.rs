//! borg's version, as `borg --version` prints it: `borg 1.2.4`, `borg 1.4.5`, `borg 2.0.0b25`.
//!
//! The exact version decides the [`Generation`], which decides the `borg serve` flags (the 2.0
//! betas went from borg 1's `--append-only` to nothing that refuses deletes, then
//! `BORG_REPO_PERMISSIONS`, `--permissions` and REST with `--rest --backend FILE:REPO`) and the
//! client's `BORG_REPO` and `BORG_RSH`/`BORGSTORE_RSH` (see `borg_pull_tunnel`).

use std::fmt;

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
}

/// How a borg version serves a repository, decided by its exact version: the `borg serve` flags,
/// how deletes are refused, the wire protocol, the client's URL and the command that creates a
/// repository changed within the 2.0 betas (docs/changes.rst of borg, and each beta's
/// `serve --help`). Client and server must be of one generation: each generation's repositories
/// or protocol differ from the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// borg 1.x: msgpack RPC, `serve --append-only [--storage-quota]`, `ssh://host/ABS`, `init`.
    Borg1,
    /// 2.0.0 alphas and b1-b9 (Debian 12's `borgbackup2` is 2.0.0b5): borg 1's RPC and
    /// segment-file repositories, `serve --append-only [--storage-quota]`, `ssh://host/ABS`,
    /// `rcreate`.
    Borg2Segments,
    /// 2.0.0b10-b16: borgstore repositories over the RPC; `--append-only` is accepted until b15
    /// but "not implemented / not implementable" (repository.py), so nothing refuses deletes.
    Borg2StoreUnrestricted,
    /// 2.0.0b17: borgstore over the RPC; deletes refused by `BORG_REPO_PERMISSIONS=no-delete` in
    /// borg serve's environment (no flag yet).
    Borg2StorePermissionsEnv,
    /// 2.0.0b18-b21: borgstore over the RPC; `serve --permissions no-delete`.
    Borg2StorePermissions,
    /// 2.0.0b22-b24: borgstore's REST over stdio, `serve --rest --backend FILE:REPO --permissions
    /// no-delete`; the client names it `rest://host//REPO` (its `ssh://` is for borg 1.x
    /// repositories only).
    Borg2RestScheme,
    /// 2.0.0b25 and later (rc, release): as 2.0.0b22-b24, but the client's URL is
    /// `ssh://host//REPO` again (`rest://` is gone).
    Borg2Rest,
}

/// How borg on the client talks to `borg serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// borg's msgpack RPC (borg 1.x and 2.0.0b1-b21), starting with a `negotiate` call that
    /// carries the client's version.
    Rpc,
    /// HTTP/1.1 over stdio to `serve --rest` (2.0.0b22 and later).
    Http,
}

impl Generation {
    /// The versions of this generation, for messages.
    pub fn versions(self) -> &'static str {
        match self {
            Self::Borg1 => "borg 1.x",
            Self::Borg2Segments => "borg 2.0.0b1-b9",
            Self::Borg2StoreUnrestricted => "borg 2.0.0b10-b16",
            Self::Borg2StorePermissionsEnv => "borg 2.0.0b17",
            Self::Borg2StorePermissions => "borg 2.0.0b18-b21",
            Self::Borg2RestScheme => "borg 2.0.0b22-b24",
            Self::Borg2Rest => "borg 2.0.0b25 and later",
        }
    }

    /// How clients of this generation talk to borg serve.
    pub fn wire(self) -> Wire {
        match self {
            Self::Borg2RestScheme | Self::Borg2Rest => Wire::Http,
            _ => Wire::Rpc,
        }
    }

    /// Whether borg serve has `--append-only` and `--storage-quota` that work.
    pub fn has_append_only(self) -> bool {
        matches!(self, Self::Borg1 | Self::Borg2Segments)
    }

    /// Whether the client's `ssh://host/PATH` is relative to the login directory, so that an
    /// absolute path needs `ssh://host//PATH` (borgstore's URLs, 2.0.0b10 and later).
    pub fn url_path_relative(self) -> bool {
        !matches!(self, Self::Borg1 | Self::Borg2Segments)
    }

    /// Whether borg on the client reaches the store through borgstore, which reads
    /// `BORGSTORE_RSH` rather than `BORG_RSH`.
    pub fn uses_borgstore_rsh(self) -> bool {
        self.wire() == Wire::Http
    }

    /// The scheme of the client's repository URL.
    pub fn url_scheme(self) -> &'static str {
        match self {
            Self::Borg2RestScheme => "rest",
            _ => "ssh",
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.versions())
    }
}

impl BorgVersion {
    /// The generation this exact version belongs to.
    ///
    /// ```
    /// use borg_pull_core::version::{BorgVersion, Generation};
    /// let g = |s| BorgVersion::parse(s).unwrap().generation();
    /// assert_eq!(g("borg 1.4.5"), Generation::Borg1);
    /// assert_eq!(g("borg2 2.0.0b5"), Generation::Borg2Segments);
    /// assert_eq!(g("borg 2.0.0b16"), Generation::Borg2StoreUnrestricted);
    /// assert_eq!(g("borg 2.0.0b17"), Generation::Borg2StorePermissionsEnv);
    /// assert_eq!(g("borg 2.0.0b21"), Generation::Borg2StorePermissions);
    /// assert_eq!(g("borg 2.0.0b24"), Generation::Borg2RestScheme);
    /// assert_eq!(g("borg 2.0.0b25"), Generation::Borg2Rest);
    /// assert_eq!(g("borg 2.1.0"), Generation::Borg2Rest);
    /// ```
    pub fn generation(&self) -> Generation {
        if self.major < 2 {
            return Generation::Borg1;
        }
        if (self.minor, self.patch) != (0, 0) {
            return Generation::Borg2Rest;
        }
        match self.prerelease() {
            Some((PreRelease::Alpha, _)) => Generation::Borg2Segments,
            Some((PreRelease::Beta, n)) => match n {
                0..=9 => Generation::Borg2Segments,
                10..=16 => Generation::Borg2StoreUnrestricted,
                17 => Generation::Borg2StorePermissionsEnv,
                18..=21 => Generation::Borg2StorePermissions,
                22..=24 => Generation::Borg2RestScheme,
                _ => Generation::Borg2Rest,
            },
            // rc, the release, or a tag we cannot read (a dev build of the newest code).
            Some((PreRelease::Rc, _)) | None => Generation::Borg2Rest,
        }
    }

    /// The pre-release kind and number (`b25` -> beta 25; `b25.dev3+g1234` too), as borg's own
    /// `parse_version` reads it.
    fn prerelease(&self) -> Option<(PreRelease, u32)> {
        let (kind, rest) = if let Some(rest) = self.pre.strip_prefix("rc") {
            (PreRelease::Rc, rest)
        } else if let Some(rest) = self.pre.strip_prefix('a') {
            (PreRelease::Alpha, rest)
        } else if let Some(rest) = self.pre.strip_prefix('b') {
            (PreRelease::Beta, rest)
        } else {
            return None;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        Some((kind, rest[..digits].parse().ok()?))
    }

    /// Reads the version borg's RPC client announces in its first call (`negotiate`, with
    /// `client_data: {client_version: [major, minor, patch, kind, number]}`, kind -4 alpha, -3
    /// beta, -2 rc, -1 release; borg's version.py), from the first bytes of a connection.
    /// `None` if they hold no such version.
    ///
    /// ```
    /// use borg_pull_core::version::BorgVersion;
    /// let b5 = b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x95\x02\x00\x00\xfd\x05";
    /// assert_eq!(BorgVersion::from_rpc_negotiate(b5).unwrap().to_string(), "2.0.0b5");
    /// let v124 = b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x94\x01\x02\x04\xff";
    /// assert_eq!(BorgVersion::from_rpc_negotiate(v124).unwrap().to_string(), "1.2.4");
    /// ```
    pub fn from_rpc_negotiate(first: &[u8]) -> Option<Self> {
        const KEY: &[u8] = b"\xaeclient_version";
        let at = first.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let mut rest = first.get(at..)?.iter().copied();
        let count = match rest.next()? {
            b @ 0x90..=0x9f => usize::from(b & 0x0f),
            _ => return None,
        };
        let mut numbers = Vec::with_capacity(count);
        for _ in 0..count {
            let n: i64 = match rest.next()? {
                b @ 0x00..=0x7f => i64::from(b),
                b @ 0xe0..=0xff => i64::from(b as i8),
                0xcc => i64::from(rest.next()?),
                0xcd => i64::from(u16::from_be_bytes([rest.next()?, rest.next()?])),
                _ => return None,
            };
            numbers.push(n);
        }
        let part = |i: usize| numbers.get(i).and_then(|&n| u32::try_from(n).ok());
        let (major, minor, patch) = (part(0)?, part(1)?, part(2)?);
        let pre = match (numbers.get(3).copied(), part(4)) {
            (None | Some(-1), _) => String::new(),
            (Some(-4), Some(n)) => format!("a{n}"),
            (Some(-3), Some(n)) => format!("b{n}"),
            (Some(-2), Some(n)) => format!("rc{n}"),
            _ => return None,
        };
        (1..=2).contains(&major).then_some(Self {
            major,
            minor,
            patch,
            pre,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreRelease {
    Alpha,
    Beta,
    Rc,
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
    fn generations_by_exact_version() {
        use Generation::*;
        for (text, want) in [
            ("borg 1.1.18", Borg1),
            ("borg 1.4.5", Borg1),
            ("borg 2.0.0a4", Borg2Segments),
            ("borg 2.0.0b1", Borg2Segments),
            ("borg2 2.0.0b5", Borg2Segments),
            ("borg 2.0.0b9", Borg2Segments),
            ("borg 2.0.0b10", Borg2StoreUnrestricted),
            ("borg 2.0.0b16", Borg2StoreUnrestricted),
            ("borg 2.0.0b17", Borg2StorePermissionsEnv),
            ("borg 2.0.0b18", Borg2StorePermissions),
            ("borg 2.0.0b21", Borg2StorePermissions),
            ("borg 2.0.0b21.dev4+g12ab", Borg2StorePermissions),
            ("borg 2.0.0b22", Borg2RestScheme),
            ("borg 2.0.0b24", Borg2RestScheme),
            ("borg 2.0.0b25", Borg2Rest),
            ("borg 2.0.0rc1", Borg2Rest),
            ("borg 2.0.0", Borg2Rest),
            ("borg 2.1.3", Borg2Rest),
        ] {
            let v = BorgVersion::parse(text).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(v.generation(), want, "{text}");
        }
    }

    #[test]
    fn client_versions_from_the_rpc_negotiate_call() {
        for (first, want) in [
            (&b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x94\x01\x02\x04\xff"[..], Some("1.2.4")),
            (b"\x83\xa1i\x01\xa1m\xa9negotiate\xa1a\x81\xabclient_data\x81\xaeclient_version\x95\x02\x00\x00\xfd\x11", Some("2.0.0b17")),
            (b"\xaeclient_version\x95\x02\x00\x00\xfe\x01", Some("2.0.0rc1")),
            (b"\xaeclient_version\x95\x02\x00\x00\xfc\x04", Some("2.0.0a4")),
            (b"\xaeclient_version\x94\x01\x01\xcc\x80\xff", Some("1.1.128")),
            // Cut short, another shape, an unknown kind, a major borg never had: no version.
            (b"\xaeclient_version\x95\x02\x00\x00\xfd", None),
            (b"\xaeclient_version\xa5hello", None),
            (b"\xaeclient_version\x95\x02\x00\x00\xf0\x05", None),
            (b"\xaeclient_version\x94\x07\x00\x00\xff", None),
            (b"\x94\x01\x01\xa9negotiate", None),
            (b"", None),
        ] {
            assert_eq!(
                BorgVersion::from_rpc_negotiate(first).map(|v| v.to_string()).as_deref(),
                want,
                "{first:?}"
            );
        }
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
