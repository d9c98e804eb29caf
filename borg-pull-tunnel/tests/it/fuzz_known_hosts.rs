//! Fuzzing the known_hosts reader and matcher on the stable toolchain (proptest, no cargo-fuzz).
//!
//! `cargo test -p borg-pull-tunnel --test it -- fuzz_known_hosts::` runs a few hundred cases per target,
//! enough for CI. Environment:
//!
//! - `BORG_PULL_FUZZ_CASES=N`: cases per target (per batch in long mode).
//! - `BORG_PULL_FUZZ_SECS=S`: long mode, every target runs batches until S seconds are up and
//!   prints the number of cases it ran (use `--nocapture`), e.g.
//!   `BORG_PULL_FUZZ_SECS=600 nice -n 19 cargo test -p borg-pull-tunnel --test it -- fuzz_known_hosts:: --nocapture`
//!   (`--release` runs some ten times as many cases; every target runs in its own thread, so
//!   `--test-threads` as many as there are targets runs them all at once).
//! - `BORG_PULL_FUZZ_CASE_SECS=S`: one input taking longer than this fails (default 10), and an
//!   input still running after 12 times that aborts the process after printing it (a hang).
//!
//! Failing seeds are kept by proptest in `tests/fuzz-regressions/known_hosts-*.seeds` and replayed
//! first on every run; whole-file inputs that failed are also written to
//! `tests/fuzz-regressions/known_hosts/` and replayed by `regressions_replay`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_testkit::fuzz::Fuzzer;
use borg_pull_tunnel::ssh::known_hosts::{self, hash_name, hosts_match, lookup_name, KnownHosts, Verdict};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use russh::keys::ssh_key::public::Ed25519PublicKey;
use russh::keys::PublicKey;

// ---------------------------------------------------------------------------------------------
// The harness: borg_pull_testkit::fuzz (one copy for the core and the tunnel).

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

fn fuzzer() -> Fuzzer {
    Fuzzer::new(regressions_dir())
}

// ---------------------------------------------------------------------------------------------
// Keys.

const ED1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";
const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ6bf3dbzde0DkKszja6oxFLSIa2yY6qS97T6c6L8ucbHM//MO5e0bKg+26xSd2S5ay8xUDYVwAWytmEqcmOK50=";
/// rsa 2048, ecdsa p384 and p521, dsa (from ssh-keygen), one `type base64` a line.
const SAMPLE_KEYS: &str = include_str!("../fuzz-regressions/sample-keys.pub");

fn key(b64: &str) -> PublicKey {
    russh::keys::parse_public_key_base64(b64).unwrap()
}

fn pool() -> &'static [PublicKey] {
    static POOL: std::sync::OnceLock<Vec<PublicKey>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut keys = vec![key(ED1), key(ED2), key(ECDSA)];
        keys.extend(
            SAMPLE_KEYS
                .lines()
                .filter_map(|l| russh::keys::parse_public_key_base64(l.split(' ').nth(1)?).ok()),
        );
        assert!(keys.len() >= 7, "sample keys must parse");
        keys
    })
}

fn ed25519(bytes: [u8; 32]) -> PublicKey {
    PublicKey::from(Ed25519PublicKey(bytes))
}

fn b64(key: &PublicKey) -> String {
    use russh::keys::PublicKeyBase64;
    key.public_key_base64()
}

fn any_key() -> impl Strategy<Value = PublicKey> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(ed25519),
        proptest::sample::select(pool()),
    ]
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Key blobs that are almost keys: a known algorithm name followed by random fields.
fn structured_blob() -> impl Strategy<Value = String> {
    let names = proptest::sample::select(vec![
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-rsa-cert-v01@openssh.com",
        "rsa-sha2-256",
        "x@example.com",
        "",
    ]);
    let field = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..600),
        Just(b"nistp256".to_vec()),
        Just(b"nistp521".to_vec()),
        Just(vec![0u8]),
        Just(vec![]),
    ];
    (
        names,
        proptest::collection::vec(field, 0..6),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(name, fields, bad_length, tail)| {
            let mut blob = Vec::new();
            put_string(&mut blob, name.as_bytes());
            for f in &fields {
                put_string(&mut blob, f);
            }
            if bad_length {
                blob.extend_from_slice(&u32::MAX.to_be_bytes());
            }
            blob.extend_from_slice(&tail);
            data_encoding::BASE64.encode(&blob)
        })
}

