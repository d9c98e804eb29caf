//! The writer task: requests from every caller, batched into as few writes as they allow.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::{closed, Session};

/// Requests written before one flush: what callers issued together goes out in one write.
const WRITE_BATCH: usize = 64;

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    session: Arc<Session>,
    mut wr: BufWriter<W>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let stop = session.stop.clone();
    let result: std::io::Result<()> = async {
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
            };
            let batch = async {
                wr.write_all(&first).await?;
                for _ in 0..WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(m) => wr.write_all(&m).await?,
                        Err(_) => break,
                    }
                }
                wr.flush().await
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                r = batch => r?,
            }
        }
    }
    .await;
    match result {
        Err(e) => session.end(closed(e)),
        Ok(()) => {
            // EOF to the server (sftp-server exits on it); a peer that does not read cannot
            // hold us here.
            let _ = tokio::time::timeout(crate::limits::CLOSE_GRACE, wr.shutdown()).await;
        }
    }
}
