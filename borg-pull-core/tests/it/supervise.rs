//! The [`Supervisor`] with a stand-in for borg (`cat`: echoes, exits on EOF like borg serve).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use borg_pull_core::supervise::{LimitPolicy, Refusal, Supervisor, SupervisorLimits};
use borg_pull_core::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Bound for every wait here; generous because the machine is shared and noisy.
const DEADLINE: Duration = Duration::from_secs(30);

/// Writes an executable `fake-borg` running `body` (a shell script) into `dir`.
fn fake_borg(dir: &Path, body: &str) -> ServeConfig {
    let script = dir.join("fake-borg");
    fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    ServeConfig {
        borg: script,
        ..ServeConfig::new("/srv/repo").unwrap()
    }
}

fn supervisor(dir: &Path, max_active: usize, max_total: Option<u64>, policy: LimitPolicy) -> Supervisor {
    let limits = SupervisorLimits {
        max_active,
        max_total,
        policy,
    };
    Supervisor::new(fake_borg(dir, "exec cat"), limits)
}

/// Spawns a session on one end of a duplex pipe; returns the other end (the "client").
async fn session(sup: &Supervisor) -> DuplexStream {
    let admission = tokio::time::timeout(DEADLINE, sup.admit())
        .await
        .expect("admitted in time")
        .expect("admitted");
    let (client, server) = tokio::io::duplex(64 * 1024);
    admission.spawn(server, tracing::info_span!("test"));
    client
}

async fn echo(conn: &mut DuplexStream, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
}

/// Closes our side and reads until the session closes its side (borg serve reaped).
async fn finish(mut conn: DuplexStream) {
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut rest))
        .await
        .expect("session ends")
        .unwrap();
}

async fn wait_for_active(sup: &Supervisor, n: usize) {
    let start = Instant::now();
    while sup.stats().active != n {
        assert!(
            start.elapsed() < DEADLINE,
            "active never reached {n}: {:?}",
            sup.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn refuse_policy_refuses_at_once_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 1, None, LimitPolicy::Refuse);
    let mut a = session(&sup).await;
    echo(&mut a, b"a").await;
    let refused = tokio::time::timeout(Duration::from_secs(1), sup.admit())
        .await
        .expect("Refuse never waits");
    assert_eq!(refused.unwrap_err(), Refusal::Busy { max_active: 1 });
    assert_eq!(sup.try_admit().unwrap_err(), Refusal::Busy { max_active: 1 });

    finish(a).await;
    wait_for_active(&sup, 0).await;
    let b = session(&sup).await;
    finish(b).await;
    let stats = sup.stop().await;
    assert_eq!(
        (stats.accepted, stats.refused, stats.active, stats.failed),
        (2, 2, 0, 0)
    );
}

#[tokio::test]
async fn wait_policy_waits_for_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 1, None, LimitPolicy::Wait);
    let mut a = session(&sup).await;
    echo(&mut a, b"a").await;
    // try_admit never waits, whatever the policy.
    assert!(matches!(sup.try_admit(), Err(Refusal::Busy { .. })));
    let waiting = tokio::time::timeout(Duration::from_millis(300), sup.admit()).await;
    assert!(waiting.is_err(), "admit must wait while the slot is taken");

    let waiter = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.admit().await.map(drop) })
    };
    finish(a).await;
    tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("a freed slot admits the waiter")
        .unwrap()
        .unwrap();
    // The waiter's admission was dropped unspawned: its slot is free again.
    assert_eq!(sup.available(), 1);
    let stats = sup.stop().await;
    assert_eq!((stats.accepted, stats.refused), (1, 1));
}

#[tokio::test]
async fn waiting_admit_ends_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 1, None, LimitPolicy::Wait);
    let a = session(&sup).await;
    let waiter = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.admit().await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping = tokio::spawn({
        let sup = sup.clone();
        async move { sup.stop().await }
    });
    let refused = tokio::time::timeout(DEADLINE, waiter).await.unwrap().unwrap();
    assert_eq!(refused, Err(Refusal::Stopping));
    tokio::time::timeout(DEADLINE, stopping).await.unwrap().unwrap();
    assert_eq!(sup.try_admit().unwrap_err(), Refusal::Stopping);
    drop(a);
}

