//! The real `borg-pull-relay` binary: exit codes and the one-line errors, byte-exact relaying with
//! the argv borg appends, and real borg through it.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use borg_pull_testkit::{relay_bin, Outcome, TestCommand};

/// Runs `command` with `stdin` fed on a thread, failing the test if it outlives its deadline.
fn run(mut command: TestCommand, stdin: Vec<u8>) -> Outcome {
    command.stdin(stdin).output()
}

fn relay(socket: &Path, ssh_args: &[&str]) -> TestCommand {
    let mut command = TestCommand::new(relay_bin());
    command
        .arg("--socket")
        .arg(socket)
        .args(ssh_args)
        .env_remove("BORG_PULL_SOCKET");
    command
}

fn stderr_lines(output: &Outcome) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A failed connection: exit 255 (as ssh), nothing on stdout, one stderr line naming the socket.
fn assert_one_line_failure(output: &Outcome, socket: &Path, hint: &str) {
    let lines = stderr_lines(output);
    assert_eq!(output.status.code(), Some(255), "stderr: {lines:?}");
    assert!(
        output.stdout.is_empty(),
        "stdout must stay clean: {:?}",
        output.stdout
    );
    assert_eq!(lines.len(), 1, "exactly one line expected: {lines:?}");
    assert!(lines[0].contains(&*socket.to_string_lossy()), "{lines:?}");
    assert!(lines[0].contains(hint), "{lines:?}");
}

#[test]
fn missing_socket_fails_with_one_line_and_255() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let output = run(relay(&socket, &["-p", "22", "u@h", "borg", "serve"]), Vec::new());
    assert_one_line_failure(&output, &socket, "is borg-pull-server listening");
    // The binary's hint names where the socket comes from.
    assert_one_line_failure(&output, &socket, "BORG_PULL_SOCKET");
}

#[test]
fn stale_socket_fails_with_one_line_and_255() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let output = run(relay(&socket, &["h", "borg", "serve"]), Vec::new());
    assert_one_line_failure(&output, &socket, "stale socket");
}

#[test]
fn not_a_socket_fails_with_one_line_and_255() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    std::fs::write(&socket, b"").unwrap();
    let output = run(relay(&socket, &["h"]), Vec::new());
    assert_one_line_failure(&output, &socket, "not a socket");
    // Named once: a hint the message already gives is not appended again.
    let line = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(line.matches("BORG_PULL_SOCKET").count(), 1, "{line}");
}

/// Serves one connection: reads everything, then answers with `reply(everything)` and closes, the
/// way borg serve answers the request it got just before the client's EOF.
fn serve_once(socket: &Path, reply: fn(Vec<u8>) -> Vec<u8>) -> thread::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).unwrap();
        stream.write_all(&reply(request)).unwrap();
    })
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn relays_byte_exact_and_keeps_logs_off_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let server = serve_once(&socket, |request| request);
    let borg_1_2_argv = [
        "-p",
        "2222",
        "-oBatchMode=yes",
        "-4",
        "borg@backup-host",
        "borg",
        "serve",
        "--umask=077",
        "--debug",
    ];
    let mut command = relay(&socket, &borg_1_2_argv);
    command.env("BORG_PULL_LOG", "debug");
    let input = payload(3 << 20);
    let output = run(command, input.clone());
    server.join().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {:?}",
        stderr_lines(&output)
    );
    assert!(
        output.stdout == input,
        "stdout differs from what the server sent (log lines on stdout?)"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("relay done"),
        "debug logs go to stderr"
    );
}

#[test]
fn socket_from_env_and_borg_2_argv() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let server = serve_once(&socket, |request| {
        format!("{} bytes\n", request.len()).into_bytes()
    });
    let mut command = TestCommand::new(relay_bin());
    command.args(["host", "borg", "serve", "--rest", "--backend", "FILE:/srv/repo"]);
    command.env("BORG_PULL_SOCKET", &socket);
    let output = run(command, b"hello".to_vec());
    server.join().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {:?}",
        stderr_lines(&output)
    );
    assert_eq!(output.stdout, b"5 bytes\n");
    assert!(
        output.stderr.is_empty(),
        "quiet by default: {:?}",
        stderr_lines(&output)
    );
}

