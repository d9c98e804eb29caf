//! A small OpenSSH `known_hosts` reader and writer.
//!
//! `russh::keys::known_hosts` only splits lines on single spaces and knows plain and hashed host
//! names; it misses tabs, indented comments, wildcards, negations and markers (an `@revoked` line
//! would be misread). This module implements what OpenSSH's `sshd(8)` "SSH_KNOWN_HOSTS FILE FORMAT"
//! describes, except `@cert-authority` (host certificates are refused, see
//! [`crate::Error::HostCertificateUnsupported`]):
//!
//! - one or more comma-separated host patterns, the lookup name being `host` for port 22 and
//!   `[host]:port` otherwise (lower-cased, as OpenSSH does);
//! - patterns with `*` and `?` wildcards, and `!pattern` negations (a negated match excludes the line);
//! - hashed names `|1|salt|hash` (HMAC-SHA1 of the lookup name, `HashKnownHosts yes`);
//! - `@revoked` lines: a matching key is refused even if also listed as valid;
//! - fields separated by spaces or tabs, blank lines and `#` comments (also indented).
//!
//! Lines that do not parse (unknown key types, broken base64) are skipped, like OpenSSH does.

use std::io::Write;
use std::path::Path;

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;
use sha1::Sha1;

use crate::{Error, Result};

/// The marker at the start of a known_hosts line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A plain entry: this key is valid for these hosts.
    None,
    /// `@revoked`: never accept this key.
    Revoked,
    /// `@cert-authority`: a CA for host certificates (parsed, not used: unsupported).
    CertAuthority,
}

/// One parsed known_hosts line.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's marker.
    pub marker: Marker,
    /// The host pattern field as written.
    pub hosts: String,
    /// The key.
    pub key: PublicKey,
}

/// The result of looking up a host's offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is recorded for this host (at this 1-based line).
    Known {
        /// Line of the matching entry.
        line: usize,
    },
    /// Nothing is recorded for this host.
    Unknown,
    /// A different key of the same type is recorded for this host.
    Changed {
        /// Line of the first recorded key of that type.
        line: usize,
    },
    /// Only keys of other types are recorded for this host.
    OtherTypes {
        /// The recorded key types.
        types: Vec<String>,
    },
    /// The offered key is `@revoked`.
    Revoked {
        /// Line of the `@revoked` entry.
        line: usize,
    },
}

/// The name under which OpenSSH records `host:port`: `host` for 22, else `[host]:port`.
///
/// ```
/// use borg_pull_tunnel::ssh::known_hosts::lookup_name;
/// assert_eq!(lookup_name("Example.COM", 22), "example.com");
/// assert_eq!(lookup_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
/// ```
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The largest known_hosts file [`KnownHosts::read`] reads: some 300 000 hashed entries.
pub(crate) const MAX_KNOWN_HOSTS_BYTES: u64 = 64 << 20;

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    /// The parsed entries, in file order.
    pub entries: Vec<Entry>,
}

