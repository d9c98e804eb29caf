//! `restore-tar --via sftp`: a restore to a client that has only SFTP (no shell, no tar, no
//! borg): borg export-tar runs here and its entries are written on the client with SFTP requests.
//!
//! 1. Connect as for every job; open the client's `sftp` subsystem on that session and start
//!    the SFTP client on it. Nothing runs on the client: a key limited to `internal-sftp` (read
//!    and write) is enough.
//! 2. Check the directory ([`RestoreOptions::remote_dir`]): it exists, is a directory, and takes
//!    a new file (a probe file, created exclusively and removed); the probe's owner tells whether
//!    we are root there (then the archive's owners are set). A missing or read-only directory
//!    fails here, before borg reads anything ([`Error::RemoteDirUnusable`], as for the tar way).
//! 3. `borg export-tar -- REPO::NAME - [PATH...]` runs here as a [`borg_pull_core::child`] (the
//!    passphrase in its environment), the same command as the tar way's.
//! 4. Its stdout is read one entry at a time ([`tar_reader`], bounded memory) and each entry is
//!    written under the directory ([`writer`]): unsafe names refused ([`names`]), symlinks last.
//! 5. End of archive: borg is let finish (what it sends after the end is bounded); a failure of
//!    ours stops it (SIGTERM, then SIGKILL).
//!
//! Deadlines: each SFTP request has the client crate's deadline (a stalled client ends the run
//! as misbehaving); [`RestoreOptions::max_runtime`] bounds the whole stream; cancelling stops
//! borg and closes the SFTP session.
//!
//! What SFTP cannot restore: ACLs, xattrs, BSD flags, devices and FIFOs (skipped and reported),
//! symlinks' own times and owners, sub-second times.

mod names;
mod tar_reader;
mod writer;

use std::sync::Arc;

use borg_pull_core::child::{exit_code, BorgChild};
use borg_pull_sftp::{Attrs, Client, OpenFlags};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument as _};

pub use borg_pull_sftp::{Client as SftpClient, Error as SftpError, Limits as SftpLimits};
pub use writer::{Fatal, Owners, Written};

use crate::jobs::restore_tar::RestoreOptions;
use crate::limits::{BORG_STOP_GRACE, CLEANUP_TIMEOUT, SFTP_RESTORE_CHUNK_MAX, SFTP_RESTORE_TRAILER_MAX};
use crate::ssh::incoming::RefuseAll;
use crate::ssh::session::{self, Session};
use crate::{Error, Result};
use names::Target;
use tar_reader::{TarError, TarReader};
use writer::Writer;

/// How a restore over SFTP ended, once borg ran and its stream was read to its end (or borg
/// failed); [`SftpRestoreOutcome::verdict`] and [`SftpRestoreOutcome::summary`] say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpRestoreOutcome {
    /// borg export-tar's exit code (128+N if killed by signal N).
    pub borg_rc: i32,
    /// borg's last line on stderr, escaped.
    pub borg_said: Option<String>,
    /// What was written, refused, failed and skipped.
    pub written: Written,
}

/// The one verdict of a restore over SFTP, worst first; the CLI gives each its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// borg export-tar failed (exit code 2 or more): its code.
    BorgFailed(i32),
    /// Entries with unsafe names were refused; the rest was restored.
    UnsafeNames,
    /// The client refused to write some entries; the rest was restored.
    WritesRefused,
    /// borg warned, or entries SFTP cannot create (devices, FIFOs) were skipped.
    Warning,
    /// Everything was restored.
    Restored,
}

impl SftpRestoreOutcome {
    /// The worst thing that happened.
    pub fn verdict(&self) -> Verdict {
        let w = &self.written;
        if self.borg_rc >= 2 {
            Verdict::BorgFailed(self.borg_rc)
        } else if w.refused > 0 {
            Verdict::UnsafeNames
        } else if w.failed > 0 {
            Verdict::WritesRefused
        } else if self.borg_rc == 1 || w.skipped > 0 {
            Verdict::Warning
        } else {
            Verdict::Restored
        }
    }

