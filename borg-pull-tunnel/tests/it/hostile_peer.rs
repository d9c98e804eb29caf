//! Whole pulls against a client sshd that misbehaves (the in-process fixture in `hostile/`).
//!
//! The promise under test: whatever the client's sshd does, the server's memory stays bounded and
//! the run ends by itself within a deadline. Every test that can hang has its own deadline and
//! fails (instead of stalling the suite) when the library does not end the pull by itself; the
//! cancel token is only the last resort. Memory is measured in a child process (this test binary
//! re-run with `HOSTILE_*` variables, see [`child_pull_entry`]) so parallel tests and the fixture
//! itself do not pollute the number; the parent kills a child that grows past
//! [`MEMORY_KILL_KIB`] so a regression cannot take the machine down.
//!
//! What the fixture cannot do (russh 0.65.1 server): send *channel data* larger than our maximum
//! packet or beyond our window (see `hostile/mod.rs`); oversized packets are tested with an
//! SSH_MSG_DEBUG of any size instead.
//!
//! The library's API is used in exactly two places, [`pull_options`] and [`run_pull`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hostile::{memory_kib, relay_path, Capped, Fixture, Knobs};
use borg_pull_tunnel::jobs::pull::{pull_with_output, PullOptions, PullOutcome};
use borg_pull_tunnel::{Error, ForwardDenial};

/// A hang must end by the library's own doing within this long (connect to error). Per-step
/// deadlines of up to ~30 s plus a bounded clean-up fit; today's keepalive (15 s x 4) does not.
const HANG_BOUND: Duration = Duration::from_secs(50);

/// After `options.cancel` fires, the pull must return within this long (borg gets a 5 s SIGINT
/// grace, then clean-up).
const CANCEL_BOUND: Duration = Duration::from_secs(20);

/// When a test cancels a run that would otherwise go on (withheld window, garbage).
const CANCEL_AFTER: Duration = Duration::from_secs(10);

/// Allowed growth of the pulling process's peak RSS (VmHWM) over its RSS before the pull.
const MEMORY_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The parent kills a child whose peak RSS grew by this much (protects the shared machine).
const MEMORY_KILL_KIB: u64 = 768 * 1024;

// ---------------------------------------------------------------------------------------------
// The two places that use the library's API. Adapt these when the API changes.
// ---------------------------------------------------------------------------------------------

/// Everything a pull needs from a test; crosses into the child process as `HOSTILE_*` variables.
#[derive(Debug, Clone)]
struct PullSpec {
    port: u16,
    identity: PathBuf,
    known_hosts: PathBuf,
    /// Repository path on the server (only passed to `borg serve`, which is a test script).
    repo: PathBuf,
    /// The program run as `borg serve` on the server (a test script).
    serve_borg: PathBuf,
    /// The program run as `borg` on the client (a test script, run by the fixture's `sh -c`).
    remote_borg: PathBuf,
    /// Cancel the run (`options.cancel`) after this long.
    cancel_after: Option<Duration>,
    /// The test's deadline: then the run is cancelled as a last resort and counted as a hang.
    deadline: Duration,
    /// Keepalive interval (the library's default when `None`).
    keepalive: Option<Duration>,
}

/// API adapter 1: the library's options for a spec.
fn pull_options(spec: &PullSpec) -> PullOptions {
    let mut options = PullOptions::new(
        "hostile@127.0.0.1",
        &spec.repo,
        vec!["create".into(), "::archive".into(), "/data".into()],
    )
    .unwrap();
    options.session.port = spec.port;
    options.session.identity = Some(spec.identity.clone());
    options.session.known_hosts = spec.known_hosts.clone();
    options.serve.borg = spec.serve_borg.clone();
    options.relay = relay_path().into();
    options.remote_borg = spec.remote_borg.clone().into();
    // The library's own deadlines (REQUEST_TIMEOUT, `max_runtime`) stay at their defaults: the
    // hang tests check that those end a run within HANG_BOUND. Shorter ones belong here if wanted.
    if let Some(k) = spec.keepalive {
        options.session.keepalive_interval = k;
    }
    options
}

