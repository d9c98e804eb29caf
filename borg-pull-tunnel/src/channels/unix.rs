//! The UNIX socket forward on the client and the bridge from each forwarded channel to `borg serve`.
//!
//! We ask the client's sshd to listen on a socket in a private directory
//! (`streamlocal-forward@openssh.com`); every connection borg's `BORG_RSH` relay makes to it arrives
//! here as a `forwarded-streamlocal@openssh.com` channel and is handed to the run's
//! [`Supervisor`], which runs one `borg serve` per channel in a task that always reads the channel
//! to its end (an unread channel would stall the whole connection) and kills and reaps `borg serve`
//! when the channel ends or the run stops.
//!
//! If this process dies without running any of that (SIGKILL, OOM), the kernel closes our ends of
//! `borg serve`'s pipes: it reads EOF, rolls back the unfinished transaction, releases the
//! repository lock and exits (tested). The client's sshd sees the TCP connection close and ends the
//! session, so borg create loses its relay and exits, and the run's watcher on the client removes
//! the private directory ([`crate::jobs::pull::script`]). `PR_SET_PDEATHSIG` on `borg serve` (in
//! borg-pull-core) would add a hard kill for a `borg serve` stuck in a write; not needed so far.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use borg_pull_core::serve::ServeConfig;
use borg_pull_core::supervise::{LimitPolicy, Supervisor, SupervisorLimits};
use russh::ChannelOpenFailure;
use tracing::debug;

use crate::channels::{Forward, ForwardStats};
use crate::error::ForwardDenial;
use crate::limits::{
    MAX_FORWARDED_CONNECTIONS, MAX_FORWARDED_CONNECTIONS_TOTAL, MAX_SOCKET_PATH, REMOTE_HELPER_TIMEOUT,
};
use crate::ssh::exec::shell_quote;
use crate::ssh::incoming::{Decision, Incoming};
use crate::ssh::session::Session;
use crate::{Error, Result};

/// Accepts forwarded connections to our one socket and hands each to the run's `borg serve`
/// [`Supervisor`]: at most [`MAX_FORWARDED_CONNECTIONS`] at once (more are refused, never queued:
/// the client must not be able to make the server wait on its behalf) and
/// [`MAX_FORWARDED_CONNECTIONS_TOTAL`] per run.
pub struct UnixForward {
    supervisor: Supervisor,
    expected: Mutex<Option<String>>,
}

impl UnixForward {
    /// A forwarder that runs `borg serve` as `serve` says.
    pub fn new(serve: ServeConfig) -> Arc<Self> {
        let limits = SupervisorLimits {
            max_active: MAX_FORWARDED_CONNECTIONS,
            max_total: Some(MAX_FORWARDED_CONNECTIONS_TOTAL),
            policy: LimitPolicy::Refuse,
        };
        Arc::new(Self {
            supervisor: Supervisor::new(serve, limits),
            expected: Mutex::new(None),
        })
    }

    /// Accept channels for this socket path only (set before requesting the forward).
    fn expect(&self, socket_path: &str) {
        *self.expected.lock().expect("not poisoned") = Some(socket_path.to_owned());
    }

    /// Starts the next connection's `borg serve` ahead of it ([`Supervisor::prestart`]).
    pub fn prestart(&self) {
        self.supervisor.prestart();
    }

    /// Asks the client's sshd to listen on `socket_path` (accepting channels for it only); on
    /// refusal, finds out why.
    pub async fn listen(&self, session: &Session, socket_path: &str) -> Result<()> {
        self.expect(socket_path);
        match session.streamlocal_forward(socket_path).await {
            Ok(()) => {
                debug!(socket_path, "forward listening");
                Ok(())
            }
            Err(Error::RequestDenied { peer, .. }) => Err(Error::ForwardDenied {
                peer,
                path: socket_path.to_owned(),
                cause: diagnose(session, socket_path).await,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Each bridge's `borg serve` is killed and reaped when it is stopped.
impl Forward for UnixForward {
    fn stats(&self) -> ForwardStats {
        self.supervisor.stats()
    }

    async fn drain(&self, grace: Duration) -> ForwardStats {
        self.supervisor.drain(grace).await
    }

    async fn stop(&self) -> ForwardStats {
        self.supervisor.stop().await
    }
}

impl Incoming for UnixForward {
    fn forwarded_streamlocal(&self, socket_path: &str) -> Decision {
        let expected = self.expected.lock().expect("not poisoned").clone();
        if expected.as_deref() != Some(socket_path) {
            debug!(
                socket_path,
                "refusing a forwarded connection for a socket we did not ask for"
            );
            return Decision::prohibited();
        }
        match self.supervisor.try_admit() {
            Ok(admission) => {
                let span = tracing::info_span!("forward", connection = self.supervisor.stats().accepted + 1);
                Decision::Accept(Box::new(move |channel| {
                    admission.spawn(channel.into_stream(), span)
                }))
            }
            Err(refusal) => Decision::Refuse(ChannelOpenFailure::ResourceShortage, refusal.to_string()),
        }
    }
}

/// Looks at the client to explain a refused forward.
async fn diagnose(session: &Session, socket_path: &str) -> ForwardDenial {
    if socket_path.len() > MAX_SOCKET_PATH {
        return ForwardDenial::PathTooLong;
    }
    let Some((dir, _)) = socket_path.rsplit_once('/') else {
        return ForwardDenial::Unknown(format!("{socket_path:?} is not absolute"));
    };
    let (Ok(qdir), Ok(qsock)) = (shell_quote(dir.as_bytes()), shell_quote(socket_path.as_bytes())) else {
        return ForwardDenial::Unknown("path contains NUL".into());
    };
    let (qdir, qsock) = (String::from_utf8_lossy(&qdir), String::from_utf8_lossy(&qsock));
    let script = format!(
        "if [ ! -d {qdir} ]; then echo nodir; elif [ -e {qsock} ] || [ -L {qsock} ]; then echo stale; \
         elif [ ! -w {qdir} ] || [ ! -x {qdir} ]; then echo notwritable; else echo ok; fi"
    );
    match session.capture(&script, REMOTE_HELPER_TIMEOUT).await {
        Ok(out) => match String::from_utf8_lossy(&out.stdout).trim() {
            "ok" => ForwardDenial::Forbidden,
            "nodir" => ForwardDenial::NoDirectory,
            "stale" => ForwardDenial::StaleSocket,
            "notwritable" => ForwardDenial::NotWritable,
            _ => ForwardDenial::Unknown(out.output_text()),
        },
        Err(e) => ForwardDenial::Unknown(format!("could not look at the client: {e}")),
    }
}