#[tokio::test]
async fn max_total_caps_sessions_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 4, Some(2), LimitPolicy::Wait);
    // An admission dropped without spawning is not a session and gives its share back.
    drop(sup.try_admit().unwrap());
    let a = session(&sup).await;
    let b = session(&sup).await;
    assert_eq!(
        sup.try_admit().unwrap_err(),
        Refusal::TotalReached { max_total: 2 }
    );
    finish(a).await;
    finish(b).await;
    wait_for_active(&sup, 0).await;
    // Ended sessions still count: the cap is per run, not at once.
    assert_eq!(
        sup.admit().await.unwrap_err(),
        Refusal::TotalReached { max_total: 2 }
    );
    let stats = sup.stop().await;
    assert_eq!((stats.accepted, stats.refused), (2, 2));
}

#[tokio::test]
async fn drain_lets_sessions_finish_within_grace() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 4, None, LimitPolicy::Wait);
    let mut a = session(&sup).await;
    echo(&mut a, b"hello").await;
    let drain = tokio::spawn({
        let sup = sup.clone();
        async move { sup.drain(DEADLINE).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(sup.try_admit(), Err(Refusal::Stopping)));
    // Still served during the grace period, then it ends on its own.
    echo(&mut a, b"still here").await;
    finish(a).await;
    let stats = tokio::time::timeout(DEADLINE, drain).await.unwrap().unwrap();
    assert_eq!(stats.active, 0);
    assert_eq!((stats.to_serve, stats.from_serve), (15, 15));
}

#[tokio::test]
async fn drain_cancels_after_grace_and_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A borg serve that records its pid and ignores nothing: EOF on stdin ends it (cat).
    let config = fake_borg(
        dir.path(),
        &format!("echo $$ > '{}'\nexec cat", pid_file.display()),
    );
    let limits = SupervisorLimits {
        max_active: 4,
        max_total: None,
        policy: LimitPolicy::Wait,
    };
    let sup = Supervisor::new(config, limits);
    let mut idle = session(&sup).await;
    echo(&mut idle, b"x").await;
    let pid: u32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();

    let start = Instant::now();
    let stats = tokio::time::timeout(DEADLINE, sup.drain(Duration::from_millis(300)))
        .await
        .expect("drain returns");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "the grace period was honoured"
    );
    assert_eq!(stats.active, 0);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "borg serve {pid} was not reaped"
    );
    // The session's connection is closed once borg serve is gone.
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, idle.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn drain_kills_a_borg_serve_that_ignores_eof() {
    let dir = tempfile::tempdir().unwrap();
    // Ignores EOF and SIGTERM: only the kill after SERVE_CANCEL_GRACE ends it.
    let config = fake_borg(dir.path(), "trap '' TERM\nwhile :; do sleep 0.1; done");
    let limits = SupervisorLimits {
        max_active: 1,
        max_total: None,
        policy: LimitPolicy::Refuse,
    };
    let sup = Supervisor::new(config, limits);
    let _conn = session(&sup).await;
    wait_for_active(&sup, 1).await;
    let stats = tokio::time::timeout(DEADLINE, sup.drain(Duration::from_millis(100)))
        .await
        .expect("drain returns after the cancel grace");
    assert_eq!(stats.active, 0);
}

#[tokio::test]
async fn failed_spawn_is_counted() {
    let limits = SupervisorLimits {
        max_active: 1,
        max_total: None,
        policy: LimitPolicy::Wait,
    };
    let config = ServeConfig {
        borg: "/nonexistent/borg".into(),
        ..ServeConfig::new("/srv/repo").unwrap()
    };
    let sup = Supervisor::new(config, limits);
    let conn = session(&sup).await;
    finish(conn).await;
    wait_for_active(&sup, 0).await;
    let stats = sup.stop().await;
    assert_eq!((stats.accepted, stats.failed, stats.active), (1, 1, 0));
    assert_eq!(sup.available(), 1, "the slot is released after a failure");
}