/// How one pull went.
#[derive(Debug)]
struct PullRun {
    /// `None`: still running when the last resort gave up too (cancel did not end it).
    result: Option<Result<PullOutcome, Error>>,
    /// Start to return (or to giving up).
    elapsed: Duration,
    /// The test deadline passed and the run had to be cancelled: a hang.
    hit_deadline: bool,
    /// From `cancel` (test's planned cancel or last resort) to the pull's return.
    after_cancel: Option<Duration>,
    stdout: Capped,
    stderr: Capped,
}

/// API adapter 2: runs one pull with bounded output capture, the planned cancel and the deadline.
async fn run_pull(spec: &PullSpec) -> PullRun {
    let options = pull_options(spec);
    let cancel = options.cancel.clone();
    let start = Instant::now();
    let mut stdout = Capped::default();
    let mut stderr = Capped::default();
    let mut hit_deadline = false;
    let mut cancelled_at: Option<Instant> = None;
    let far = Duration::from_secs(24 * 3600);
    let result = {
        let pull = pull_with_output(options, &mut stdout, &mut stderr);
        tokio::pin!(pull);
        let planned = tokio::time::sleep(spec.cancel_after.unwrap_or(far));
        tokio::pin!(planned);
        let deadline = tokio::time::sleep(spec.deadline);
        tokio::pin!(deadline);
        let give_up = tokio::time::sleep(far);
        tokio::pin!(give_up);
        loop {
            tokio::select! {
                r = &mut pull => break Some(r),
                () = &mut planned, if cancelled_at.is_none() && spec.cancel_after.is_some() => {
                    cancel.cancel();
                    cancelled_at = Some(Instant::now());
                }
                () = &mut deadline, if !hit_deadline => {
                    hit_deadline = true;
                    cancel.cancel();
                    cancelled_at.get_or_insert_with(Instant::now);
                    give_up.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(30));
                }
                () = &mut give_up => break None,
            }
        }
    };
    PullRun {
        after_cancel: cancelled_at.map(|at| at.elapsed()),
        elapsed: start.elapsed(),
        result,
        hit_deadline,
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------
// Specs, scripts and the child-process runner.
// ---------------------------------------------------------------------------------------------

impl PullSpec {
    fn new(fx: &Fixture, serve_borg: PathBuf, remote_borg: PathBuf) -> Self {
        PullSpec {
            port: fx.port,
            identity: fx.identity.clone(),
            known_hosts: fx.known_hosts.clone(),
            repo: fx.dir().join("repo"),
            serve_borg,
            remote_borg,
            cancel_after: None,
            deadline: HANG_BOUND,
            keepalive: None,
        }
    }

    fn to_env(&self) -> Vec<(&'static str, OsString)> {
        let ms = |d: Duration| OsString::from(d.as_millis().to_string());
        let mut env = vec![
            ("HOSTILE_PORT", OsString::from(self.port.to_string())),
            ("HOSTILE_IDENTITY", self.identity.clone().into()),
            ("HOSTILE_KNOWN_HOSTS", self.known_hosts.clone().into()),
            ("HOSTILE_REPO", self.repo.clone().into()),
            ("HOSTILE_SERVE_BORG", self.serve_borg.clone().into()),
            ("HOSTILE_REMOTE_BORG", self.remote_borg.clone().into()),
            ("HOSTILE_DEADLINE_MS", ms(self.deadline)),
        ];
        if let Some(d) = self.cancel_after {
            env.push(("HOSTILE_CANCEL_AFTER_MS", ms(d)));
        }
        if let Some(d) = self.keepalive {
            env.push(("HOSTILE_KEEPALIVE_MS", ms(d)));
        }
        env
    }

    fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var_os(name);
        let path = |name: &str| PathBuf::from(var(name).unwrap());
        let ms = |name: &str| var(name).map(|v| Duration::from_millis(v.to_str().unwrap().parse().unwrap()));
        let port = var("HOSTILE_PORT")?.to_str()?.parse().ok()?;
        Some(PullSpec {
            port,
            identity: path("HOSTILE_IDENTITY"),
            known_hosts: path("HOSTILE_KNOWN_HOSTS"),
            repo: path("HOSTILE_REPO"),
            serve_borg: path("HOSTILE_SERVE_BORG"),
            remote_borg: path("HOSTILE_REMOTE_BORG"),
            cancel_after: ms("HOSTILE_CANCEL_AFTER_MS"),
            deadline: ms("HOSTILE_DEADLINE_MS").unwrap(),
            keepalive: ms("HOSTILE_KEEPALIVE_MS"),
        })
    }
}

