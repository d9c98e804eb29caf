//! The client's shell parts as the shells run them: `shellcheck -s sh` on every `.sh` file under
//! `borg-pull-*/src`, and each job's script (its prelude, then its parts) run to its end under
//! `/bin/sh`, `dash` and `bash --posix` (the login shells sshd may hand it to).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::jobs::pull::script::{go_lines, go_lines_ssh, RelayInstall, RemoteRun, SshBack, SshTarget};
use crate::jobs::pull::PullEnv;
use crate::jobs::restore_tar::{beat_script, RestoreOptions};
use crate::ssh::session::SshEnv;

const MARKER: &str = "borg-pull-test:";

/// Every `.sh` file under the workspace's `borg-pull-*/src` (a bounded walk).
fn shell_parts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("borg-pull-"))
        })
        .map(|p| p.join("src"))
        .filter(|p| p.is_dir())
        .collect();
    let mut found = Vec::new();
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        assert!(seen < 10_000, "too many directories under {}", root.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension() == Some(OsStr::new("sh")) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_shell_part_passes_shellcheck_as_posix_sh() {
    let parts = shell_parts();
    // The runner's own and each job's: a walk that finds none checks nothing.
    for name in ["check.sh", "guard.sh", "start.sh", "go.sh", "restore_tar.sh"] {
        assert!(
            parts.iter().any(|p| p.file_name() == Some(OsStr::new(name))),
            "{name} not found in {parts:?}"
        );
    }
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .args(&parts)
        .output()
        .expect("shellcheck (Debian package shellcheck, scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "shellcheck -s sh:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A login shell sshd may run the script with.
#[derive(Debug, Clone, Copy)]
enum Shell {
    BinSh,
    Dash,
    BashPosix,
}

impl Shell {
    fn command(self, script: &[u8]) -> Command {
        let mut cmd = match self {
            Shell::BinSh => Command::new("/bin/sh"),
            Shell::Dash => Command::new("dash"),
            Shell::BashPosix => {
                let mut c = Command::new("bash");
                c.arg("--posix");
                c
            }
        };
        cmd.arg("-c").arg(OsStr::from_bytes(script));
        cmd
    }
}

/// What one run of a script did.
struct Ran {
    /// stdout up to and with the line that starts with the marker and `until`.
    report: String,
    /// stdout after it.
    rest: String,
    code: Option<i32>,
}

/// Runs `script` under `shell` in `tmp` (TMPDIR and the cache), reads stdout up to the marked
/// line starting with `until`, answers with `answer(that line)` on stdin and closes it.
fn run(
    shell: Shell,
    script: &[u8],
    tmp: &Path,
    env: &[(&str, &str)],
    until: &str,
    answer: impl FnOnce(&str) -> Vec<u8>,
) -> Ran {
    let mut cmd = shell.command(script);
    cmd.env("TMPDIR", tmp)
        .env("XDG_CACHE_HOME", tmp.join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let want = format!("{MARKER}{until}");
    let line = loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with(&want)) {
            if text.contains(&format!("{line}\n")) {
                break line.to_owned();
            }
        }
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            let status = child.wait().unwrap();
            panic!("{shell:?}: no {want:?} line ({status}): {text:?}");
        }
        seen.extend_from_slice(&buf[..n]);
    };
    let _ = stdin.write_all(&answer(&line));
    drop(stdin);
    stdout.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen).into_owned();
    let (report, rest) = text.split_at(text.find(&line).unwrap() + line.len() + 1);
    Ran {
        report: report.to_owned(),
        rest: rest.to_owned(),
        code: child.wait().unwrap().code(),
    }
}

fn os(s: &str) -> OsString {
    s.into()
}

/// Polls (every 50 ms, at most 10 s) until `path` is gone: the watcher checks once a second.
fn gone_soon(path: &Path) -> bool {
    (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !path.exists()
    })
}