// ---------------------------------------------------------------------------------------------
// Grammar-aware known_hosts lines.

fn hostname() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9.-]{0,20}",
        "[A-Za-z0-9.-]{1,12}",
        "([0-9]{1,3}\\.){3}[0-9]{1,3}",
        "[0-9a-f]{0,4}(:[0-9a-f]{0,4}){2,7}",
        "[a-z]{1,5}\\.(example|test)",
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(22u16), 1u16..3000, any::<u16>()]
}

/// One host pattern, as written in known_hosts (and mutations of it).
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostname(),
        2 => (hostname(), port()).prop_map(|(h, p)| format!("[{h}]:{p}")),
        2 => "[a-z0-9.*?]{0,12}",
        1 => "\\[[a-z0-9.*?]{0,8}\\]:[0-9*?]{0,5}",
        2 => "![a-z0-9.*?]{0,12}",
        2 => (proptest::collection::vec(any::<u8>(), 0..40), hostname(), port())
            .prop_map(|(salt, h, p)| hash_name(&salt, &lookup_name(&h, p))),
        1 => "\\|1\\|[A-Za-z0-9+/=|]{0,40}",
        1 => "\\|[0-9]\\|[A-Za-z0-9+/=]{0,30}\\|[A-Za-z0-9+/=]{0,30}",
        1 => "[#@!|\\[\\],:*?]{0,6}",
        1 => "\\PC{0,12}",
    ]
}

fn ws() -> impl Strategy<Value = String> {
    "[ \t]{1,3}"
}

/// The key type and base64 fields: mostly right, sometimes subtly or grossly wrong.
fn key_fields() -> impl Strategy<Value = (String, String)> {
    let exact = any_key().prop_map(|k| (k.algorithm().as_str().to_owned(), b64(&k)));
    let wrong_type = (any_key(), any_key()).prop_map(|(a, b)| (b.algorithm().as_str().to_owned(), b64(&a)));
    let truncated = (any_key(), any::<proptest::sample::Index>()).prop_map(|(k, i)| {
        let s = b64(&k);
        let cut = i.index(s.len());
        (k.algorithm().as_str().to_owned(), s[..cut].to_owned())
    });
    let flipped = (
        any_key(),
        any::<proptest::sample::Index>(),
        "[A-Za-z0-9+/=!.\\-_ ]",
    )
        .prop_map(|(k, i, c)| {
            let mut s = b64(&k);
            let at = i.index(s.len());
            s.replace_range(at..at + 1, &c);
            (k.algorithm().as_str().to_owned(), s)
        });
    let structured = ("[a-z0-9@.-]{0,30}", structured_blob());
    let structured_same_type = structured_blob().prop_map(|b64| {
        let name = data_encoding::BASE64
            .decode(b64.as_bytes())
            .ok()
            .and_then(|blob| {
                String::from_utf8(
                    blob.get(4..)?
                        .get(..u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize)?
                        .to_vec(),
                )
                .ok()
            })
            .unwrap_or_default();
        (name, b64)
    });
    let garbage = ("\\PC{0,20}", "[A-Za-z0-9+/=]{0,120}");
    prop_oneof![
        8 => exact,
        1 => wrong_type,
        1 => truncated,
        1 => flipped,
        2 => structured,
        2 => structured_same_type,
        1 => garbage
    ]
}