/// `borg serve` on the server: answers one line with `pong LINE`.
fn serve_pong(fx: &Fixture) -> PathBuf {
    fx.script("serve-pong", r#"IFS= read -r line; printf 'pong %s\n' "$line""#)
}

/// `borg serve` on the server that never reads its stdin (nor writes).
fn serve_sleeps(fx: &Fixture) -> PathBuf {
    fx.script("serve-sleeps", "exec sleep 600")
}

/// `borg serve` on the server that writes endlessly and never reads.
fn serve_floods(fx: &Fixture) -> PathBuf {
    fx.script("serve-floods", "exec cat /dev/zero")
}

/// `borg` on the client: optionally waits for a fixture flag, then one round trip through the
/// real relay (`$BORG_RSH`, as borg does) and prints the answer.
fn client_round_trip(fx: &Fixture, wait_for_flag: Option<&str>) -> PathBuf {
    let wait = match wait_for_flag {
        Some(what) => format!(
            "i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n",
            fx.flag_path(what).display()
        ),
        None => String::new(),
    };
    fx.script(
        "client-borg",
        &format!(
            "{wait}reply=$(printf 'ping\\n' | eval \"$BORG_RSH borg-pull-server borg serve --umask=077\") || exit 3\n\
             printf 'client got: %s\\n' \"$reply\"\n\
             echo \"client args: $*\" >&2"
        ),
    )
}

/// `borg` on the client that does nothing for ten minutes.
fn client_sleeps(fx: &Fixture) -> PathBuf {
    fx.script("client-sleeps", "exec sleep 600")
}

/// `borg` on the client that connects to the forward, sends nothing and discards what it gets.
fn client_connects_and_idles(fx: &Fixture) -> PathBuf {
    fx.script(
        "client-idles",
        "sleep 600 | eval \"$BORG_RSH borg-pull-server borg serve\" >/dev/null",
    )
}

/// The child side: runs the pull described by `HOSTILE_*` and reports on stdout. Without those
/// variables (a normal test run) it does nothing.
#[test]
fn child_pull_entry() {
    let Some(spec) = PullSpec::from_env() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rss, _) = memory_kib("self").unwrap();
    println!("HOSTILE_BASELINE_KIB {rss}");
    let run = rt.block_on(run_pull(&spec));
    let outcome = match &run.result {
        None => "gave-up".to_owned(),
        Some(Ok(o)) => format!("ok {o:?}"),
        Some(Err(e)) => format!("err {e:?}"),
    };
    println!("HOSTILE_OUTCOME {}", outcome.replace('\n', " "));
    println!("HOSTILE_ELAPSED_MS {}", run.elapsed.as_millis());
    println!("HOSTILE_HIT_DEADLINE {}", run.hit_deadline);
    if let Some(d) = run.after_cancel {
        println!("HOSTILE_AFTER_CANCEL_MS {}", d.as_millis());
    }
    println!("HOSTILE_STDOUT_BYTES {}", run.stdout.total);
    let (_, hwm) = memory_kib("self").unwrap();
    println!("HOSTILE_HWM_KIB {hwm}");
    // Do not wait for stuck tasks at runtime shutdown.
    rt.shutdown_background();
}

/// What the child reported, plus the parent's own observations.
#[derive(Debug)]
struct ChildRun {
    lines: Vec<String>,
    baseline_kib: u64,
    /// Highest VmHWM the parent saw (or the child reported).
    peak_kib: u64,
    /// Why the parent killed the child, if it did.
    killed: Option<String>,
    elapsed: Duration,
}

impl ChildRun {
    fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
    }

    fn growth_mib(&self) -> f64 {
        self.peak_kib.saturating_sub(self.baseline_kib) as f64 / 1024.0
    }

    fn ms(&self, key: &str) -> Option<Duration> {
        self.value(key).map(|v| Duration::from_millis(v.parse().unwrap()))
    }
}

