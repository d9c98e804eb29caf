//! The stream of a restore, as two small state machines in the style of tokio's
//! `copy_bidirectional`, each an enum and a cancel-safe `next`:
//!
//! - [`Export`]: borg export-tar's side. Its stdout goes into the channel ([`Sending`]; each write
//!   awaits the client's window, so the archive is never buffered here), and borg itself is
//!   followed until reaped ([`Borg`]: running, given a grace, SIGTERMed, SIGKILLed, exited).
//! - [`TarReplies`]: tar's side. What the channel brings back ([`Tar`]): tar's output (relayed,
//!   its last line kept), its exit, the close (or our hang-up once the exit came and the client's
//!   sshd does not close).
//!
//! [`run`] drives both with the deadline, cancellation and the heartbeats, and applies the one rule
//! that joins them: tar gone (exited, channel closed, or taking no more) before borg's output was
//! all sent means borg is stopped instead of streaming the rest; after tar's 0 it read the
//! end-of-archive marker and all borg may still send is padding, so borg gets
//! [`BORG_STOP_GRACE`] to finish by itself first.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::child::BorgChild;
use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{escape_keeping_lines, LastLine, Stop};
use crate::limits::{BORG_STOP_GRACE, EXIT_CLOSE_GRACE, RESTORE_READ_BUFFER};
use crate::ssh::exec::{signal_name, RemoteExit};
use crate::{Error, Result};

/// How the stream ended.
#[derive(Debug)]
pub(super) enum Streamed {
    /// borg was reaped and the channel closed.
    Both {
        /// borg export-tar's status.
        borg: ExitStatus,
        /// We stopped borg because tar was gone before it had sent everything.
        borg_stopped: bool,
        /// tar's exit, if the client sent it.
        tar: Option<RemoteExit>,
        /// tar's last line of output, escaped.
        tar_said: Option<String>,
        /// Bytes of the archive sent.
        bytes: u64,
    },
    /// We cut it off; borg is stopped and reaped, tar got SIGINT and its channel is closed.
    CutOff(Stop),
}

/// Streams borg's stdout into tar until both have ended, or until `cancel`, `deadline` or the
/// client's refusal cuts it off. tar's output goes to `stderr`, escaped.
pub(super) async fn run<E: AsyncWrite + Unpin>(
    borg: &mut BorgChild,
    channel: Channel<Msg>,
    stderr: &mut E,
    deadline: Instant,
    cancel: &CancellationToken,
    beats: impl Future<Output = Infallible>,
) -> Result<Streamed> {
    let mut beats = std::pin::pin!(beats);
    let mut export = Export::new(borg, &channel);
    let mut tar = TarReplies::new(channel, stderr);
    let stop = loop {
        if tar.closed() && export.exited() {
            break None;
        }
        tokio::select! {
            r = export.next() => r?,
            r = tar.next() => if let Err(stop) = r {
                break Some(stop);
            },
            () = cancel.cancelled() => break Some(Stop::Cancelled),
            () = tokio::time::sleep_until(deadline) => break Some(Stop::Deadline),
            never = &mut beats => match never {},
        }
        if tar.gone() || export.refused_by_channel() {
            export.tar_gone(tar.grace_for_borg());
        }
    };
    let bytes = export.sent.load(Ordering::Relaxed);
    let (borg_status, borg_stopped) = export.finish();
    if let Some(stop) = stop {
        if let Err(e) = borg.stop(BORG_STOP_GRACE).await {
            debug!("cannot wait for borg export-tar: {e}");
        }
        let channel = tar.channel;
        let _ = channel.signal(Sig::INT).await;
        let _ = channel.close().await;
        return Ok(Streamed::CutOff(stop));
    }
    if let Some(out) = tar.stderr {
        let _ = out.flush().await;
    }
    Ok(Streamed::Both {
        borg: borg_status.expect("the loop ends once borg has exited"),
        borg_stopped,
        tar: tar.state.exit().cloned(),
        tar_said: tar.said.get(),
        bytes,
    })
}

/// The copy of borg's stdout into the channel.
enum Sending {
    /// Copying; each write awaits the client's window.
    Copying(Pin<Box<dyn Future<Output = io::Result<()>> + Send>>),
    /// All of borg's output was sent, then EOF: tar sees the end of its input.
    AllSent,
    /// The channel took no more: tar is gone.
    Refused,
    /// Dropped by us: tar is gone, and borg has exited or is being stopped.
    Abandoned,
}

impl Sending {
    /// Waits until the copy ends (pending when it is not copying). Cancel-safe: the copy lives in
    /// the state.
    async fn next(&mut self) {
        let Sending::Copying(copy) = self else {
            return std::future::pending().await;
        };
        *self = match copy.as_mut().await {
            Ok(()) => Sending::AllSent,
            Err(e) => {
                debug!("sending the archive to tar stopped: {e}");
                Sending::Refused
            }
        };
    }
}