impl KnownHosts {
    /// Parses known_hosts text; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| parse_line(i + 1, line))
            .collect();
        KnownHosts { entries }
    }

    /// Reads and parses `path`; a missing file is an empty one. A file larger than
    /// `MAX_KNOWN_HOSTS_BYTES` (64 MiB; or endless, like a device) is an error, not a hang.
    pub fn read(path: &Path) -> Result<Self> {
        use std::io::Read;
        let io_err = |source| Error::KnownHostsIo {
            action: "read",
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(io_err(source)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_KNOWN_HOSTS_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_KNOWN_HOSTS_BYTES {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("it is larger than {MAX_KNOWN_HOSTS_BYTES} bytes; is it the right file?"),
            )));
        }
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The key algorithms recorded (not revoked) for `host` on `port`, in file order.
    ///
    /// Used to ask the server for a key type we can verify, as OpenSSH does: a host with an old
    /// `ecdsa` entry and a newer `ed25519` key must not fail as "other key type".
    pub fn recorded_algorithms(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let name = lookup_name(host, port);
        let mut out: Vec<russh::keys::Algorithm> = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| e.marker == Marker::None && hosts_match(&e.hosts, &name))
        {
            let alg = e.key.algorithm();
            if !out.contains(&alg) {
                out.push(alg);
            }
        }
        out
    }

    /// Looks up `key` offered by `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = lookup_name(host, port);
        // Matching is the costly part (hashed entries are an HMAC each): do it once.
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| hosts_match(&e.hosts, &name))
            .collect();
        if let Some(e) = matching
            .iter()
            .find(|e| e.marker == Marker::Revoked && same_key(&e.key, key))
        {
            return Verdict::Revoked { line: e.line };
        }
        let plain: Vec<&Entry> = matching
            .into_iter()
            .filter(|e| e.marker == Marker::None)
            .collect();
        if let Some(e) = plain.iter().find(|e| same_key(&e.key, key)) {
            return Verdict::Known { line: e.line };
        }
        if let Some(e) = plain.iter().find(|e| e.key.algorithm() == key.algorithm()) {
            return Verdict::Changed { line: e.line };
        }
        if plain.is_empty() {
            return Verdict::Unknown;
        }
        // Each type once, in file order (types need not be adjacent in the file).
        let mut types: Vec<String> = Vec::new();
        for t in plain.iter().map(|e| e.key.algorithm().to_string()) {
            if !types.contains(&t) {
                types.push(t);
            }
        }
        Verdict::OtherTypes { types }
    }
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

fn parse_line(line: usize, text: &str) -> Option<Entry> {
    let mut fields = text.split([' ', '\t']).filter(|f| !f.is_empty());
    let mut first = fields.next()?;
    if first.starts_with('#') {
        return None;
    }
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let key_type = fields.next()?;
    let blob = fields.next()?;
    let key = russh::keys::parse_public_key_base64(blob).ok()?;
    // ssh-key keeps a key of an unknown algorithm (`name@domain`) as an opaque `Other` key, which
    // we can never verify: skip the line like OpenSSH does. Keeping it also made the algorithms
    // recorded for a host grow with the file, and listing them quadratic in it (found by fuzzing).
    if matches!(key.algorithm(), russh::keys::Algorithm::Other(_)) || key.algorithm().as_str() != key_type {
        return None;
    }
    Some(Entry {
        line,
        marker,
        hosts: first.to_owned(),
        key,
    })
}

/// Whether the comma-separated pattern list `patterns` matches the lookup `name`.
///
/// A matching negated pattern (`!pat`) makes the whole list not match, as in OpenSSH.
///
/// ```
/// use borg_pull_tunnel::ssh::known_hosts::hosts_match;
/// assert!(hosts_match("a.example,[127.0.0.1]:2222", "[127.0.0.1]:2222"));
/// assert!(hosts_match("*.example,!bad.example", "good.example"));
/// assert!(!hosts_match("*.example,!bad.example", "bad.example"));
/// ```
pub fn hosts_match(patterns: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            // Costly (an HMAC): only worth it while nothing matched yet.
            matched = matched || hashed_match(hashed, &name);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else {
            matched = matched || wildcard_match(pattern.as_bytes(), name.as_bytes());
        }
    }
    matched
}

fn hashed_match(salt_and_hash: &str, name: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (BASE64.decode(salt.as_bytes()), BASE64.decode(hash.as_bytes())) else {
        return false;
    };
    let Ok(mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes()).verify_slice(&hash).is_ok()
}

/// `*` matches any run of bytes, `?` exactly one; everything else literally, ASCII letters in
/// `pattern` in either case (`name` is lower case already).
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear-ish and no recursion.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c.to_ascii_lowercase() == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Hashes `name` as OpenSSH's `HashKnownHosts` does, with the given salt (for tests and tools).
pub fn hash_name(salt: &[u8], name: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    let hash = mac.finalize().into_bytes();
    format!("|1|{}|{}", BASE64.encode(salt), BASE64.encode(&hash))
}