/// Runs the pull in a child process (this binary, `child_pull_entry`), watching its memory.
async fn run_pull_in_child(spec: &PullSpec) -> ChildRun {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "hostile_peer::child_pull_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(spec.to_env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                // libtest may print `test child_pull_entry ... ` in front of the first line.
                if let Some(at) = line.find("HOSTILE_") {
                    lines.lock().unwrap().push(line[at..].to_owned());
                }
            }
        })
    };
    let baseline = |lines: &Mutex<Vec<String>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("HOSTILE_BASELINE_KIB ")?.parse::<u64>().ok())
    };
    let start = Instant::now();
    let give_up = spec.deadline + Duration::from_secs(40);
    let mut peak = 0;
    let mut killed = None;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if let Some((_, hwm)) = memory_kib(&pid) {
            peak = peak.max(hwm);
        }
        if let Some(base) = baseline(&lines) {
            if killed.is_none() && peak.saturating_sub(base) > MEMORY_KILL_KIB {
                killed = Some(format!(
                    "peak RSS grew by more than {} MiB",
                    MEMORY_KILL_KIB / 1024
                ));
                let _ = child.kill();
            }
        }
        if killed.is_none() && start.elapsed() > give_up {
            killed = Some(format!("still running after {give_up:?}"));
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.wait();
    reader.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    let mut run = ChildRun {
        baseline_kib: 0,
        peak_kib: peak,
        killed,
        elapsed: start.elapsed(),
        lines,
    };
    run.baseline_kib = run
        .value("HOSTILE_BASELINE_KIB")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(hwm) = run.value("HOSTILE_HWM_KIB").and_then(|v| v.parse().ok()) {
        run.peak_kib = run.peak_kib.max(hwm);
    }
    eprintln!(
        "child run: growth {:.1} MiB (baseline {} KiB, peak {} KiB), killed {:?}, {:?}: {:?}",
        run.growth_mib(),
        run.baseline_kib,
        run.peak_kib,
        run.killed,
        run.elapsed,
        run.lines
            .iter()
            .filter(|l| l.starts_with("HOSTILE_"))
            .collect::<Vec<_>>()
    );
    run
}

/// What a child run must show besides bounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildExpect {
    /// The library ends the pull by itself with an error before the deadline.
    Error,
    /// The test cancelled the run: it returns within [`CANCEL_BOUND`] of the cancel.
    ReturnsAfterCancel,
    /// The pull succeeds.
    Success,
}

/// Asserts everything at once (so one run reports every problem): not killed, peak RSS growth
/// under [`MEMORY_GROWTH_LIMIT_KIB`], no deadline hit, and `expect`.
fn assert_child(run: &ChildRun, expect: ChildExpect) {
    let mut problems = Vec::new();
    if let Some(why) = &run.killed {
        problems.push(format!("the pull had to be killed: {why}"));
    }
    if run.growth_mib() * 1024.0 >= MEMORY_GROWTH_LIMIT_KIB as f64 {
        problems.push(format!(
            "peak RSS grew by {:.1} MiB (limit {} MiB)",
            run.growth_mib(),
            MEMORY_GROWTH_LIMIT_KIB / 1024
        ));
    }
    if run.killed.is_none() && run.value("HOSTILE_HIT_DEADLINE") != Some("false") {
        problems.push("the pull did not end by itself before the test's deadline".into());
    }
    let outcome = run.value("HOSTILE_OUTCOME").unwrap_or("(none)");
    match expect {
        ChildExpect::Error if !outcome.starts_with("err ") => {
            problems.push(format!("expected an error, got {outcome}"))
        }
        ChildExpect::Success if !outcome.starts_with("ok ") => {
            problems.push(format!("expected success, got {outcome}"))
        }
        ChildExpect::ReturnsAfterCancel => {
            // Not cancelled at all: it ended by itself before the planned cancel, which is fine.
            if let Some(after) = run.ms("HOSTILE_AFTER_CANCEL_MS") {
                if outcome == "gave-up" {
                    problems.push(format!("still running {after:?} after cancel"));
                } else if after >= CANCEL_BOUND {
                    problems.push(format!(
                        "returned {after:?} after cancel (bound {CANCEL_BOUND:?})"
                    ));
                }
            }
        }
        _ => {}
    }
    assert!(
        problems.is_empty(),
        "{}\n(child run: {:?})",
        problems.join("; "),
        run
    );
}

