//! `listen` under systemd's `Type=notify`: READY=1 once the socket accepts, WATCHDOG=1 at half
//! `WATCHDOG_USEC`, STOPPING=1 on SIGTERM. The test plays systemd's side of the protocol: a
//! datagram socket named by NOTIFY_SOCKET.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use borg_pull_testkit::{server_bin, Spawned, TestCommand, TestDir};

/// The next notification, at most `limit` from now.
fn next(socket: &UnixDatagram, limit: Duration) -> String {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn listen_notifies_ready_watchdog_and_stopping() {
    let t = TestDir::new();
    let notify = t.join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    let socket = t.join("run/borg.sock");
    std::fs::create_dir(t.join("run")).unwrap();
    let repo = t.join("repo");
    t.init_repo(&repo);
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(&socket)
        .arg("--repo")
        .arg(&repo)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID");
    let mut server = Spawned::spawn(cmd, t.join("server.log"));

    let ready = next(&systemd, Duration::from_secs(20));
    assert!(ready.starts_with("READY=1\nSTATUS=serving "), "{ready:?}");
    // Ready means ready: the socket accepts at once.
    UnixStream::connect(&socket).unwrap_or_else(|e| panic!("not accepting after READY=1: {e}"));
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(&systemd, Duration::from_secs(5)), "WATCHDOG=1");
    }
    // Three pings at half of 300 ms: well under the 5 s each was allowed, proving the interval.
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());

    server.signal("TERM");
    let stopping = (0..20)
        .map(|_| next(&systemd, Duration::from_secs(20)))
        .find(|m| m != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.report());
}

#[test]
fn without_notify_socket_nothing_is_sent_and_a_bad_one_is_not_fatal() {
    let t = TestDir::new();
    std::fs::create_dir(t.join("run")).unwrap();
    let socket = t.join("run/borg.sock");
    let repo = t.join("repo");
    t.init_repo(&repo);
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(&socket)
        .arg("--repo")
        .arg(&repo)
        .env("NOTIFY_SOCKET", t.join("nobody-listens.sock"));
    let mut server = Spawned::spawn(cmd, t.join("server.log"));
    server.wait_for_log("cannot notify systemd");
    server.wait_for_log("listening");
    UnixStream::connect(&socket).unwrap();
    server.signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.report());
}