    /// One line: borg's code and the counts.
    pub fn summary(&self) -> String {
        let w = &self.written;
        let said = self
            .borg_said
            .as_ref()
            .filter(|_| self.borg_rc != 0)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!(
            "borg export-tar exited {}{said}; over sftp: {} entries restored ({} bytes of file data), \
             {} refused (unsafe names), {} not written (refused by the client), {} skipped (not \
             possible over SFTP)",
            self.borg_rc, w.entries, w.bytes, w.refused, w.failed, w.skipped
        )
    }
}

/// Restores `options.archive` into `options.remote_dir` on the client over SFTP; borg's stderr
/// goes to ours. `Ok` whenever borg ran and its stream was read: the outcome says how it went.
pub async fn restore_sftp(options: RestoreOptions) -> Result<SftpRestoreOutcome> {
    let span = tracing::info_span!("restore", client = %options.session.host, port = options.session.port, via = "sftp");
    async move {
        let borg = options.check()?;
        if options.remote_tar != "tar" {
            return Err(Error::InvalidOption(
                "--remote-tar cannot be used with --via sftp: no tar runs on the client".into(),
            ));
        }
        let session = tokio::select! {
            s = session::connect(&options.session, Arc::new(RefuseAll)) => s?,
            () = options.cancel.cancelled() => return Err(Error::Interrupted),
        };
        let result = on_session(&options, &borg, &session).await;
        session.disconnect_within(CLEANUP_TIMEOUT).await;
        let outcome = result?;
        info!(
            borg_rc = outcome.borg_rc,
            entries = outcome.written.entries,
            bytes = outcome.written.bytes,
            refused = outcome.written.refused,
            failed = outcome.written.failed,
            skipped = outcome.written.skipped,
            "restore finished"
        );
        Ok(outcome)
    }
    .instrument(span)
    .await
}

async fn on_session(
    options: &RestoreOptions,
    borg: &std::path::Path,
    session: &Session,
) -> Result<SftpRestoreOutcome> {
    let deadline = Instant::now() + options.max_runtime;
    let max_runtime = || Error::SftpRestoreMaxRuntime {
        peer: session.peer(),
        secs: options.max_runtime.as_secs(),
    };
    let prepared = tokio::select! {
        r = prepare(options, session) => r,
        () = options.cancel.cancelled() => Err(Error::Interrupted),
        () = tokio::time::sleep_until(deadline) => Err(max_runtime()),
    };
    // On an error the client is dropped: its tasks end and the channel closes.
    let (client, target, owners) = prepared?;
    debug!(?owners, borg = %borg.display(), "the directory takes files; starting borg export-tar");
    let mut child =
        options
            .borg_command(borg)
            .spawn()
            .map_err(|source| borg_pull_core::Error::SpawnBorg {
                program: borg.to_owned(),
                source,
            })?;
    let stdout = child.take_stdout().expect("borg's stdout is piped");
    let streamed = tokio::select! {
        r = write_archive(&client, stdout, target.dir(), owners) => Ok(r),
        () = options.cancel.cancelled() => Err(Error::Interrupted),
        () = tokio::time::sleep_until(deadline) => Err(max_runtime()),
    };
    let result = match streamed {
        Ok((written, ended)) => finish(&mut child, written, ended, session).await,
        Err(e) => {
            // borg's stdout went with the writer: it stops at its next write, or at SIGTERM.
            if let Err(wait) = child.stop(BORG_STOP_GRACE).await {
                debug!("cannot wait for borg export-tar: {wait}");
            }
            Err(e)
        }
    };
    if tokio::time::timeout(CLEANUP_TIMEOUT, client.shutdown())
        .await
        .is_err()
    {
        debug!("the SFTP session did not end in time");
    }
    result
}