#[test]
fn server_closing_early_ends_the_relay_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"bye").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        rest
    });
    let output = run(relay(&socket, &["h"]), b"still sending".to_vec());
    assert_eq!(server.join().unwrap(), b"still sending");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {:?}",
        stderr_lines(&output)
    );
    assert_eq!(output.stdout, b"bye");
}

/// A stand-in for borg-pull-server: one `borg serve --restrict-to-repository REPO` per connection, with
/// the connection as its stdin and stdout.
fn borg_serve_listener(socket: &Path, repo: &Path, env: Vec<(&'static str, PathBuf)>) {
    let listener = UnixListener::bind(socket).unwrap();
    let repo = repo.to_path_buf();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let stream: UnixStream = stream.unwrap();
            let stdin = OwnedFd::from(stream.try_clone().unwrap());
            let mut child = Command::new("borg")
                .args(["serve", "--restrict-to-repository"])
                .arg(&repo)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(stdin)
                .stdout(OwnedFd::from(stream))
                .spawn()
                .unwrap();
            thread::spawn(move || child.wait());
        }
    });
}

#[test]
fn real_borg_init_create_list_through_the_relay() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (home, socket, repo, data) = (
        dir.path().join("home"),
        dir.path().join("s.sock"),
        dir.path().join("repo"),
        dir.path().join("data"),
    );
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file.bin"), payload(2 << 20)).unwrap();
    let env = vec![("HOME", home.clone()), ("BORG_BASE_DIR", home.clone())];
    borg_serve_listener(&socket, &repo, env.clone());
    let url = format!("ssh://borg-server{}", repo.display());
    let borg = |args: &[&str]| {
        let mut command = TestCommand::new("borg");
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "BORG_RSH",
                format!("{} --socket {}", relay_bin().display(), socket.display()),
            )
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .current_dir(dir.path());
        let output = run(command, Vec::new());
        borg_pull_testkit::assert_ok(&output, &format!("borg {args:?}"));
        output.stdout_text()
    };
    borg(&["init", "-e", "none", &url]);
    borg(&["create", &format!("{url}::first"), "data"]);
    let archives = borg(&["list", "--short", &url]);
    assert_eq!(archives.trim(), "first");
    let files = borg(&["list", "--short", &format!("{url}::first")]);
    assert!(files.lines().any(|l| l == "data/sub/file.bin"), "{files}");
}

#[test]
fn connection_reset_mid_stream_fails_with_one_line_and_255() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        // Closing with unread data resets the relay's end of the connection.
    });
    let output = run(relay(&socket, &["h", "borg", "serve"]), payload(8 << 20));
    server.join().unwrap();
    let lines = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(255), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "exactly one line expected: {lines:?}");
    // The reset reaches whichever direction touches the socket first: the write of stdin's bytes
    // or the read towards stdout. Either way the line names the direction and the socket.
    let names_direction =
        lines[0].contains("relaying stdin -> ") || lines[0].contains("x.sock -> stdout failed");
    assert!(names_direction && lines[0].contains("x.sock"), "{lines:?}");
}

/// `--version` and `-V` print the crate's version on stdout and exit 0, with no `--socket`:
/// `check-config --connect` reads it on the client and compares it with the server's.
mod version_flag_prints_the_version_without_a_socket {
    use super::*;

    #[test]
    fn long() {
        case("--version");
    }

    #[test]
    fn short() {
        case("-V");
    }

    fn case(flag: &str) {
        let mut command = TestCommand::new(relay_bin());
        command.arg(flag).env_remove("BORG_PULL_SOCKET");
        let output = run(command, Vec::new());
        assert_eq!(output.status.code(), Some(0), "{flag}: {}", output.describe());
        assert_eq!(
            output.stdout_text(),
            format!("borg-pull-relay {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
        assert!(output.stderr.is_empty(), "{flag}: {}", output.describe());
    }
}