/// Appends `host`'s `key` to `path` (like OpenSSH's `StrictHostKeyChecking accept-new`),
/// creating the file and its directory (mode 0700) if needed.
///
/// Refuses a host name that would not read back as exactly that host ([`recordable_host`]): one
/// with a space, tab, newline or control character would split or add lines (a newline could
/// record a second, attacker-chosen entry), `,` `*` `?` `[` `]` would record a pattern matching
/// other hosts or ports, and a leading `!` `#` `@` `|` a negation, comment, marker or hash.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<()> {
    let io_err = |source| Error::KnownHostsIo {
        action: "append to",
        path: path.to_owned(),
        source,
    };
    if !recordable_host(host) {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "refusing to record host name {host:?}: known_hosts would read it as something else \
                 (it is empty, contains whitespace, a control character or one of `,*?[]`, or starts \
                 with one of `!#@|`)"
            ),
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
    }
    let needs_newline = last_byte(path).is_some_and(|b| b != b'\n');
    let mut key_text = key.clone();
    key_text.set_comment("");
    let openssh = key_text
        .to_openssh()
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let line = format!(
        "{}{} {}\n",
        if needs_newline { "\n" } else { "" },
        lookup_name(host, port),
        openssh.trim_end()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err)?;
    file.write_all(line.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// The last byte of the regular file `path`, if it has one (read without reading the file).
fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    file.seek(SeekFrom::End(-1)).ok()?;
    let mut byte = [0u8];
    file.read_exact(&mut byte).ok()?;
    Some(byte[0])
}