/// Steps 1 and 2: the SFTP session, the directory checked.
async fn prepare(options: &RestoreOptions, session: &Session) -> Result<(Client, Target, Owners)> {
    let stream = match session.open_subsystem("sftp").await {
        Err(Error::RequestDenied { peer, .. }) => return Err(Error::SftpRestoreSubsystemRefused { peer }),
        other => other?,
    };
    let client = Client::start(stream, borg_pull_sftp::Limits::default())
        .await
        .map_err(|source| Error::SftpRestore {
            peer: session.peer(),
            source,
        })?;
    let target = Target::new(options.remote_dir.as_encoded_bytes());
    match check_dir(&client, &target).await {
        Ok(owners) => Ok((client, target, owners)),
        Err(DirProblem::Unusable(why)) => Err(Error::RemoteDirUnusable {
            dir: options.remote_dir.to_string_lossy().into_owned(),
            peer: session.peer(),
            why,
            purpose: crate::error::RemoteDirUse::Restore,
        }),
        Err(DirProblem::Sftp(source)) => Err(Error::SftpRestore {
            peer: session.peer(),
            source,
        }),
    }
}

/// Writes the tar stream `tar` under the directory `dir` on `client` (steps 4 and 5 without
/// borg): what was written, and how the stream ended. Tests drive it with any SFTP server and
/// any tar stream.
pub async fn write_archive<R: AsyncRead + Unpin>(
    client: &Client,
    tar: R,
    dir: &[u8],
    owners: Owners,
) -> (Written, std::result::Result<(), Fatal>) {
    let target = Target::new(dir);
    let target = &target;
    let chunk = (client.max_write() as usize)
        .saturating_mul(borg_pull_sftp::limits::WRITE_WINDOW)
        .clamp(1, SFTP_RESTORE_CHUNK_MAX);
    let mut writer = Writer::new(client, target, owners, chunk);
    let mut reader = TarReader::new(tar);
    let result = match writer.write_all(&mut reader).await {
        Ok(()) => drain_trailer(reader.inner()).await,
        Err(e) => Err(e),
    };
    (writer.written, result)
}

/// Reads what follows the end-of-archive blocks (padding) to EOF, at most
/// [`SFTP_RESTORE_TRAILER_MAX`] bytes.
async fn drain_trailer<R: AsyncRead + Unpin>(tar: &mut R) -> std::result::Result<(), Fatal> {
    let drained = tokio::io::copy(
        &mut tar.take(SFTP_RESTORE_TRAILER_MAX + 1),
        &mut tokio::io::sink(),
    )
    .await
    .map_err(TarError::Io)?;
    if drained > SFTP_RESTORE_TRAILER_MAX {
        warn!("borg export-tar sent more than {SFTP_RESTORE_TRAILER_MAX} bytes after the end of the archive; stopped");
    }
    Ok(())
}

/// borg's end: after a whole archive it ends by itself (given a grace); after a failure of ours
/// it is stopped. A stream cut short by borg's own failure is borg's verdict, not an error.
async fn finish(
    child: &mut BorgChild,
    written: Written,
    ended: std::result::Result<(), Fatal>,
    session: &Session,
) -> Result<SftpRestoreOutcome> {
    let how = match &ended {
        Ok(()) | Err(Fatal::Tar(TarError::Truncated | TarError::Io(_))) => {
            child.finish(BORG_STOP_GRACE, BORG_STOP_GRACE).await
        }
        Err(_) => child.stop(BORG_STOP_GRACE).await,
    };
    let status = how.map_err(|e| Error::Io {
        context: "cannot wait for borg export-tar".into(),
        source: e,
    })?;
    let borg_rc = exit_code(status.status);
    let borg_said = child.stderr_tail().await.last_line().map(str::to_owned);
    match ended {
        Ok(()) => {}
        Err(Fatal::Tar(_)) if borg_rc != 0 => {}
        Err(Fatal::Tar(e)) => {
            return Err(Error::RestoreStream {
                message: e.to_string(),
            })
        }
        Err(Fatal::Sftp(source)) => {
            return Err(Error::SftpRestore {
                peer: session.peer(),
                source,
            })
        }
        Err(Fatal::TooMany { what, limit }) => return Err(Error::SftpRestoreTooMany { what, limit }),
    }
    Ok(SftpRestoreOutcome {
        borg_rc,
        borg_said,
        written,
    })
}