#[tokio::test]
async fn dropping_the_supervisor_cancels_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), 1, None, LimitPolicy::Wait);
    let mut conn = session(&sup).await;
    echo(&mut conn, b"x").await;
    drop(sup);
    // Our write side stays open: only the cancellation can end this session.
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut buf))
        .await
        .expect("session cancelled")
        .unwrap();
}

fn running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The first session takes the `borg serve` started ahead (its pid is the first thing the session
/// reads), and the next one starts its own.
#[tokio::test]
async fn the_first_session_takes_the_borg_serve_started_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let limits = SupervisorLimits {
        max_active: 2,
        max_total: None,
        policy: LimitPolicy::Wait,
    };
    let sup = Supervisor::new(fake_borg(dir.path(), "echo $$; exec cat"), limits);
    sup.prestart();
    let ahead = sup.prestarted().expect("started ahead");
    assert!(running(ahead));
    sup.prestart();
    assert_eq!(sup.prestarted(), Some(ahead), "at most one waits");
    let read_pid = |mut conn: DuplexStream| async move {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            tokio::time::timeout(DEADLINE, conn.read_exact(&mut byte))
                .await
                .expect("pid in time")
                .unwrap();
            line.push(byte[0]);
        }
        (
            String::from_utf8(line).unwrap().trim().parse::<u32>().unwrap(),
            conn,
        )
    };
    let (pid, mut conn) = read_pid(session(&sup).await).await;
    assert_eq!(pid, ahead);
    assert_eq!(sup.prestarted(), None);
    echo(&mut conn, b"hello").await;
    finish(conn).await;
    let (second, conn) = read_pid(session(&sup).await).await;
    assert_ne!(second, ahead);
    finish(conn).await;
    let stats = sup.drain(DEADLINE).await;
    assert_eq!((stats.accepted, stats.active), (2, 0));
    assert!(!running(ahead) && !running(second));
}

/// A `borg serve` started ahead that no connection takes is stopped and reaped when the run
/// stops or drains, also one that ignores EOF and SIGTERM (SIGKILL after the grace), and when the
/// supervisor is dropped.
mod a_borg_serve_started_ahead_without_a_connection_is_stopped {
    use super::*;

    #[tokio::test]
    async fn by_stop() {
        case("exec cat", "stop").await;
    }

    #[tokio::test]
    async fn by_drain() {
        case("exec cat", "drain").await;
    }

    #[tokio::test]
    async fn by_stop_when_it_ignores_eof_and_sigterm() {
        case("trap '' TERM; while :; do sleep 1; done", "stop").await;
    }

    #[tokio::test]
    async fn by_dropping_the_supervisor() {
        case("exec cat", "drop").await;
    }

    /// A fake borg running `body` is started ahead, then the supervisor is stopped `how`.
    async fn case(body: &str, how: &str) {
        let dir = tempfile::tempdir().unwrap();
        let limits = SupervisorLimits {
            max_active: 1,
            max_total: None,
            policy: LimitPolicy::Refuse,
        };
        let sup = Supervisor::new(fake_borg(dir.path(), body), limits);
        sup.prestart();
        let pid = sup.prestarted().expect("started ahead");
        assert!(running(pid), "{body}");
        match how {
            "stop" => {
                let stats = tokio::time::timeout(DEADLINE, sup.stop())
                    .await
                    .expect("stops in time");
                assert_eq!(stats.accepted, 0);
                // Reaped before stop returned: not even a zombie is left.
                assert!(!running(pid), "{body} {how}");
            }
            "drain" => {
                tokio::time::timeout(DEADLINE, sup.drain(Duration::from_secs(1)))
                    .await
                    .expect("drains in time");
                assert!(!running(pid), "{body} {how}");
            }
            _ => {
                drop(sup);
                let start = Instant::now();
                while running(pid) {
                    assert!(start.elapsed() < DEADLINE, "{body} {how}: pid {pid} still there");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