/// One known_hosts line.
fn line() -> impl Strategy<Value = String> {
    let marker = prop_oneof![
        6 => Just(String::new()),
        2 => Just("@revoked".to_owned()),
        1 => Just("@cert-authority".to_owned()),
        1 => "@[A-Za-z-]{0,10}",
    ];
    let entry = (
        "[ \t]{0,2}",
        marker,
        ws(),
        proptest::collection::vec(pattern(), 1..4),
        ws(),
        key_fields(),
        prop_oneof![Just(String::new()), "[ \t]{1,2}\\PC{0,20}"],
    )
        .prop_map(|(indent, marker, ws1, hosts, ws2, (ty, blob), comment)| {
            let marker = if marker.is_empty() { marker } else { marker + &ws1 };
            format!("{indent}{marker}{}{ws2}{ty}{ws2}{blob}{comment}", hosts.join(","))
        });
    prop_oneof![
        12 => entry,
        1 => "[ \t]*#\\PC{0,30}",
        1 => "[ \t]{0,4}",
        1 => "\\PC{0,60}",
    ]
}

/// Byte-level damage applied to a file: (where, as a fraction of the length; what to overwrite
/// or insert).
fn damage() -> impl Strategy<Value = Vec<(proptest::sample::Index, bool, Vec<u8>)>> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..4),
        proptest::collection::vec(128u8.., 1..4),
        Just(vec![0]),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\t".to_vec()),
        Just(b",".to_vec()),
        Just(vec![0xef, 0xbb, 0xbf]),
    ];
    proptest::collection::vec((any::<proptest::sample::Index>(), any::<bool>(), bytes), 0..4)
}

fn known_hosts_file() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(line(), 0..8),
        prop_oneof![Just("\n"), Just("\r\n")],
        any::<bool>(),
        damage(),
    )
        .prop_map(|(lines, eol, final_eol, damage)| {
            let mut text = lines.join(eol);
            if final_eol {
                text.push_str(eol);
            }
            let mut bytes = text.into_bytes();
            for (at, overwrite, with) in damage {
                let at = at.index(bytes.len() + 1);
                if overwrite {
                    let end = (at + with.len()).min(bytes.len());
                    bytes.splice(at..end, with);
                } else {
                    bytes.splice(at..at, with);
                }
            }
            bytes
        })
}

fn any_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => known_hosts_file(),
        1 => proptest::collection::vec(any::<u8>(), 0..400),
        1 => "\\PC{0,300}".prop_map(String::into_bytes),
        1 => "[ \t\n#@!,|*?\\[\\]:a-c0-9]{0,200}".prop_map(String::into_bytes),
    ]
}

// ---------------------------------------------------------------------------------------------
// Invariants.

/// Lookups worth making in a file: the hosts its lines name (wildcards replaced), and a few others.
fn probes_for(text: &str) -> Vec<(String, u16)> {
    let mut out: BTreeSet<(String, u16)> = [
        ("h".to_owned(), 22),
        ("example.com".to_owned(), 22),
        ("127.0.0.1".to_owned(), 2222),
    ]
    .into_iter()
    .collect();
    for line in text.lines() {
        let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
        let Some(mut first) = fields.next() else { continue };
        if first.starts_with('@') {
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        for pattern in first.split(',') {
            let pattern = pattern.trim_start_matches('!').replace(['*', '?'], "a");
            let probe = match pattern.strip_prefix('[').and_then(|p| p.rsplit_once("]:")) {
                Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(22)),
                None => (pattern, 22),
            };
            out.insert(probe);
        }
        if out.len() > 24 {
            break;
        }
    }
    out.into_iter().collect()
}