/// The run's watcher on the "client" removes the private directory about a second after the
/// script's process ends, whatever ended it.
async fn assert_private_dir_removed(fx: &Fixture) {
    let empty = || std::fs::read_dir(fx.dir().join("tmp")).unwrap().next().is_none();
    for _ in 0..100 {
        if empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(fx.dir().join("tmp")).unwrap().collect();
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,ppid,pgid,stat,args"])
        .output()
        .unwrap();
    panic!(
        "left behind after 10 s: {left:?}\n{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

fn describe(run: &PullRun) -> String {
    format!(
        "result {:?} after {:?} (hit deadline: {}, after cancel: {:?}); stderr: {}",
        run.result,
        run.elapsed,
        run.hit_deadline,
        run.after_cancel,
        run.stderr.text()
    )
}

/// Asserts that the library ended the pull by itself with an error, within [`HANG_BOUND`].
fn assert_ends_with_error(run: &PullRun) {
    assert!(
        !run.hit_deadline,
        "the pull did not end by itself within {HANG_BOUND:?}: {}",
        describe(run)
    );
    assert!(
        matches!(run.result, Some(Err(_))),
        "expected an error: {}",
        describe(run)
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The fixture works: a whole pull through it.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_through_the_fixture() {
    let fx = Fixture::start(Knobs::default()).await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull(&spec).await;
    let outcome = match &run.result {
        Some(Ok(o)) => o.clone(),
        _ => panic!("{}", describe(&run)),
    };
    assert_eq!(outcome.exit.code(), 0, "{}", describe(&run));
    assert_eq!(run.stdout.text(), "client got: pong ping\n", "{}", describe(&run));
    assert!(
        run.stderr.text().contains("client args: create ::archive /data"),
        "{}",
        describe(&run)
    );
    assert_eq!(outcome.forwarded.accepted, 1);
    assert_eq!(outcome.forwarded.to_serve, 5);
    assert_eq!(outcome.forwarded.from_serve, 10);
    assert_eq!(fx.stats.forward_requests.lock().unwrap().len(), 1);
    assert_eq!(fx.stats.forwarded_connections.load(Ordering::SeqCst), 1);
    // At least "pong ping\n" (the library may also write to its exec channels' stdin).
    assert!(fx.stats.client_data_bytes.load(Ordering::Relaxed) >= 10);
    // Set-up, borg and clean-up in one exec: no helper round trips.
    assert_eq!(fx.stats.exec_count(), 1, "{:?}", fx.stats.exec_commands);
    assert_private_dir_removed(&fx).await;
    assert!(
        fx.wait_for(Duration::from_secs(10), |s| s
            .connections_ended
            .load(Ordering::SeqCst)
            == 1)
            .await
    );
}

/// The same happy path in a child process: the memory baseline the hostile cases compare with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_memory_in_a_child() {
    let fx = Fixture::start(Knobs::default()).await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::Success);
}

// ---------------------------------------------------------------------------------------------
// 1. Endless output from the helper command.
// ---------------------------------------------------------------------------------------------

/// Every exec prints endlessly (e.g. a ForceCommand gone wrong). Today `exec::capture` collects
/// everything for up to 30 s: GiBs (5.7 GiB seen against sshd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_helper_output_ends_quickly_with_bounded_memory() {
    let fx = Fixture::start(Knobs {
        flood_exec_output: true,
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::Error);
}

/// The same with stderr (extended data), which `capture` collects as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_helper_stderr_ends_quickly_with_bounded_memory() {
    let fx = Fixture::start(Knobs {
        flood_exec_output: true,
        flood_exec_stderr: true,
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::Error);
}

/// Runs a pull where the execs in `numbers` flood stdout, cancelled after [`CANCEL_AFTER`].
async fn later_exec_flood(numbers: std::ops::Range<usize>) -> ChildRun {
    let fx = Fixture::start(Knobs {
        flood_exec_output: true,
        flood_exec_numbers: Some(numbers),
        ..Knobs::default()
    })
    .await;
    let mut spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    spec.cancel_after = Some(CANCEL_AFTER);
    spec.deadline = CANCEL_AFTER + CANCEL_BOUND;
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::ReturnsAfterCancel);
    run
}

/// Only the second exec floods (today: borg's own, whose output is streamed to our stdout; after
/// the helper and borg's exec merge: the clean-up). Memory stays bounded, cancel still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_second_exec_stays_bounded() {
    later_exec_flood(1..2).await;
}

/// Every exec after the first floods (today: borg's, then the clean-up `rm -rf`, which
/// `capture` buffers: +768 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_later_execs_stay_bounded() {
    later_exec_flood(1..usize::MAX).await;
}

