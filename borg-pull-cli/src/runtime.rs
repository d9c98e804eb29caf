//! The tokio runtime and the tracing subscriber, set up the same way for both binaries.
//!
//! Logs go to stderr only: the relay's stdout is borg's protocol stream, and `pull` streams borg's
//! own stdout (`extract --stdout`, `list`) through ours.

use std::io::{self, IsTerminal as _};

use tracing_subscriber::EnvFilter;

/// The one variable both binaries read for their log filter (tracing's `EnvFilter` syntax, e.g.
/// `BORG_PULL_LOG=debug` or `BORG_PULL_LOG=borg_pull_tunnel=trace`). It overrides `-v`.
/// RUST_LOG is not read: a variable meant for some other Rust program must not change ours.
pub const LOG_VAR: &str = "BORG_PULL_LOG";

/// The level used when [`LOG_VAR`] is unset: `quiet` for no `-v`, then debug, then trace.
pub fn default_level(quiet: &'static str, verbose: u8) -> &'static str {
    match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the stderr subscriber with [`LOG_VAR`] or else `default` as filter. An unusable
/// [`LOG_VAR`] is reported (on stderr) and replaced by `default` rather than silently ignored.
pub fn init_logging(default: &str) {
    init_logging_to(default, io::stderr);
}

/// [`init_logging`] writing each event to what `writer` makes (`borg-pull-server`: above `run`'s
/// live display while it is drawn); whether to colour still follows stderr.
pub fn init_logging_to<W>(default: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, bad) = match std::env::var(LOG_VAR) {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new(default), Some(format!("{spec:?}: {e}"))),
        },
        Err(_) => (EnvFilter::new(default), None),
    };
    // `[notify]`'s HTTP client (ureq) logs whole URLs, tokens included, at trace: never below info.
    let filter = ["ureq=info", "ureq_proto=info"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    if let Some(bad) = bad {
        tracing::warn!("ignoring {LOG_VAR}={bad}; logging at {default}");
    }
}

/// Runs `future` to completion on a fresh multi-threaded runtime (`borg-pull-server`; the relay
/// needs none: it relays with one blocking poll thread).
///
/// Everything that matters (borg serve children, forwards, clean-up) is awaited inside `future`.
/// What may be left are blocking std I/O tasks (a read of our stdin), which cannot be cancelled and
/// would hang a waiting shutdown, so the runtime is dropped without waiting for them.
pub fn block_on<F: std::future::Future>(future: F) -> io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    Ok(output)
}