/// What must hold for any input file.
fn check_file(bytes: &[u8], probes: &[(String, u16)]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    let kh = KnownHosts::parse(&text);
    let lines: Vec<&str> = text.lines().collect();
    prop_assert!(kh.entries.len() <= lines.len());
    let mut last = 0;
    for e in &kh.entries {
        prop_assert!(
            e.line > last && e.line <= lines.len(),
            "line numbers increase: {e:?}"
        );
        last = e.line;
        let line = lines[e.line - 1];
        prop_assert!(line.contains(&e.hosts), "{e:?} from {line:?}");
        prop_assert!(line.contains(e.key.algorithm().as_str()), "{e:?} from {line:?}");
        prop_assert!(
            !e.hosts.is_empty() && !e.hosts.contains([' ', '\t', '\n']),
            "{e:?}"
        );
        prop_assert!(!line.trim_start().starts_with('#'), "a comment gave {e:?}");
        prop_assert!(
            !matches!(e.key.algorithm(), russh::keys::Algorithm::Other(_)),
            "an unknown algorithm: {e:?}"
        );
    }

    let mut keys: Vec<PublicKey> = Vec::new();
    for k in kh.entries.iter().map(|e| &e.key).chain(pool()[..2].iter()) {
        if keys.len() < 8 && !keys.iter().any(|x| x.key_data() == k.key_data()) {
            keys.push(k.clone());
        }
    }
    for (host, port) in probes.iter().take(24) {
        let name = lookup_name(host, *port);
        let recorded = kh.recorded_algorithms(host, *port);
        let unique: BTreeSet<String> = recorded.iter().map(|a| a.to_string()).collect();
        prop_assert_eq!(unique.len(), recorded.len(), "duplicates in {:?}", recorded);
        let matching = |line: usize| {
            kh.entries
                .iter()
                .find(|e| e.line == line)
                .filter(|e| hosts_match(&e.hosts, &name))
        };
        for key in &keys {
            let verdict = kh.check(host, *port, key);
            let revoked = kh.entries.iter().any(|e| {
                e.marker == known_hosts::Marker::Revoked
                    && e.key.key_data() == key.key_data()
                    && hosts_match(&e.hosts, &name)
            });
            let plain_same = kh.entries.iter().any(|e| {
                e.marker == known_hosts::Marker::None
                    && e.key.key_data() == key.key_data()
                    && hosts_match(&e.hosts, &name)
            });
            prop_assert_eq!(
                revoked,
                matches!(verdict, Verdict::Revoked { .. }),
                "{:?} for {} {:?}",
                verdict,
                name,
                key
            );
            match &verdict {
                Verdict::Known { line } => {
                    let e = matching(*line);
                    prop_assert!(
                        e.is_some_and(
                            |e| e.marker == known_hosts::Marker::None && e.key.key_data() == key.key_data()
                        ),
                        "Known at line {} for {}",
                        line,
                        name
                    );
                }
                Verdict::Revoked { line } => {
                    let e = matching(*line);
                    prop_assert!(e
                        .is_some_and(|e| e.marker == known_hosts::Marker::Revoked
                            && e.key.key_data() == key.key_data()));
                }
                Verdict::Changed { line } => {
                    prop_assert!(!plain_same);
                    let e = matching(*line);
                    prop_assert!(e.is_some_and(|e| e.marker == known_hosts::Marker::None
                        && e.key.algorithm() == key.algorithm()
                        && e.key.key_data() != key.key_data()));
                }
                Verdict::OtherTypes { types } => {
                    prop_assert!(!plain_same && !types.is_empty());
                    let unique: BTreeSet<&String> = types.iter().collect();
                    prop_assert_eq!(unique.len(), types.len(), "duplicate types {:?}", types);
                    prop_assert!(!types.contains(&key.algorithm().to_string()));
                    for t in types {
                        prop_assert!(recorded.iter().any(|a| &a.to_string() == t));
                    }
                }
                Verdict::Unknown => {
                    prop_assert!(
                        recorded.is_empty(),
                        "Unknown for {} but recorded {:?}",
                        name,
                        recorded
                    );
                }
            }
            if recorded.is_empty() {
                prop_assert!(
                    matches!(verdict, Verdict::Unknown | Verdict::Revoked { .. }),
                    "{:?}",
                    verdict
                );
            } else if !revoked {
                prop_assert!(!matches!(verdict, Verdict::Unknown));
            }
        }
    }
    Ok(())
}