/// borg on the client (not the sshd) prints endlessly on stdout and stderr while it runs: its
/// output is streamed to ours, never buffered; cancel still ends the run promptly. With one exec
/// per pull this is what `flooded_second_exec_stays_bounded` used to cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borg_output_flood_is_streamed_with_bounded_memory() {
    let fx = Fixture::start(Knobs::default()).await;
    let borg = fx.script("client-floods", "cat /dev/zero & exec cat /dev/zero >&2");
    let mut spec = PullSpec::new(&fx, serve_pong(&fx), borg);
    spec.cancel_after = Some(CANCEL_AFTER);
    spec.deadline = CANCEL_AFTER + CANCEL_BOUND;
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::ReturnsAfterCancel);
    let streamed: u64 = run.value("HOSTILE_STDOUT_BYTES").unwrap_or("0").parse().unwrap();
    assert!(streamed > 0, "nothing reached our stdout: {run:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Garbage into a forwarded channel / withheld window, while borg serve does not consume.
// ---------------------------------------------------------------------------------------------

/// The sshd opens a forwarded channel itself and streams endless bytes into it; `borg serve`
/// never reads. Today russh queues up to `CHANNEL_BUFFER` (4096) packets of 32 KiB per channel
/// and then stops the whole connection loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_forwarded_channel_keeps_memory_bounded_and_cancel_works() {
    let fx = Fixture::start(Knobs {
        garbage_on_forward: true,
        ..Knobs::default()
    })
    .await;
    let mut spec = PullSpec::new(&fx, serve_sleeps(&fx), client_sleeps(&fx));
    spec.cancel_after = Some(CANCEL_AFTER);
    spec.deadline = CANCEL_AFTER + CANCEL_BOUND;
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::ReturnsAfterCancel);
    assert!(fx.stats.flood_bytes.load(Ordering::Relaxed) > 0);
}

/// The sshd withholds window on every channel; `borg serve` writes endlessly towards the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_window_keeps_memory_bounded_and_cancel_works() {
    let fx = Fixture::start(Knobs {
        withhold_window: true,
        ..Knobs::default()
    })
    .await;
    let mut spec = PullSpec::new(&fx, serve_floods(&fx), client_connects_and_idles(&fx));
    spec.cancel_after = Some(CANCEL_AFTER);
    spec.deadline = CANCEL_AFTER + CANCEL_BOUND;
    let run = run_pull_in_child(&spec).await;
    assert_child(&run, ChildExpect::ReturnsAfterCancel);
    assert_eq!(fx.stats.forwarded_connections.load(Ordering::SeqCst), 1);
    // The knob worked: borg serve's endless output got no further than the withheld window.
    let received = fx.stats.client_data_bytes.load(Ordering::Relaxed);
    assert!(received > 0 && received <= 4096, "{received} bytes got through");
}

// ---------------------------------------------------------------------------------------------
// 3. Oversized packets (transport level: channel data cannot be oversized with russh's server).
// ---------------------------------------------------------------------------------------------

