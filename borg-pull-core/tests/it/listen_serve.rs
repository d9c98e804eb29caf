//! `serve_connections` as a library, with a stand-in for borg: fast, no borg needed.
//!
//! The stand-in is a shell script that records its arguments on stderr (which the server logs) and
//! echoes stdin to stdout, exiting on EOF like `borg serve` does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borg_pull_core::listen::{serve_connections, ListenLimits, PrivateListener};
use borg_pull_core::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound for every wait here; generous because the machine is shared and noisy.
const DEADLINE: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    args_log: PathBuf,
    cancel: CancellationToken,
    server: JoinHandle<borg_pull_core::Result<()>>,
}

/// A fake borg that appends its argv to `args.log` and echoes stdin.
fn fake_borg(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("args.log");
    let script = dir.join("fake-borg");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\necho \"fake serve started\" >&2\nexec cat\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn start(limits: ListenLimits, allow_delete: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let (borg, args_log) = fake_borg(dir.path());
    let socket = dir.path().join("run/s.sock");
    let listener = PrivateListener::bind(&socket).unwrap();
    let config = ServeConfig {
        borg,
        allow_delete,
        ..ServeConfig::new("/srv/borg/client one").unwrap()
    };
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve_connections(listener, config, limits, cancel.clone()));
    Fixture {
        _dir: dir,
        socket,
        args_log,
        cancel,
        server,
    }
}

async fn echo_round_trip(conn: &mut UnixStream, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
}

async fn stop(f: Fixture) {
    f.cancel.cancel();
    tokio::time::timeout(DEADLINE, f.server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(!f.socket.exists(), "socket removed on stop");
}

#[tokio::test]
async fn each_connection_gets_fixed_flags_and_a_full_relay() {
    let f = start(ListenLimits::default(), false);
    let mut conn = UnixStream::connect(&f.socket).await.unwrap();
    echo_round_trip(&mut conn, b"hello borg").await;
    // Half-close: the fake borg sees EOF, exits, and the server then closes our read side.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    let args = fs::read_to_string(&f.args_log).unwrap();
    assert_eq!(
        args.trim_end(),
        "serve --append-only --restrict-to-repository /srv/borg/client one"
    );
    stop(f).await;
}

#[tokio::test]
async fn allow_delete_drops_append_only() {
    let f = start(ListenLimits::default(), true);
    let mut conn = UnixStream::connect(&f.socket).await.unwrap();
    echo_round_trip(&mut conn, b"x").await;
    drop(conn);
    let args = fs::read_to_string(&f.args_log).unwrap();
    assert_eq!(
        args.trim_end(),
        "serve --restrict-to-repository /srv/borg/client one"
    );
    stop(f).await;
}

#[tokio::test]
async fn sessions_over_the_limit_wait_then_run() {
    let limits = ListenLimits {
        max_connections: 2,
        ..ListenLimits::default()
    };
    let f = start(limits, false);
    let mut a = UnixStream::connect(&f.socket).await.unwrap();
    let mut b = UnixStream::connect(&f.socket).await.unwrap();
    echo_round_trip(&mut a, b"a").await;
    echo_round_trip(&mut b, b"b").await;

    // The third connects (kernel backlog) but is not served while two sessions run.
    let mut c = UnixStream::connect(&f.socket).await.unwrap();
    c.write_all(b"c").await.unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
    assert!(early.is_err(), "a third session ran despite max_connections = 2");

    drop(a);
    tokio::time::timeout(DEADLINE, c.read_exact(&mut buf))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(&buf, b"c");
    drop((b, c));
    stop(f).await;
}

#[tokio::test]
async fn cancel_lets_sessions_finish_within_grace_then_kills_them() {
    let limits = ListenLimits {
        shutdown_grace: Duration::from_secs(2),
        ..ListenLimits::default()
    };
    let f = start(limits, false);
    let mut idle = UnixStream::connect(&f.socket).await.unwrap();
    echo_round_trip(&mut idle, b"ping").await;

    f.cancel.cancel();
    // New connections are refused at once: the socket file is gone.
    let gone = async {
        while f.socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("socket removed promptly");
    // The running session still works during the grace period...
    echo_round_trip(&mut idle, b"still here").await;
    // ...and is ended (borg serve killed, connection closed) after it.
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, idle.read_to_end(&mut rest))
        .await
        .expect("session ended")
        .unwrap();
    tokio::time::timeout(DEADLINE, f.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