/// `read` of the same bytes gives what `parse` of them does.
fn check_read(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join(format!("kh-{:?}", std::thread::current().id()));
    std::fs::write(&path, bytes).unwrap();
    let read = KnownHosts::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let parsed = KnownHosts::parse(&String::from_utf8_lossy(bytes));
    let summary = |kh: &KnownHosts| {
        kh.entries
            .iter()
            .map(|e| (e.line, e.marker, e.hosts.clone(), b64(&e.key)))
            .collect::<Vec<_>>()
    };
    prop_assert_eq!(summary(&read), summary(&parsed));
    Ok(())
}

fn tempdir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

// ---------------------------------------------------------------------------------------------
// Targets.

#[test]
fn fuzz_files() {
    fuzzer().run(
        "known_hosts-files",
        any_file(),
        |bytes| fuzzer().save_regression("known_hosts", bytes),
        |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            check_file(&bytes, &probes_for(&text))?;
            check_read(tempdir(), &bytes)
        },
    );
}

/// Every file kept in `tests/fuzz-regressions/known_hosts/` passes the whole-file checks.
#[test]
fn regressions_replay() {
    let dir = regressions_dir().join("known_hosts");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let start = Instant::now();
        check_file(&bytes, &probes_for(&text)).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        check_read(tempdir(), &bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path:?} took {:?}",
            start.elapsed()
        );
        n += 1;
    }
    assert!(n > 0, "no regression files in {dir:?}");
}

/// Hosts given to `append`: plausible ones and hostile ones (patterns, separators, newlines).
fn append_host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => hostname(),
        1 => "[a-zA-Z0-9.:%_-]{1,20}",
        2 => "[a-z0-9 \t\n\r,*?!#@|\\[\\]:.]{0,12}",
        1 => "\\PC{0,12}",
        1 => "[a-z]{1,4}\n[*?] ssh-ed25519 AAAA",
    ]
}

fn plain_host(host: &str) -> bool {
    // What every real host name or address looks like; `append` must record these.
    !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:%".contains(c))
}

/// A line `append`ed for a host is then found for that host and port, and changes nothing for
/// any other lookup.
#[test]
fn fuzz_append_then_check() {
    let input = (
        known_hosts_file(),
        append_host(),
        port(),
        any_key(),
        proptest::collection::vec((append_host(), port()), 0..4),
    );
    fuzzer().run(
        "known_hosts-append",
        input,
        |_| {},
        |(existing, host, port, key, others)| {
            let path = tempdir().join(format!("append-{:?}", std::thread::current().id()));
            std::fs::write(&path, &existing).unwrap();
            let before = KnownHosts::read(&path).unwrap();
            let result = known_hosts::append(&path, &host, port, &key);
            if plain_host(&host) {
                prop_assert!(result.is_ok(), "append refused {host:?}: {result:?}");
            }
            let after = KnownHosts::read(&path).unwrap();
            if result.is_err() {
                prop_assert_eq!(
                    std::fs::read(&path).unwrap(),
                    existing,
                    "a refused append changed the file"
                );
                return Ok(());
            }
            let old = before.check(&host, port, &key);
            let new = after.check(&host, port, &key);
            match old {
                Verdict::Known { .. } | Verdict::Revoked { .. } => prop_assert_eq!(new, old),
                _ => {
                    let Verdict::Known { line } = new else {
                        return Err(TestCaseError::fail(format!(
                            "after append: {new:?} (before: {old:?})"
                        )));
                    };
                    let e = after.entries.iter().find(|e| e.line == line).unwrap();
                    prop_assert_eq!(e.hosts.clone(), lookup_name(&host, port));
                }
            }
            let name = lookup_name(&host, port);
            let mut others = others;
            others.push((format!("{host}x"), port));
            others.push((format!("x{host}"), port));
            others.push((host.clone(), port.wrapping_add(1).max(1)));
            for (other, other_port) in others {
                if lookup_name(&other, other_port) == name {
                    continue;
                }
                for k in [&key, &pool()[0]] {
                    prop_assert_eq!(
                        after.check(&other, other_port, k),
                        before.check(&other, other_port, k),
                        "appending for {:?} changed the verdict for {:?} port {}",
                        name,
                        other,
                        other_port
                    );
                }
            }
            Ok(())
        },
    );
}

