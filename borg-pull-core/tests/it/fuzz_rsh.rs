//! Fuzzing the `BORG_RSH` argv parser ([`borg_pull_core::rsh::RshArgs`]) on the stable toolchain
//! (proptest, no cargo-fuzz): arbitrary argv of arbitrary (non-UTF-8, NUL-free) words, and the
//! argv borg really builds with ssh options around it.
//!
//! `cargo test -p borg-pull-core --test it -- fuzz_rsh::` runs a few hundred cases per target. Environment:
//!
//! - `BORG_PULL_FUZZ_CASES=N`: cases per target (per batch in long mode).
//! - `BORG_PULL_FUZZ_SECS=S`: long mode, every target runs batches until S seconds are up and
//!   prints the number of cases it ran (use `--nocapture`), e.g.
//!   `BORG_PULL_FUZZ_SECS=600 nice -n 19 cargo test -p borg-pull-core --test it -- fuzz_rsh:: --nocapture`
//!   (`--release` runs some ten times as many cases; every target runs in its own thread, so
//!   `--test-threads` as many as there are targets runs them all at once).
//! - `BORG_PULL_FUZZ_CASE_SECS=S`: one input taking longer than this fails (default 10), and an
//!   input still running after 12 times that aborts the process after printing it (a hang).
//!
//! Failing seeds are kept by proptest in `tests/fuzz-regressions/rsh-*.seeds` and replayed first;
//! failing argv are also written to `tests/fuzz-regressions/rsh/` (words separated by NUL bytes,
//! which no argv word can contain) and replayed by `regressions_replay`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_core::rsh::RshArgs;
use borg_pull_core::Error;
use borg_pull_testkit::fuzz::Fuzzer;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------------------------
// The harness: borg_pull_testkit::fuzz (one copy for the core and the tunnel).

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

fn fuzzer() -> Fuzzer {
    Fuzzer::new(regressions_dir())
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// ssh(1)'s flags without an argument (OpenSSH's getopt string, minus `-1`).
const FLAGS: &str = "246AaCfGgKkMNnqsTtVvXxYy";
/// ssh(1)'s options with an argument.
const WITH_ARGUMENT: &str = "BbcDEeFIiJLlmOoPpQRSWw";

fn os(bytes: Vec<u8>) -> OsString {
    OsString::from_vec(bytes)
}

/// One argv word: any NUL-free bytes, or something shaped like what ssh sees.
fn word() -> impl Strategy<Value = OsString> {
    prop_oneof![
        3 => proptest::collection::vec(1u8.., 0..12).prop_map(os),
        1 => proptest::collection::vec(128u8.., 1..6).prop_map(|b| os([b"-".to_vec(), b].concat())),
        3 => "-[-A-Za-z0-9=@:%\\[\\]/.]{0,6}".prop_map(OsString::from),
        1 => Just(OsString::from("--")),
        1 => Just(OsString::from("-")),
        1 => "ssh://[a-z@:\\[\\]/0-9]{0,12}".prop_map(OsString::from),
        2 => "[a-z0-9@:\\[\\]._-]{0,10}".prop_map(OsString::from),
        1 => "-[pl]{1,2}[0-9a-z]{0,6}".prop_map(OsString::from),
        1 => "\\PC{0,8}".prop_map(OsString::from),
    ]
}

fn argv() -> impl Strategy<Value = Vec<OsString>> {
    proptest::collection::vec(word(), 0..12)
}

fn hostname() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9][a-z0-9.-]{0,20}",
        1 => "([0-9]{1,3}\\.){3}[0-9]{1,3}",
        1 => "[0-9a-f]{0,4}(:[0-9a-f]{0,4}){2,7}",
        1 => "[a-z0-9]+(\\.[a-z0-9-]+)*\\.example",
    ]
}

fn user() -> impl Strategy<Value = String> {
    // Not starting with `-`: ssh would read `-x@h` as options (and refuses such names itself).
    prop_oneof![4 => "[a-z_][a-z0-9_.-]{0,12}", 1 => "[a-z]{1,4}@[a-z]{1,4}", 1 => "[a-zA-Z0-9][a-zA-Z0-9 :+.-]{0,10}"]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(22u16), 1u16..]
}

