//! Fuzzing on the stable toolchain (proptest, no cargo-fuzz), shared by the core's `BORG_RSH`
//! parser fuzzing and the tunnel's known_hosts fuzzing.
//!
//! Environment:
//!
//! - `BORG_PULL_FUZZ_CASES=N`: cases per target (per batch in long mode).
//! - `BORG_PULL_FUZZ_SECS=S`: long mode, every target runs batches until S seconds are up and
//!   prints the number of cases it ran (use `--nocapture`).
//! - `BORG_PULL_FUZZ_CASE_SECS=S`: one input taking longer than this fails (default 10), and an
//!   input still running after 12 times that aborts the process after printing it (a hang).
//!
//! Failing seeds are kept by proptest in `<regressions>/<target>.seeds` and replayed first; the
//! caller's `save` can also keep the failing input itself with [`Fuzzer::save_regression`].

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Cases per target in a normal `cargo test`: a few hundred over all targets, enough for CI.
const DEFAULT_CASES: u32 = 128;

/// The input being tested right now, for the hang watchdog.
type Current<T> = Arc<Mutex<Option<(Instant, T)>>>;

/// The fuzz targets of one crate, with the directory keeping their failing inputs.
pub struct Fuzzer {
    regressions: PathBuf,
}

impl Fuzzer {
    /// Targets whose failures are kept in `regressions` (the crate's `tests/fuzz-regressions`).
    pub fn new(regressions: impl Into<PathBuf>) -> Self {
        Self {
            regressions: regressions.into(),
        }
    }

    /// Where failing inputs are kept.
    pub fn regressions(&self) -> &Path {
        &self.regressions
    }

    /// Runs `test` on inputs from `strategy`: `BORG_PULL_FUZZ_CASES` of them, or batches of them
    /// until `BORG_PULL_FUZZ_SECS` are up. `save` is called with the minimal failing input (to
    /// keep it as a regression file) before the failure is reported.
    pub fn run<S>(
        &self,
        target: &str,
        strategy: S,
        save: impl Fn(&S::Value),
        test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    ) where
        S: Strategy,
        S::Value: Clone + Debug + Send + 'static,
    {
        let cases =
            env_u64("BORG_PULL_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n.clamp(1, u32::MAX.into()) as u32);
        let secs = env_u64("BORG_PULL_FUZZ_SECS");
        let case_limit = Duration::from_secs(env_u64("BORG_PULL_FUZZ_CASE_SECS").unwrap_or(10));
        let current: Current<S::Value> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (current, stop, target) = (current.clone(), stop.clone(), target.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let guard = current.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((since, input)) = &*guard {
                        if since.elapsed() > case_limit * 12 {
                            eprintln!(
                                "fuzz {target}: HANG, input running for {:?}: {input:?}",
                                since.elapsed()
                            );
                            std::process::abort();
                        }
                    }
                }
            })
        };
        let persistence: &'static str =
            Box::leak(format!("{}/{target}.seeds", self.regressions.display()).into_boxed_str());
        let started = Instant::now();
        let deadline = secs.map(|s| started + Duration::from_secs(s));
        let total = std::cell::Cell::new(0u64);
        let result = loop {
            let mut config = Config::with_cases(cases);
            config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(persistence)));
            config.max_shrink_iters = 20_000;
            let mut runner = TestRunner::new(config);
            let result = runner.run(&strategy, |input| {
                *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), input.clone()));
                let start = Instant::now();
                let result = test(input);
                *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                total.set(total.get() + 1);
                let took = start.elapsed();
                if took > case_limit {
                    return Err(TestCaseError::fail(format!(
                        "took {took:?} (limit {case_limit:?})"
                    )));
                }
                result
            });
            if result.is_err() || deadline.is_none_or(|d| Instant::now() >= d) {
                break result;
            }
        };
        stop.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        eprintln!(
            "fuzz {target}: {} cases in {:.1} s{}",
            total.get(),
            started.elapsed().as_secs_f64(),
            if result.is_ok() { ", no failure" } else { "" }
        );
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                save(&input);
                panic!("fuzz {target}: {why}\nminimal failing input: {input:?}");
            }
            Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
        }
    }

    /// Writes `bytes` to `<regressions>/<dir>/found-<hash>` (named by a hash of the content).
    pub fn save_regression(&self, dir: &str, bytes: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let dir = self.regressions.join(dir);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("found-{:016x}", h.finish()));
        match std::fs::write(&path, bytes) {
            Ok(()) => eprintln!("kept the failing input as {path:?}"),
            Err(e) => eprintln!("could not keep the failing input as {path:?}: {e}"),
        }
    }
}

/// The number in environment variable `name`, if set; panics naming it when it is not a number.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}
