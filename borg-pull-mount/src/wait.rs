//! Waiting on this side for a condition (a thread ended, a mount appeared), always bounded.

/// Polls `done` until it holds or `deadline` has passed (bounded: one poll per 10 ms).
pub(crate) fn wait_until(deadline: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let step = std::time::Duration::from_millis(10);
    let started = std::time::Instant::now();
    for _ in 0..=deadline.as_millis() / step.as_millis() {
        if done() {
            return true;
        }
        if started.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(step);
    }
    done()
}