/// One well-formed ssh option (as argv words) and what it sets: (words, port, user).
fn ssh_option() -> impl Strategy<Value = (Vec<OsString>, Option<u16>, Option<String>)> {
    let value = prop_oneof![
        "[A-Za-z0-9=/._~-]{1,16}".prop_map(OsString::from),
        proptest::collection::vec(1u8.., 1..10).prop_map(os),
        "-[a-z]{0,3}".prop_map(OsString::from),
    ];
    let flags = proptest::collection::vec(proptest::sample::select(FLAGS.chars().collect::<Vec<_>>()), 0..4)
        .prop_map(|f| f.into_iter().collect::<String>());
    let letter = proptest::sample::select(
        WITH_ARGUMENT
            .chars()
            .filter(|c| !"pl".contains(*c))
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        // -46C
        flags
            .clone()
            .prop_filter("a flag", |f| !f.is_empty())
            .prop_map(|f| (vec![OsString::from(format!("-{f}"))], None, None)),
        // -4o X / -4oX
        (flags.clone(), letter, value, any::<bool>()).prop_map(|(f, l, v, glued)| {
            let words = if glued && !v.is_empty() {
                let mut w = OsString::from(format!("-{f}{l}"));
                w.push(&v);
                vec![w]
            } else {
                vec![OsString::from(format!("-{f}{l}")), v]
            };
            (words, None, None)
        }),
        // -p 2222 / -Cp2222
        (flags.clone(), port(), any::<bool>()).prop_map(|(f, p, glued)| {
            let words = if glued {
                vec![OsString::from(format!("-{f}p{p}"))]
            } else {
                vec![OsString::from(format!("-{f}p")), OsString::from(p.to_string())]
            };
            (words, Some(p), None)
        }),
        // -l user
        (flags, user(), any::<bool>()).prop_map(|(f, u, glued)| {
            let words = if glued {
                vec![OsString::from(format!("-{f}l{u}"))]
            } else {
                vec![OsString::from(format!("-{f}l")), OsString::from(u.clone())]
            };
            (words, None, Some(u))
        }),
        // borg's own test suite passes `--foo`
        "--[a-z-]{1,10}".prop_map(|w| (vec![OsString::from(w)], None, None)),
    ]
}

/// The remote command borg appends: `borg serve ...` (borg 1 and 2) and arbitrary further words.
fn remote_command() -> impl Strategy<Value = Vec<OsString>> {
    let borg = prop_oneof![
        Just("borg".to_owned()),
        "/[a-z/]{1,20}/borg",
        "borg-[0-9.]{1,6}",
        "borg1"
    ];
    let serve = prop_oneof![
        Just(vec![
            "serve".to_owned(),
            "--umask=077".to_owned(),
            "--info".to_owned()
        ]),
        Just(vec![
            "serve".to_owned(),
            "--umask=077".to_owned(),
            "--debug".to_owned(),
            "--storage-quota=314159265".to_owned()
        ]),
        "FILE:/[a-z/]{1,20}".prop_map(|b| vec![
            "serve".to_owned(),
            "--rest".to_owned(),
            "--backend".to_owned(),
            b
        ]),
        Just(vec![]),
    ];
    (borg, serve, proptest::collection::vec(word(), 0..4)).prop_map(|(borg, serve, extra)| {
        let mut cmd = vec![OsString::from(borg)];
        cmd.extend(serve.into_iter().map(OsString::from));
        cmd.extend(extra);
        cmd
    })
}

/// What borg's `ssh_cmd` + `borg_cmd` build, behind the user's own ssh options:
/// `[ssh opts] [-p PORT] [user@]host borg serve ...`, and what parsing it must give.
#[derive(Debug, Clone)]
struct BorgArgv {
    argv: Vec<OsString>,
    host: String,
    user: Option<String>,
    port: Option<u16>,
    command: Vec<OsString>,
}