/// borg export-tar, the process.
#[derive(Debug, Clone, Copy)]
enum Borg {
    /// Running and sending.
    Running,
    /// tar is gone before everything was sent: borg may still end by itself until then.
    StopAt(Instant),
    /// SIGTERM sent (it releases the repository lock); SIGKILL at `kill_at`.
    Terminated { kill_at: Instant },
    /// SIGKILL sent; to be reaped.
    Killed,
    /// Reaped; `stopped`: after our SIGTERM.
    Exited { status: ExitStatus, stopped: bool },
}

impl Borg {
    /// Waits for the next change: borg's exit or a timer of ours (pending once it has exited).
    /// Cancel-safe: waiting for a child is, and the timers are in the state.
    async fn next(&mut self, child: &mut BorgChild) -> Result<()> {
        let wait_failed = |source| Error::Io {
            context: "cannot wait for borg export-tar".into(),
            source,
        };
        *self = match *self {
            Borg::Running => Borg::Exited {
                status: child.wait().await.map_err(wait_failed)?,
                stopped: false,
            },
            Borg::StopAt(at) => tokio::select! {
                status = child.wait() => Borg::Exited { status: status.map_err(wait_failed)?, stopped: false },
                () = tokio::time::sleep_until(at) => {
                    debug!(pid = child.id(), "stopping borg export-tar");
                    child.terminate();
                    Borg::Terminated { kill_at: Instant::now() + BORG_STOP_GRACE }
                }
            },
            Borg::Terminated { kill_at } => tokio::select! {
                status = child.wait() => Borg::Exited { status: status.map_err(wait_failed)?, stopped: true },
                () = tokio::time::sleep_until(kill_at) => {
                    warn!(pid = child.id(), "borg export-tar did not exit after SIGTERM; killing it");
                    child.kill();
                    Borg::Killed
                }
            },
            Borg::Killed => Borg::Exited {
                status: child.wait().await.map_err(wait_failed)?,
                stopped: true,
            },
            Borg::Exited { .. } => return std::future::pending().await,
        };
        Ok(())
    }
}

/// borg export-tar's side of the stream.
struct Export<'a> {
    child: &'a mut BorgChild,
    sending: Sending,
    borg: Borg,
    sent: Arc<AtomicU64>,
}

impl<'a> Export<'a> {
    fn new(child: &'a mut BorgChild, channel: &Channel<Msg>) -> Self {
        let stdout = child.take_stdout().expect("stdout is piped");
        let sent = Arc::new(AtomicU64::new(0));
        let copy = Box::pin(send(stdout, channel.make_writer(), sent.clone()));
        Self {
            child,
            sending: Sending::Copying(copy),
            borg: Borg::Running,
            sent,
        }
    }

    /// Takes the next change on borg's side.
    async fn next(&mut self) -> Result<()> {
        let Export {
            child, sending, borg, ..
        } = self;
        tokio::select! {
            () = sending.next() => {}
            r = borg.next(child) => {
                r?;
                // Once borg is being stopped, nothing more of its output is sent.
                if matches!(borg, Borg::Terminated { .. }) && matches!(sending, Sending::Copying(_)) {
                    *sending = Sending::Abandoned;
                }
            }
        }
        Ok(())
    }

    fn exited(&self) -> bool {
        matches!(self.borg, Borg::Exited { .. })
    }

    fn refused_by_channel(&self) -> bool {
        matches!(self.sending, Sending::Refused)
    }

    /// tar is gone: unless everything was sent, borg stops, after `grace`, or its copy is dropped
    /// if it has exited already.
    fn tar_gone(&mut self, grace: Duration) {
        match (&self.sending, self.borg) {
            (Sending::AllSent, _) => {}
            (Sending::Copying(_), Borg::Exited { .. }) => self.sending = Sending::Abandoned,
            (_, Borg::Running) => self.borg = Borg::StopAt(Instant::now() + grace),
            _ => {}
        }
    }

    /// borg's status and whether we stopped it (`None` if it has not been reaped); drops the copy.
    fn finish(self) -> (Option<ExitStatus>, bool) {
        match self.borg {
            Borg::Exited { status, stopped } => (Some(status), stopped),
            _ => (None, false),
        }
    }
}

/// Copies borg's stdout to the channel (each write awaits the client's window), counting bytes
/// in `sent`, then sends EOF.
async fn send(
    mut stdout: impl tokio::io::AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    sent: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut buf = vec![0u8; RESTORE_READ_BUFFER];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).await?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    writer.flush().await?;
    // russh's writer sends EOF on shutdown: tar sees the end of its input.
    writer.shutdown().await
}