/// A hashed name made for a host matches that host (any case) and no other.
#[test]
fn fuzz_hashed_entries() {
    let input = (
        hostname(),
        port(),
        proptest::collection::vec(any::<u8>(), 0..80),
        hostname(),
        port(),
        any_key(),
    );
    fuzzer().run(
        "known_hosts-hashed",
        input,
        |_| {},
        |(host, port, salt, other, other_port, key)| {
            let name = lookup_name(&host, port);
            let hashed = hash_name(&salt, &name);
            prop_assert!(hosts_match(&hashed, &name));
            prop_assert!(hosts_match(&hashed, &name.to_ascii_uppercase()));
            let other_name = lookup_name(&other, other_port);
            if other_name != name {
                prop_assert!(!hosts_match(&hashed, &other_name));
            }
            let kh = KnownHosts::parse(&format!(
                "{hashed}\t{} {} c\n",
                key.algorithm().as_str(),
                b64(&key)
            ));
            prop_assert_eq!(
                kh.check(&host.to_ascii_uppercase(), port, &key),
                Verdict::Known { line: 1 }
            );
            if other_name != name {
                prop_assert_eq!(kh.check(&other, other_port, &key), Verdict::Unknown);
            }
            // A damaged hash never matches.
            let mut damaged = hashed.clone().into_bytes();
            let last = damaged.len() - 2; // before the '=' padding of a 20-byte hash
            damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
            prop_assert!(!hosts_match(std::str::from_utf8(&damaged).unwrap(), &name));
            Ok(())
        },
    );
}

/// The obvious (quadratic, recursive-free DP) wildcard matcher, to compare against.
fn reference_wildcard(pattern: &[u8], name: &[u8]) -> bool {
    // dp[j]: pattern[..i] matches name[..j]
    let mut dp = vec![false; name.len() + 1];
    dp[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=name.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=name.len() {
                next[j] = dp[j - 1] && (p == b'?' || p == name[j - 1]);
            }
        }
        dp = next;
    }
    dp[name.len()]
}

fn reference_hosts_match(patterns: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for p in patterns.split(',') {
        if let Some(hashed) = p.strip_prefix("|1|") {
            let Some((salt, _)) = hashed.split_once('|') else {
                continue;
            };
            if let Ok(salt) = data_encoding::BASE64.decode(salt.as_bytes()) {
                matched |= hash_name(&salt, &name) == p;
            }
        } else if let Some(neg) = p.strip_prefix('!') {
            if reference_wildcard(neg.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
                return false;
            }
        } else {
            matched |= reference_wildcard(p.to_ascii_lowercase().as_bytes(), name.as_bytes());
        }
    }
    matched
}