/// Why the directory cannot be restored into.
enum DirProblem {
    /// The client's answer, in words.
    Unusable(String),
    /// The session failed.
    Sftp(borg_pull_sftp::Error),
}

/// Step 2: the directory exists, is one, and takes a new file; whose files we make there.
async fn check_dir(client: &Client, target: &Target) -> std::result::Result<Owners, DirProblem> {
    let status_or = |e: borg_pull_sftp::Error, why: &dyn Fn(&borg_pull_sftp::Error) -> String| {
        if e.is_status() {
            DirProblem::Unusable(why(&e))
        } else {
            DirProblem::Sftp(e)
        }
    };
    let dir = target.dir();
    match client.stat(dir).await {
        Ok(a) if a.file_type() == borg_pull_sftp::FileType::Directory => {}
        Ok(_) => return Err(DirProblem::Unusable("it is not a directory".into())),
        Err(e) => {
            return Err(status_or(e, &|e| match e {
                borg_pull_sftp::Error::NoSuchFile { .. } => "no such directory".into(),
                e => e.to_string(),
            }))
        }
    }
    let probe = Target::new(dir)
        .place(format!(".borg-pull-probe-{}", std::process::id()).as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| DirProblem::Unusable("its path is too long".into()))?;
    let create = OpenFlags(OpenFlags::WRITE.0 | OpenFlags::CREATE.0 | OpenFlags::EXCLUSIVE.0);
    let private = Attrs {
        permissions: Some(0o600),
        ..Attrs::default()
    };
    let handle = client.open_write(&probe, create, &private).await.map_err(|e| {
        status_or(e, &|e| match e {
            borg_pull_sftp::Error::PermissionDenied { .. } => {
                "the client's SFTP server refuses to write there \
                 (a read-only key, `internal-sftp -R`, refuses every write; restores need the \
                 read-write key line in the README)"
                    .into()
            }
            e => format!("it does not take a new file: {e}"),
        })
    })?;
    let owner = client.fstat(&handle).await;
    let _ = client.close(handle).await;
    if let Err(e) = client.remove(&probe).await {
        warn!("cannot remove the probe file: {e}");
    }
    let owner = owner.map_err(|e| status_or(e, &|e| e.to_string()))?;
    Ok(match owner.uid {
        Some(0) => Owners::FromArchive,
        _ => Owners::LoginUser,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_follows_the_archive_is_read_up_to_its_bound() {
        let padding = vec![0u8; 10 * 1024];
        let mut rest = padding.as_slice();
        drain_trailer(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "padding is read to EOF");
        let endless = vec![0u8; 3 * SFTP_RESTORE_TRAILER_MAX as usize];
        let mut rest = endless.as_slice();
        drain_trailer(&mut rest).await.unwrap();
        assert_eq!(
            rest.len() as u64,
            3 * SFTP_RESTORE_TRAILER_MAX - SFTP_RESTORE_TRAILER_MAX - 1,
            "no more than the bound (and one byte to see it passed) is read"
        );
    }

    #[test]
    fn the_worst_outcome_is_the_verdict() {
        let mut o = SftpRestoreOutcome {
            borg_rc: 0,
            borg_said: None,
            written: Written::default(),
        };
        assert_eq!(o.verdict(), Verdict::Restored);
        o.written.skipped = 1;
        assert_eq!(o.verdict(), Verdict::Warning);
        o.written.failed = 1;
        assert_eq!(o.verdict(), Verdict::WritesRefused);
        o.written.refused = 1;
        assert_eq!(o.verdict(), Verdict::UnsafeNames);
        o.borg_rc = 2;
        assert_eq!(o.verdict(), Verdict::BorgFailed(2));
        assert!(
            o.summary().starts_with("borg export-tar exited 2;"),
            "{}",
            o.summary()
        );
    }
}