/// The pull's socket method: check.sh, guard.sh, start.sh, borg_version.sh, go.sh. borg (here
/// `sh -c`) gets its arguments, the environment, the passphrase and BORG_RSH; the directory goes.
fn pull_socket(shell: Shell) {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        os("-c"),
        os(r#"printf '<%s>' "$@" "$BORG_REPO" "$BORG_BASE_DIR" "$BORG_PASSPHRASE" "$BORGSTORE_RSH""#),
        os("sh"),
        os("a b"),
        os("$(x)`y`;\n'"),
    ];
    let env = [("BORG_BASE_DIR".to_owned(), os("/tmp/b 'b'"))];
    let script = RemoteRun {
        relay: OsStr::new("/bin/sh"),
        borg: OsStr::new("/bin/sh"),
        borg_args: &args,
        env: &env,
        repo_url: b"ssh://borg-pull-server/srv/repo dir",
        borgstore_rsh: true,
        remote_dir: None,
        passphrase: true,
        ssh_back: None,
        install_relay: None,
    }
    .script(MARKER)
    .unwrap();
    let mut listener = None;
    let ran = run(shell, &script, tmp.path(), &[], "dir ", |line| {
        let dir = line.strip_prefix(&format!("{MARKER}dir ")).unwrap();
        listener = Some(std::os::unix::net::UnixListener::bind(format!("{dir}/borg.sock")).unwrap());
        go_lines(OsStr::new("/bin/sh"), dir, Some("p w'd")).unwrap()
    });
    let dir = ran
        .report
        .lines()
        .last()
        .unwrap()
        .rsplit_once(' ')
        .unwrap()
        .1
        .to_owned();
    assert!(
        ran.report.contains(&format!("{MARKER}version ")),
        "{}",
        ran.report
    );
    assert_eq!(ran.code, Some(0), "{shell:?}");
    assert_eq!(
        ran.rest,
        format!(
            "<a b><$(x)`y`;\n'><ssh://borg-pull-server/srv/repo dir></tmp/b 'b'><p w'd>\
             <'/bin/sh' --socket '{dir}/borg.sock'>"
        ),
        "{shell:?}"
    );
    assert!(gone_soon(Path::new(&dir)), "{shell:?}: {dir} left");
}

/// The pull's optional parts: remote_dir.sh (a missing directory is reported) and
/// install_relay.sh (the relay asked for, checked, installed and reported).
fn pull_remote_dir_and_install_relay(shell: Shell) {
    let tmp = tempfile::tempdir().unwrap();
    let args = [os("-c"), os("pwd")];
    let inside = tmp.path().join("in 'here'");
    std::fs::create_dir(&inside).unwrap();
    let script = |remote_dir: &Path| {
        RemoteRun {
            relay: OsStr::new("/nonexistent/relay"),
            borg: OsStr::new("/bin/sh"),
            borg_args: &args,
            env: &[],
            repo_url: b"ssh://borg-pull-server/r",
            borgstore_rsh: false,
            remote_dir: Some(remote_dir.as_os_str()),
            passphrase: false,
            ssh_back: None,
            install_relay: Some(RelayInstall {
                name: "relay-test-1",
                size: 5,
                // SHA-256 of "hello".
                sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            }),
        }
        .script(MARKER)
        .unwrap()
    };
    let missing = run(
        shell,
        &script(&tmp.path().join("nope")),
        tmp.path(),
        &[],
        "nodir ",
        |_| vec![],
    );
    assert!(
        missing
            .report
            .ends_with(&format!("{MARKER}nodir no such directory\n")),
        "{shell:?}: {}",
        missing.report
    );
    assert_eq!(missing.code, Some(2));
    let asked = run(shell, &script(&inside), tmp.path(), &[], "needrelay", |_| {
        b"relay\nhello".to_vec()
    });
    let installed = tmp.path().join("cache/borg-pull/relay-test-1");
    assert!(
        asked
            .rest
            .contains(&format!("{MARKER}relay {}\n", installed.display())),
        "{shell:?}: {}",
        asked.rest
    );
    assert_eq!(std::fs::read(&installed).unwrap(), b"hello");
}