/// `hosts_match` agrees with the reference on wildcards, negations, case and separators.
#[test]
fn fuzz_hosts_match_against_reference() {
    let alphabet = "[aAb.*?!,:\\[\\]1|]{0,14}";
    let input = (
        prop_oneof![4 => alphabet.prop_map(|s| s), 1 => "\\PC{0,10}", 1 => "[ab*]{0,30}"],
        prop_oneof![4 => "[aAb.:\\[\\]*?]{0,10}", 1 => "\\PC{0,10}", 1 => "[ab]{0,30}"],
    );
    fuzzer().run(
        "known_hosts-hosts-match",
        input,
        |_| {},
        |(patterns, name)| {
            prop_assert_eq!(
                hosts_match(&patterns, &name),
                reference_hosts_match(&patterns, &name),
                "{:?} vs {:?}",
                patterns,
                name
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Big inputs: parsing and matching take time linear in the input.

fn best_of(runs: usize, f: &dyn Fn()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

/// Line shapes of `size` bytes, each a worst case for one part of the parser or matcher.
fn big_lines(size: usize) -> Vec<(&'static str, String)> {
    let ed = ED1;
    vec![
        (
            "many hosts",
            format!("{} ssh-ed25519 {ed}", "a.example,".repeat(size / 10)),
        ),
        ("long host", format!("{} ssh-ed25519 {ed}", "a".repeat(size))),
        ("stars", format!("{} ssh-ed25519 {ed}", "*a".repeat(size / 2))),
        (
            "star then literal",
            format!("*{}b ssh-ed25519 {ed}", "a".repeat(size)),
        ),
        ("question marks", format!("{} ssh-ed25519 {ed}", "?".repeat(size))),
        (
            "negations",
            format!("{} ssh-ed25519 {ed}", "!*x,".repeat(size / 4)),
        ),
        (
            "hashed salt",
            format!("|1|{}|AAAA ssh-ed25519 {ed}", "QUFB".repeat(size / 4)),
        ),
        (
            "many hashed",
            format!("{} ssh-ed25519 {ed}", "|1|QUFB|QUFB,".repeat(size / 14)),
        ),
        ("long base64", format!("h ssh-ed25519 {}", "A".repeat(size))),
        (
            "long rsa blob",
            format!("h ssh-rsa {}", {
                let mut blob = Vec::new();
                put_string(&mut blob, b"ssh-rsa");
                put_string(&mut blob, &[1, 0, 1]);
                let mut n = vec![0xffu8; size / 2];
                n[0] = 0x7f;
                put_string(&mut blob, &n);
                data_encoding::BASE64.encode(&blob)
            }),
        ),
        ("many fields", "h ".repeat(size / 2)),
        ("spaces", " ".repeat(size)),
        ("many lines", "h ssh-ed25519 x\n".repeat(size / 16)),
        ("invalid utf-8", "\u{fffd}".repeat(size / 3)),
        ("unknown algorithms", other_algorithm_lines(size)),
    ]
}

fn parse_and_check(text: &str) {
    let kh = KnownHosts::parse(text);
    let long_host = "a".repeat(250);
    let _ = kh.check("a.example", 22, &pool()[0]);
    let _ = kh.check(&long_host, 22, &pool()[0]);
    let _ = kh.recorded_algorithms("h", 2222);
}

#[test]
fn big_lines_take_linear_time() {
    const MIB: usize = 1 << 20;
    let small: Vec<_> = big_lines(MIB / 8);
    let big: Vec<_> = big_lines(MIB);
    for ((name, small), (_, big)) in small.iter().zip(&big) {
        let t_small = best_of(3, &|| parse_and_check(small));
        let linear = |t: Duration| t < t_small * 24 + Duration::from_millis(300);
        // Measured again only when it looks slow (a busy machine), to keep the test short.
        let mut t_big = best_of(1, &|| parse_and_check(big));
        for _ in 0..2 {
            if !linear(t_big) {
                t_big = t_big.min(best_of(1, &|| parse_and_check(big)));
            }
        }
        eprintln!(
            "{name}: {} bytes {t_small:?}, {} bytes {t_big:?}",
            small.len(),
            big.len()
        );
        // Linear would be 8 times; quadratic 64 times. Allow for noise on a busy machine.
        assert!(
            linear(t_big),
            "{name}: {t_small:?} for 128 KiB but {t_big:?} for 1 MiB: not linear"
        );
        assert!(t_big < Duration::from_secs(20), "{name}: {t_big:?} for 1 MiB");
    }
}

/// `size` bytes of lines, each a key of its own unknown algorithm for host `h`.
fn other_algorithm_lines(size: usize) -> String {
    let mut text = String::with_capacity(size + 100);
    let mut i = 0;
    while text.len() < size {
        let name = format!("x{i}@example.com");
        let mut blob = Vec::new();
        put_string(&mut blob, name.as_bytes());
        put_string(&mut blob, b"opaque");
        text.push_str(&format!("h {name} {}\n", data_encoding::BASE64.encode(&blob)));
        i += 1;
    }
    text
}