/// tar on the client, as its channel tells.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tar {
    /// Running; its output is relayed as it comes.
    Running,
    /// It exited; the client's sshd closes the channel soon, or we hang up at `hang_up_at`.
    Exited { exit: RemoteExit, hang_up_at: Instant },
    /// The channel is closed, with tar's exit if it came.
    Closed { exit: Option<RemoteExit> },
}

impl Tar {
    fn exit(&self) -> Option<&RemoteExit> {
        match self {
            Tar::Running | Tar::Closed { exit: None } => None,
            Tar::Exited { exit, .. } | Tar::Closed { exit: Some(exit) } => Some(exit),
        }
    }

    /// Its exit came: the first one starts the hang-up timer, a later one only replaces it.
    fn exited(&mut self, exit: RemoteExit) {
        *self = match self {
            Tar::Running => Tar::Exited {
                exit,
                hang_up_at: Instant::now() + EXIT_CLOSE_GRACE,
            },
            Tar::Exited { hang_up_at, .. } => Tar::Exited {
                exit,
                hang_up_at: *hang_up_at,
            },
            Tar::Closed { .. } => Tar::Closed { exit: Some(exit) },
        };
    }
}

/// tar's side of the stream: what comes back on the channel until it closes.
struct TarReplies<'e, E> {
    channel: Channel<Msg>,
    state: Tar,
    /// tar's last line, bounded.
    said: LastLine,
    /// Where tar's output is relayed; `None` once it took no more.
    stderr: Option<&'e mut E>,
}

impl<'e, E: AsyncWrite + Unpin> TarReplies<'e, E> {
    fn new(channel: Channel<Msg>, stderr: &'e mut E) -> Self {
        Self {
            channel,
            state: Tar::Running,
            said: LastLine::default(),
            stderr: Some(stderr),
        }
    }

    fn closed(&self) -> bool {
        matches!(self.state, Tar::Closed { .. })
    }

    /// tar takes no more input: it exited or its channel closed.
    fn gone(&self) -> bool {
        !matches!(self.state, Tar::Running)
    }

    /// How long borg may go on by itself once tar is gone: after tar's 0 only padding is left.
    fn grace_for_borg(&self) -> Duration {
        match self.state.exit() {
            Some(RemoteExit::Status(0)) => BORG_STOP_GRACE,
            _ => Duration::ZERO,
        }
    }

    /// Takes the next message (or hangs up after tar's exit); pending once the channel is closed.
    /// Cancel-safe: receiving from the channel is, and the timer is in the state.
    async fn next(&mut self) -> std::result::Result<(), Stop> {
        let hang_up_at = match &self.state {
            Tar::Closed { .. } => return std::future::pending().await,
            Tar::Running => None,
            Tar::Exited { hang_up_at, .. } => Some(*hang_up_at),
        };
        let hang_up = async {
            match hang_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = self.channel.wait() => self.take(msg).await,
            () = hang_up => {
                debug!("tar's channel is still open after its exit status; closing it");
                let _ = self.channel.close().await;
                self.state = Tar::Closed { exit: self.state.exit().cloned() };
                Ok(())
            }
        }
    }

    async fn take(&mut self, msg: Option<ChannelMsg>) -> std::result::Result<(), Stop> {
        match msg {
            None | Some(ChannelMsg::Close) => {
                self.state = Tar::Closed {
                    exit: self.state.exit().cloned(),
                };
            }
            Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                self.said.push(&data);
                if let Some(out) = self.stderr.as_mut() {
                    if out
                        .write_all(escape_keeping_lines(&data).as_bytes())
                        .await
                        .is_err()
                    {
                        self.stderr = None;
                    }
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                self.state.exited(RemoteExit::Status(exit_status));
            }
            Some(ChannelMsg::ExitSignal { signal_name: sig, .. }) => {
                self.state.exited(RemoteExit::Signal(signal_name(&sig)))
            }
            // sshd refused the exec request.
            Some(ChannelMsg::Failure) => return Err(Stop::Refused),
            Some(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_keeps_its_first_hang_up_time_and_its_last_exit() {
        let mut tar = Tar::Running;
        tar.exited(RemoteExit::Status(0));
        let Tar::Exited { hang_up_at, .. } = tar.clone() else {
            panic!("{tar:?}")
        };
        tar.exited(RemoteExit::Signal("TERM".into()));
        assert_eq!(
            tar,
            Tar::Exited {
                exit: RemoteExit::Signal("TERM".into()),
                hang_up_at
            }
        );
        let mut closed = Tar::Closed { exit: None };
        closed.exited(RemoteExit::Status(2));
        assert_eq!(closed.exit(), Some(&RemoteExit::Status(2)));
    }
}