/// A 1 MiB packet (SSH_MSG_DEBUG) is beyond what any peer may send (russh's client refuses
/// packets over 256 KiB + headroom): the connection ends with an error, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_ends_the_connection_with_an_error() {
    let fx = Fixture::start(Knobs {
        oversized_debug_packet: Some(1024 * 1024),
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull(&spec).await;
    eprintln!("{}", describe(&run));
    assert_ends_with_error(&run);
}

/// A 128 KiB packet: larger than the 32 KiB we advertise for channel data but within what the
/// transport accepts; for a non-channel message it is harmless (documents today's behaviour:
/// the pull succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_debug_packets_are_harmless() {
    let fx = Fixture::start(Knobs {
        oversized_debug_packet: Some(128 * 1024),
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull(&spec).await;
    assert!(
        matches!(&run.result, Some(Ok(o)) if o.exit.code() == 0),
        "{}",
        describe(&run)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Requests that are never answered.
// ---------------------------------------------------------------------------------------------

async fn hang_run(knobs: Knobs) -> PullRun {
    let fx = Fixture::start(knobs).await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    run_pull(&spec).await
}

/// Authentication is never answered. russh's client keepalive does not run before
/// authentication, and only the handshake has a timeout today: hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_never_answered_ends_with_an_error() {
    let run = hang_run(Knobs {
        never_answer_auth: true,
        ..Knobs::default()
    })
    .await;
    assert_ends_with_error(&run);
}

/// No session channel is ever confirmed (the connection stays alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_open_never_confirmed_ends_with_an_error() {
    let run = hang_run(Knobs {
        never_confirm_channel_open_from: Some(0),
        ..Knobs::default()
    })
    .await;
    assert_ends_with_error(&run);
}

/// The first session channel works, later ones are never confirmed (today: borg's own channel,
/// opened without a timeout: hangs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_channel_open_never_confirmed_ends_the_pull() {
    let run = hang_run(Knobs {
        never_confirm_channel_open_from: Some(1),
        ..Knobs::default()
    })
    .await;
    assert!(
        !run.hit_deadline,
        "the pull did not end by itself within {HANG_BOUND:?}: {}",
        describe(&run)
    );
}

/// No exec is ever answered (no reply, no output, no exit; the connection stays alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_never_answered_ends_with_an_error() {
    let run = hang_run(Knobs {
        never_answer_exec_from: Some(0),
        ..Knobs::default()
    })
    .await;
    assert_ends_with_error(&run);
}

/// The first exec works, later ones are never answered (today: borg's exec, relayed without a
/// deadline: hangs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_exec_never_answered_ends_the_pull() {
    let run = hang_run(Knobs {
        never_answer_exec_from: Some(1),
        ..Knobs::default()
    })
    .await;
    assert!(
        !run.hit_deadline,
        "the pull did not end by itself within {HANG_BOUND:?}: {}",
        describe(&run)
    );
}

/// The forward request is never answered; this freezes the sshd's connection (russh answers
/// global requests in order), so today only the keepalive (15 s x 4) ends it, after ~60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_never_answered_ends_with_an_error() {
    let run = hang_run(Knobs {
        never_answer_forward: true,
        ..Knobs::default()
    })
    .await;
    assert_ends_with_error(&run);
}

/// The sshd freezes mid-run (while borg talks to borg serve): nothing is read or sent any more.
/// Only keepalives can tell; with a 1 s interval the pull must end within seconds (regression:
/// passes today, ~5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_frozen_mid_run_is_detected_by_keepalive() {
    let fx = Fixture::start(Knobs {
        freeze_on_data: true,
        ..Knobs::default()
    })
    .await;
    let mut spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    spec.keepalive = Some(Duration::from_secs(1));
    spec.deadline = Duration::from_secs(30);
    let run = run_pull(&spec).await;
    assert!(fx.stats.frozen.load(Ordering::SeqCst), "{}", describe(&run));
    assert!(!run.hit_deadline, "not detected within 30 s: {}", describe(&run));
    assert!(
        matches!(run.result, Some(Err(Error::ConnectionLost { .. }))),
        "{}",
        describe(&run)
    );
}

/// Every exec runs, sends its output, exit status and EOF, but the sshd never closes its channel.
/// The pull must still end by itself within [`HANG_BOUND`] (with borg's exit code or an error):
/// waiting for the close is fine, waiting for it forever is not. Fails on main at 6c13034: the
/// single exec's channel is awaited until `max_runtime`/cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exiting_without_closing_ends_the_pull() {
    let run = hang_run(Knobs {
        exit_without_close_from: Some(0),
        ..Knobs::default()
    })
    .await;
    assert!(
        !run.hit_deadline,
        "the pull did not end by itself within {HANG_BOUND:?}: {}",
        describe(&run)
    );
}