fn borg_argv() -> impl Strategy<Value = BorgArgv> {
    (
        proptest::collection::vec(ssh_option(), 0..5),
        proptest::option::of(port()),
        proptest::option::of(user()),
        hostname(),
        prop_oneof![4 => Just(0u8), 1 => Just(1), 1 => Just(2)],
        remote_command(),
        prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec(ssh_option(), 1..3)],
    )
        .prop_map(|(options, borg_port, borg_user, host, form, command, after)| {
            let mut argv = Vec::new();
            let (mut port, mut user) = (None, None);
            // As in ssh, the first -p and -l win, over later ones and over the destination's.
            for (words, p, u) in options {
                argv.extend(words);
                port = port.or(p);
                user = user.or(u);
            }
            if let Some(p) = borg_port {
                argv.extend(["-p".into(), p.to_string().into()]);
                port = port.or(Some(p));
            }
            let destination = match (form, &borg_user) {
                // ssh://[user@]host:port, as a user's BORG_RSH could not produce, but ssh accepts
                (1, _) => {
                    let p = borg_port.unwrap_or(22);
                    port = port.or(Some(p));
                    let h = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.clone()
                    };
                    match &borg_user {
                        Some(u) => format!("ssh://{u}@{h}:{p}"),
                        None => format!("ssh://{h}:{p}"),
                    }
                }
                (_, Some(u)) => format!("{u}@{host}"),
                (_, None) => host.clone(),
            };
            user = user.or(borg_user);
            if form == 2 {
                argv.push("--".into());
            }
            argv.push(destination.into());
            // ssh reads options after the destination too (not after `--`); they lose to earlier ones.
            if form != 2 {
                for (words, p, u) in after {
                    argv.extend(words);
                    port = port.or(p);
                    user = user.or(u);
                }
            }
            argv.extend(command.iter().cloned());
            BorgArgv {
                argv,
                host,
                user,
                port,
                command,
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Invariants.

fn argv_bytes(argv: &[OsString]) -> Vec<u8> {
    argv.iter().map(|w| w.as_bytes()).collect::<Vec<_>>().join(&0u8)
}

/// What must hold for any argv: no panic; errors are `RshArgs` naming a word of the argv; the
/// remote command is a byte-exact suffix of the argv; a port is never 0.
fn check_any(argv: &[OsString]) -> Result<(), TestCaseError> {
    match RshArgs::parse(argv.iter().cloned()) {
        Ok(rsh) => {
            prop_assert!(rsh.remote_command.len() <= argv.len());
            prop_assert_eq!(
                &argv[argv.len() - rsh.remote_command.len()..],
                &rsh.remote_command[..]
            );
            prop_assert!(rsh.port != Some(0));
            prop_assert!(
                rsh.host.is_some() || rsh.remote_command.is_empty(),
                "a command without a destination: {:?}",
                rsh
            );
            // Parsing is deterministic.
            prop_assert_eq!(RshArgs::parse(argv.iter().cloned()).ok(), Some(rsh));
        }
        Err(Error::RshArgs { arg, reason }) => {
            prop_assert!(!reason.is_empty());
            prop_assert!(
                argv.iter().any(|w| w.to_string_lossy().contains(&*arg)),
                "error names {:?}, which is not in the argv",
                arg
            );
        }
        Err(other) => return Err(TestCaseError::fail(format!("not an RshArgs error: {other}"))),
    }
    Ok(())
}

fn check_borg(case: &BorgArgv) -> Result<(), TestCaseError> {
    let rsh = RshArgs::parse(case.argv.iter().cloned())
        .map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
    prop_assert_eq!(rsh.host.as_deref(), Some(case.host.as_str()));
    prop_assert_eq!(&rsh.user, &case.user);
    prop_assert_eq!(rsh.port, case.port);
    prop_assert_eq!(&rsh.remote_command, &case.command);
    check_any(&case.argv)
}

// ---------------------------------------------------------------------------------------------
// Targets.

#[test]
fn fuzz_any_argv() {
    fuzzer().run(
        "rsh-any-argv",
        argv(),
        |argv| fuzzer().save_regression("rsh", &argv_bytes(argv)),
        |argv| check_any(&argv),
    );
}

#[test]
fn fuzz_borg_argv() {
    fuzzer().run(
        "rsh-borg-argv",
        borg_argv(),
        |case| fuzzer().save_regression("rsh", &argv_bytes(&case.argv)),
        |case| check_borg(&case),
    );
}

/// Junk inserted anywhere into an argv borg builds: an error or a parse, never a panic; junk
/// after the remote command's first word only lengthens the remote command.
#[test]
fn fuzz_borg_argv_with_junk() {
    let input = (
        borg_argv(),
        proptest::collection::vec((any::<proptest::sample::Index>(), word()), 1..4),
    );
    fuzzer().run(
        "rsh-borg-argv-junk",
        input,
        |(case, _)| fuzzer().save_regression("rsh", &argv_bytes(&case.argv)),
        |(case, junk)| {
            let destination = case.argv.len() - case.command.len() - 1;
            let mut argv = case.argv.clone();
            let mut after_destination = true;
            for (at, word) in junk {
                let at = at.index(argv.len() + 1);
                // Right after the destination, ssh reads options again: only junk after the
                // first command word is sure to be command.
                after_destination &= at > destination + 1;
                argv.insert(at, word);
            }
            check_any(&argv)?;
            if after_destination {
                let rsh =
                    RshArgs::parse(argv.iter().cloned()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(rsh.host.as_deref(), Some(case.host.as_str()));
                prop_assert_eq!(&rsh.remote_command[..], &argv[destination + 1..]);
            }
            Ok(())
        },
    );
}

/// Every argv kept in `tests/fuzz-regressions/rsh/` passes the any-argv checks.
#[test]
fn regressions_replay() {
    let dir = regressions_dir().join("rsh");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let argv: Vec<OsString> = if bytes.is_empty() {
            Vec::new()
        } else {
            bytes.split(|&b| b == 0).map(|w| os(w.to_vec())).collect()
        };
        check_any(&argv).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        n += 1;
    }
    assert!(n > 0, "no regression files in {dir:?}");
}

/// Long words and long argv take linear time.
#[test]
fn big_argv_takes_linear_time() {
    let shapes = |n: usize| -> Vec<(&'static str, Vec<OsString>)> {
        vec![
            (
                "one long flag cluster",
                vec![OsString::from(format!("-{}", "4".repeat(n))), "h".into()],
            ),
            (
                "long glued value",
                vec![OsString::from(format!("-o{}", "x".repeat(n))), "h".into()],
            ),
            (
                "many options",
                std::iter::repeat_n(OsString::from("-4"), n / 2)
                    .chain(["h".into()])
                    .collect(),
            ),
            (
                "many -p",
                std::iter::repeat_n(["-p".into(), OsString::from("22")], n / 6)
                    .flatten()
                    .chain(["h".into()])
                    .collect(),
            ),
            (
                "long destination",
                vec![OsString::from(format!(
                    "ssh://{}@{}:22",
                    "u".repeat(n / 2),
                    "h".repeat(n / 2)
                ))],
            ),
            ("many @", vec![OsString::from("@".repeat(n))]),
            (
                "long command",
                std::iter::once(OsString::from("h"))
                    .chain(std::iter::repeat_n(OsString::from("x"), n))
                    .collect(),
            ),
            (
                "non-utf-8",
                vec![
                    os(std::iter::once(b'-')
                        .chain(std::iter::repeat_n(0xff, n))
                        .collect()),
                    os(vec![0xfe; n]),
                ],
            ),
        ]
    };
    const MIB: usize = 1 << 20;
    for ((name, small), (_, big)) in shapes(MIB / 8).into_iter().zip(shapes(MIB)) {
        let time = |argv: &Vec<OsString>, runs: usize| {
            (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    let _ = RshArgs::parse(argv.iter().cloned());
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        let t_small = time(&small, 3);
        let linear = |t: Duration| t < t_small * 24 + Duration::from_millis(300);
        // Measured again only when it looks slow (a busy machine), to keep the test short.
        let mut t_big = time(&big, 1);
        for _ in 0..2 {
            if !linear(t_big) {
                t_big = t_big.min(time(&big, 1));
            }
        }
        eprintln!("{name}: {t_small:?} for 128 KiB, {t_big:?} for 1 MiB");
        assert!(linear(t_big), "{name}: {t_small:?} then {t_big:?}: not linear");
    }
}