/// Whether `append` can record `host` so that it reads back as exactly that host and nothing else.
///
/// ```
/// use borg_pull_tunnel::ssh::known_hosts::recordable_host;
/// assert!(recordable_host("nas.example") && recordable_host("fe80::1%eth0") && recordable_host("10.0.0.1"));
/// assert!(!recordable_host("*") && !recordable_host("a,b") && !recordable_host("a\nb") && !recordable_host("[a]:1"));
/// ```
pub fn recordable_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with(['!', '#', '@', '|'])
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '*' | '?' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";
    const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ6bf3dbzde0DkKszja6oxFLSIa2yY6qS97T6c6L8ucbHM//MO5e0bKg+26xSd2S5ay8xUDYVwAWytmEqcmOK50=";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    #[test]
    fn plain_port_and_tabs() {
        let kh = KnownHosts::parse(&format!(
            "# comment\n\n   # indented comment\n[127.0.0.1]:2222\tssh-ed25519\t{ED1}\nexample.com ssh-ed25519 {ED2} c\n"
        ));
        assert_eq!(kh.entries.len(), 2);
        assert_eq!(kh.check("127.0.0.1", 2222, &key(ED1)), Verdict::Known { line: 4 });
        assert_eq!(
            kh.check("127.0.0.1", 2222, &key(ED2)),
            Verdict::Changed { line: 4 }
        );
        assert_eq!(kh.check("127.0.0.1", 22, &key(ED1)), Verdict::Unknown);
        assert_eq!(kh.check("EXAMPLE.com", 22, &key(ED2)), Verdict::Known { line: 5 });
        assert_eq!(kh.check("example.com", 2222, &key(ED2)), Verdict::Unknown);
    }

    #[test]
    fn multiple_hosts_wildcards_negation() {
        let kh = KnownHosts::parse(&format!(
            "a.test,*.example.org,!evil.example.org ssh-ed25519 {ED1}\n"
        ));
        assert!(matches!(kh.check("a.test", 22, &key(ED1)), Verdict::Known { .. }));
        assert!(matches!(
            kh.check("www.example.org", 22, &key(ED1)),
            Verdict::Known { .. }
        ));
        assert_eq!(kh.check("evil.example.org", 22, &key(ED1)), Verdict::Unknown);
        assert_eq!(kh.check("b.test", 22, &key(ED1)), Verdict::Unknown);
        let kh = KnownHosts::parse(&format!("[10.0.0.?]:* ssh-ed25519 {ED1}\n"));
        assert!(matches!(
            kh.check("10.0.0.7", 2200, &key(ED1)),
            Verdict::Known { .. }
        ));
        assert_eq!(kh.check("10.0.0.17", 2200, &key(ED1)), Verdict::Unknown);
    }

    #[test]
    fn hashed_entries() {
        // Produced by `ssh-keygen -H` for "example.com" (same vector as russh's tests).
        let kh = KnownHosts::parse(
            "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF\n",
        );
        let k = key("AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF");
        assert_eq!(kh.check("example.com", 22, &k), Verdict::Known { line: 1 });
        assert_eq!(kh.check("example.net", 22, &k), Verdict::Unknown);
        let name = hash_name(b"0123456789abcdefghij", "[h]:2222");
        let kh = KnownHosts::parse(&format!("{name} ssh-ed25519 {ED2}\n"));
        assert!(matches!(kh.check("h", 2222, &key(ED2)), Verdict::Known { .. }));
    }

    #[test]
    fn revoked_and_markers() {
        let kh = KnownHosts::parse(&format!(
            "@revoked * ssh-ed25519 {ED1}\nhost ssh-ed25519 {ED1}\n@cert-authority *.test ssh-ed25519 {ED2}\n"
        ));
        assert_eq!(kh.check("host", 22, &key(ED1)), Verdict::Revoked { line: 1 });
        // A CA line is not a host key.
        assert_eq!(kh.check("x.test", 22, &key(ED2)), Verdict::Unknown);
    }

    #[test]
    fn recorded_algorithms_in_order() {
        let kh = KnownHosts::parse(&format!(
            "h ecdsa-sha2-nistp256 {ECDSA}\nh ssh-ed25519 {ED1}\nh ssh-ed25519 {ED2}\nother ssh-ed25519 {ED1}\n"
        ));
        let algs: Vec<String> = kh
            .recorded_algorithms("h", 22)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(algs, ["ecdsa-sha2-nistp256", "ssh-ed25519"]);
        assert!(kh.recorded_algorithms("nobody", 22).is_empty());
    }

    #[test]
    fn other_types_and_garbage() {
        let kh = KnownHosts::parse(&format!(
            "host ecdsa-sha2-nistp256 {ECDSA}\nhost ssh-ed25519 notbase64!!\nhost ssh-rsa {ED1}\n@bogus host ssh-ed25519 {ED1}\nhost\n"
        ));
        assert_eq!(kh.entries.len(), 1);
        assert_eq!(
            kh.check("host", 22, &key(ED1)),
            Verdict::OtherTypes {
                types: vec!["ecdsa-sha2-nistp256".into()]
            }
        );
    }

    #[test]
    fn append_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append(&path, "127.0.0.1", 2222, &key(ED1)).unwrap();
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().trim_end()).unwrap();
        append(&path, "h", 22, &key(ED2)).unwrap();
        let kh = KnownHosts::read(&path).unwrap();
        assert_eq!(kh.check("127.0.0.1", 2222, &key(ED1)), Verdict::Known { line: 1 });
        assert_eq!(kh.check("h", 22, &key(ED2)), Verdict::Known { line: 2 });
        assert!(KnownHosts::read(&dir.path().join("missing"))
            .unwrap()
            .entries
            .is_empty());
    }

    proptest::proptest! {
        #[test]
        fn hashed_names_match_only_their_host(host in "[a-z0-9.-]{1,30}", port in 1u16.., salt in proptest::collection::vec(proptest::prelude::any::<u8>(), 20)) {
            let name = lookup_name(&host, port);
            let hashed = hash_name(&salt, &name);
            proptest::prop_assert!(hosts_match(&hashed, &name));
            let other = format!("{}x", name);
            proptest::prop_assert!(!hosts_match(&hashed, &other));
            let kh = KnownHosts::parse(&format!("{hashed} ssh-ed25519 {ED1}\n"));
            proptest::prop_assert_eq!(kh.check(&host, port, &key(ED1)), Verdict::Known { line: 1 });
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let kh = KnownHosts::parse(&text);
            let _ = kh.check("h", 22, &key(ED1));
        }

        #[test]
        fn star_matches_everything(name in "\\PC{0,40}") {
            proptest::prop_assert!(wildcard_match(b"*", name.as_bytes()));
            let lower = name.to_ascii_lowercase();
            proptest::prop_assert!(wildcard_match(name.as_bytes(), lower.as_bytes()) || name.contains(['*', '?']));
        }
    }

    /// Found by tests/fuzz_known_hosts.rs: `append` wrote any host name as it was, so a name with
    /// a tab or space recorded nothing usable, one with a newline could add a second entry of the
    /// caller's choosing, and `*`, `,` or `[h]:p` recorded a pattern for other hosts or ports.
    #[test]
    fn append_refuses_names_that_would_read_back_as_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        for host in [
            "\t",
            "a b",
            "",
            "*",
            "a,b",
            "h?",
            "[h]:2222",
            "!h",
            "#h",
            "@revoked",
            "|1|x|y",
            &format!("x\n* ssh-ed25519 {ED2}"),
        ] {
            let err = append(&path, host, 22, &key(ED1)).unwrap_err();
            assert!(
                borg_pull_core::error::Chain(&err)
                    .to_string()
                    .contains("refusing to record host name"),
                "{host:?}: {err}"
            );
        }
        assert!(!path.exists(), "nothing was written");
        for host in [
            "h",
            "nas.example",
            "10.0.0.1",
            "fe80::1%eth0",
            "under_score",
            "Upper.Example",
        ] {
            append(&path, host, 2222, &key(ED1)).unwrap();
            let kh = KnownHosts::read(&path).unwrap();
            assert!(
                matches!(kh.check(host, 2222, &key(ED1)), Verdict::Known { .. }),
                "{host}"
            );
            assert_eq!(kh.check("other", 2222, &key(ED1)), Verdict::Unknown, "{host}");
        }
    }

    #[test]
    fn other_types_are_listed_once_each() {
        let kh = KnownHosts::parse(&format!(
            "h ecdsa-sha2-nistp256 {ECDSA}\nh ssh-ed25519 {ED1}\nh ecdsa-sha2-nistp256 {ECDSA}\n"
        ));
        let rsa = "AAAAB3NzaC1yc2EAAAADAQABAAABAQDMHLBWw/7MTZTg0cEhe5Lceisb7ylBC+2FzTyKlWavcYRsnqy7XCU9VsKz82t6hwtAFo/1s+e+J0097IXBhuB1ta6uZdNt6n0tSNvrZ2pn1PT5Q0+3QaIQLKHgsLm+qeBzkoSpcqKlJyJvDUKmUXWYugr2YXVgncnuTLawccSQOk5kea4tdYfsDoCUUpsgc2Gj+Elhpw17w4aodCiQWUeus1nHoM01uEbxtc+lm8WJlkANu5PvWGzdc6F3xqMfn4+QhAsatiJGibnRGDmU6TMLKM/kLvBr6qt+X03EpLMS2vITuBtjL7CJjsHVJJtlkzCWN9dv0wetoCi14aDwwuwP";
        assert_eq!(
            kh.check("h", 22, &key(rsa)),
            Verdict::OtherTypes {
                types: vec!["ecdsa-sha2-nistp256".into(), "ssh-ed25519".into()]
            }
        );
    }

    /// Found by tests/fuzz_known_hosts.rs: keys of unknown algorithms were kept (as opaque keys),
    /// so `recorded_algorithms` and `OtherTypes` listed one algorithm per line, quadratically.
    #[test]
    fn unknown_algorithms_are_skipped() {
        let mut blob = Vec::new();
        for field in [&b"x@example.com"[..], b"opaque"] {
            blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
            blob.extend_from_slice(field);
        }
        let kh = KnownHosts::parse(&format!(
            "h x@example.com {}\nh ssh-ed25519 {ED1}\n",
            BASE64.encode(&blob)
        ));
        assert_eq!(kh.entries.len(), 1);
        assert_eq!(kh.recorded_algorithms("h", 22).len(), 1);
    }

    #[test]
    fn read_refuses_endless_files() {
        let err = KnownHosts::read(Path::new("/dev/zero")).unwrap_err();
        assert!(
            borg_pull_core::error::Chain(&err)
                .to_string()
                .contains("larger than"),
            "{err}"
        );
    }

    #[test]
    fn patterns_match_in_any_case() {
        assert!(hosts_match("*.EXAMPLE.org,!BAD.example.org", "www.example.org"));
        assert!(!hosts_match("*.EXAMPLE.org,!BAD.example.org", "bad.EXAMPLE.org"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard_match(b"a*b*c", b"aXXbYY"));
        assert!(wildcard_match(b"??", b"ab"));
        assert!(!wildcard_match(b"?", b""));
    }
}