/// The agent and TCP methods: start.sh refuses a session without the agent, go.sh writes the
/// known_hosts and identity files, and the watcher sends the ssh log back (ssh_log.sh).
fn pull_ssh_back(shell: Shell) {
    let tmp = tempfile::tempdir().unwrap();
    // "borg" writes the log where BORG_RSH's -E points, as ssh would, and shows the two files.
    let args = [
        os("-c"),
        os(
            r#"eval "set -- $BORG_RSH"; for a; do [ "$p" = -E ] && l=$a; p=$a; done; printf 'Host key verification failed.' >"$l"; d=${l%/*}; cat "$d/known_hosts" "$d/agent_key.pub""#,
        ),
    ];
    let script = RemoteRun {
        relay: OsStr::new("/nonexistent/relay"),
        borg: OsStr::new("/bin/sh"),
        borg_args: &args,
        env: &[],
        repo_url: b"ssh://borg-pull-server/r",
        borgstore_rsh: false,
        remote_dir: None,
        passphrase: false,
        ssh_back: Some(SshBack {
            ssh: OsStr::new("/bin/sh"),
            known_hosts_line: "borg-pull-server ssh-ed25519 AAAA 'x'",
            identity_line: "ssh-ed25519 AAAA $(y)",
        }),
        install_relay: None,
    }
    .script(MARKER)
    .unwrap();
    let no_agent = run(shell, &script, tmp.path(), &[], "noagent", |_| vec![]);
    assert_eq!(no_agent.code, Some(2), "{shell:?}");
    let mut cmd = shell.command(&script);
    cmd.env("TMPDIR", tmp.path())
        .env("SSH_AUTH_SOCK", "/nonexistent/agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let dir = loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(rest) = text.split(&format!("{MARKER}dir ")).nth(1) {
            if let Some((dir, _)) = rest.split_once('\n') {
                break dir.to_owned();
            }
        }
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "{shell:?}: no dir line: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    };
    let target = SshTarget {
        host: "127.0.0.1",
        port: 22,
        user: "u",
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&go_lines_ssh(OsStr::new("/bin/sh"), &dir, target, None).unwrap())
        .unwrap();
    drop(stdin);
    let mut stderr = child.stderr.take().unwrap();
    // stderr ends when the watcher, which holds it, is done; it waits for the script to be gone.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        stderr.read_to_end(&mut all).unwrap();
        all
    });
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{shell:?}");
    let err = String::from_utf8(reader.join().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "borg-pull-server ssh-ed25519 AAAA 'x'\nssh-ed25519 AAAA $(y)\n",
        "{shell:?}"
    );
    assert_eq!(
        err,
        format!("{MARKER}ssh Host key verification failed.\n{MARKER}ssh-end\n"),
        "{shell:?}"
    );
    assert!(gone_soon(Path::new(&dir)), "{shell:?}: {dir} left");
}

/// restore-tar: check.sh, guard.sh, restore_tar.sh (tar here is `echo`, showing its arguments),
/// then restore_tar_beat.sh stamping the run's directory for each heartbeat line.
fn restore_and_its_heartbeats(shell: Shell) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("it's $(x) dir");
    std::fs::create_dir(&target).unwrap();
    let env = PullEnv {
        ssh: SshEnv {
            user: Some("op".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut o = RestoreOptions::with_env("client", "/srv/repo", "arch", target.as_os_str(), &env).unwrap();
    o.remote_tar = "/bin/echo".into();
    o.numeric_owner = true;
    let ran = run(
        shell,
        &o.remote_script(MARKER).unwrap(),
        tmp.path(),
        &[],
        "ready ",
        |_| vec![],
    );
    let dir = ran.report.trim_end().rsplit_once(' ').unwrap().1.to_owned();
    assert!(
        ran.rest
            .starts_with(&format!("-C {} -x -f - --numeric-owner", target.display())),
        "{shell:?}: {}",
        ran.rest
    );
    // The run's directory as restore_tar.sh left it, kept for the heartbeat script (the watcher
    // removes the real one once "tar" has exited).
    let run_dir = tmp.path().join("borg-pull.beat0001");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(run_dir.join("run"), "1 1 1 0\n").unwrap();
    let beat = beat_script(run_dir.to_str().unwrap()).unwrap();
    let mut child = shell
        .command(&beat)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n\n\n").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{shell:?}");
    let stamp = std::fs::read_to_string(run_dir.join("beat")).unwrap();
    assert!(stamp.ends_with(" 3\n"), "{shell:?}: {stamp:?}");
    assert!(run_dir.join("beats").exists() && run_dir.join("reader").exists());
    assert!(gone_soon(Path::new(&dir)), "{shell:?}: {dir} left");
}

macro_rules! under_each_shell {
    ($($case:ident),* $(,)?) => {
        $(mod $case {
            use super::Shell;
            #[test]
            fn bin_sh() {
                super::$case(Shell::BinSh);
            }
            #[test]
            fn dash() {
                super::$case(Shell::Dash);
            }
            #[test]
            fn bash_posix() {
                super::$case(Shell::BashPosix);
            }
        })*
    };
}

under_each_shell!(
    pull_socket,
    pull_remote_dir_and_install_relay,
    pull_ssh_back,
    restore_and_its_heartbeats,
);