/// The first exec is complete, later ones exit without their channel ever closing (before the
/// one-exec design: borg's, which exited 0 but was awaited forever; now a guard for any extra exec).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_exec_exiting_without_closing_ends_the_pull() {
    let run = hang_run(Knobs {
        exit_without_close_from: Some(1),
        ..Knobs::default()
    })
    .await;
    assert!(
        !run.hit_deadline,
        "the pull did not end by itself within {HANG_BOUND:?}: {}",
        describe(&run)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Channels we did not ask for.
// ---------------------------------------------------------------------------------------------

/// One channel of every kind is opened towards us mid-run: all refused, the pull goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_channels_are_refused_and_the_pull_continues() {
    let fx = Fixture::start(Knobs {
        open_unexpected_channels: true,
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(
        &fx,
        serve_pong(&fx),
        client_round_trip(&fx, Some("unexpected-done")),
    );
    let run = run_pull(&spec).await;
    assert!(
        matches!(&run.result, Some(Ok(o)) if o.exit.code() == 0),
        "{}",
        describe(&run)
    );
    assert_eq!(run.stdout.text(), "client got: pong ping\n");
    assert!(fx.stats.unexpected_done.load(Ordering::SeqCst));
    assert_eq!(fx.stats.unexpected_refused.load(Ordering::SeqCst), 7);
    assert_eq!(fx.stats.unexpected_accepted.load(Ordering::SeqCst), 0);
    assert_eq!(fx.stats.forwarded_connections.load(Ordering::SeqCst), 1);
}

/// Thousands of unexpected channel opens: the client must end the connection instead of refusing
/// (and logging) them forever. Today every one is refused and the pull succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unexpected_channels_ends_the_connection() {
    const FLOOD: usize = 10_000;
    let fx = Fixture::start(Knobs {
        unexpected_channel_flood: Some(FLOOD),
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(
        &fx,
        serve_pong(&fx),
        client_round_trip(&fx, Some("unexpected-done")),
    );
    let run = run_pull(&spec).await;
    let refused = fx.stats.unexpected_refused.load(Ordering::SeqCst);
    assert_eq!(fx.stats.unexpected_accepted.load(Ordering::SeqCst), 0);
    assert!(!run.hit_deadline, "{}", describe(&run));
    assert!(
        matches!(run.result, Some(Err(_))) && refused < FLOOD,
        "the client refused {refused} of {FLOOD} unexpected channel opens and went on: {}",
        describe(&run)
    );
}

/// The sshd opens 200 forwarded channels for our own socket and holds them open: at most
/// `MAX_FORWARDED_CONNECTIONS` are bridged (each with its own `borg serve`), the rest refused, and
/// the run still ends (regression: passes today; the drain waits 30 s for the held ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_channels_beyond_the_limit_are_refused() {
    const FLOOD: usize = 200;
    let max = borg_pull_tunnel::limits::MAX_FORWARDED_CONNECTIONS;
    let fx = Fixture::start(Knobs {
        forwarded_channel_flood: Some(FLOOD),
        ..Knobs::default()
    })
    .await;
    let pids = fx.dir().join("serve-pids");
    let serve = fx.script(
        "serve-counts",
        &format!("echo $$ >> '{}'; exec sleep 600", pids.display()),
    );
    let flag = fx.flag_path("forwarded-flood-done");
    let client = fx.script(
        "client-waits",
        &format!(
            "i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
            flag.display()
        ),
    );
    let spec = PullSpec::new(&fx, serve, client);
    let run = run_pull(&spec).await;
    let accepted = fx.stats.forwarded_flood_accepted.load(Ordering::SeqCst);
    let refused = fx.stats.forwarded_flood_refused.load(Ordering::SeqCst);
    let served = std::fs::read_to_string(&pids).unwrap_or_default().lines().count();
    assert!(!run.hit_deadline, "{}", describe(&run));
    assert!(
        accepted <= max && served <= max,
        "{accepted} accepted, {served} borg serve started (limit {max}): {}",
        describe(&run)
    );
    assert!(accepted + refused <= FLOOD);
}

// ---------------------------------------------------------------------------------------------
// 6. A refused forward is diagnosed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_forward_is_diagnosed() {
    let fx = Fixture::start(Knobs {
        refuse_forward: true,
        ..Knobs::default()
    })
    .await;
    let spec = PullSpec::new(&fx, serve_pong(&fx), client_round_trip(&fx, None));
    let run = run_pull(&spec).await;
    match &run.result {
        Some(Err(Error::ForwardDenied { path, cause, .. })) => {
            assert!(path.ends_with("/borg.sock"), "{path}");
            assert_eq!(*cause, ForwardDenial::Forbidden, "{}", describe(&run));
        }
        _ => panic!("expected ForwardDenied: {}", describe(&run)),
    }
    assert_eq!(fx.stats.forward_requests.lock().unwrap().len(), 1);
    // Clean-up still ran: the private directory is gone.
    assert_private_dir_removed(&fx).await;
}
