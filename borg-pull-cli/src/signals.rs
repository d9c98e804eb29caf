//! The one signal handler of both binaries: the first SIGINT or SIGTERM asks for a clean stop, the
//! second for an immediate one.

use std::io;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and by the second SIGINT/SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled by the first signal: stop accepting work, let running work finish, clean up.
    pub graceful: CancellationToken,
    /// Cancelled by the second signal: stop now. Someone who runs long clean-up must watch it.
    pub forced: CancellationToken,
}

/// What the log says when each signal arrives (after "SIGINT received; ").
#[derive(Debug, Clone, Copy)]
pub struct Messages {
    /// After the first signal, e.g. "shutting down (again to stop running sessions now)".
    pub first: &'static str,
    /// After the second signal.
    pub second: &'static str,
}

/// Installs the SIGINT and SIGTERM handlers (inside a tokio runtime) and returns the tokens they
/// cancel. Install before anything that a signal should stop exists, so a signal is never fatal.
pub fn install(messages: Messages) -> io::Result<Shutdown> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = Shutdown::default();
    let tokens = shutdown.clone();
    tokio::spawn(async move {
        for (token, what) in [
            (tokens.graceful, messages.first),
            (tokens.forced, messages.second),
        ] {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!("{name} received; {what}");
            token.cancel();
        }
    });
    Ok(shutdown)
}

/// On the second signal, exits the process at once with [`crate::exit::INTERRUPTED`], for callers
/// whose clean-up cannot be cut short any other way (a library call that only takes one token).
pub fn exit_on_forced(shutdown: &Shutdown) {
    let forced = shutdown.forced.clone();
    tokio::spawn(async move {
        forced.cancelled().await;
        // No flush of stdout: a reader that stalls would hold its lock and keep us here.
        eprintln!("borg-pull-server: interrupted twice; exiting without waiting for clean-up");
        std::process::exit(i32::from(crate::exit::INTERRUPTED.code));
    });
}

/// For a job whose library call takes one cancellation token (pull, restore-tar): the handlers
/// installed ([`install`]) and a second signal exiting at once ([`exit_on_forced`]); the token to
/// hand the job is [`Shutdown::graceful`].
pub fn install_for_one_job(messages: Messages) -> Result<Shutdown, borg_pull_tunnel::Error> {
    let shutdown = install(messages).map_err(|source| borg_pull_tunnel::Error::Io {
        context: "cannot install signal handlers".into(),
        source,
    })?;
    exit_on_forced(&shutdown);
    Ok(shutdown)
}
