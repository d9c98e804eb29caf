//! OpenSSH's sftp-server behind an emulated round trip, for `benches/sftp-read.sh` at a
//! distance: every byte in either direction is held for half of `DELAY_MS` (env) before it is
//! passed on, in order, without limiting throughput. Any SFTP client that runs a server program
//! (`sftp -D`, our example, russh-sftp's bench) can use it in place of sftp-server.
//!
//! Env: DELAY_MS (round trip, default 0), SFTP_SERVER (/usr/lib/openssh/sftp-server).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Passes `from` to `to`, each chunk `delay` after it was read.
async fn delayed<R, W>(mut from: R, mut to: W, delay: Duration) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    // 4096 chunks of up to 64 KiB in flight: far more than a bench's window of reads.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .await
                    .is_err()
            {
                return Ok::<_, std::io::Error>(());
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        to.write_all(&chunk).await?;
        to.flush().await?;
    }
    to.shutdown().await?;
    reader.await.expect("reader task")?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let rtt_ms: u64 = std::env::var("DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let server = std::env::var("SFTP_SERVER").unwrap_or_else(|_| "/usr/lib/openssh/sftp-server".into());
    let half = Duration::from_millis(rtt_ms) / 2;
    let mut child = tokio::process::Command::new(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (cin, cout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let up = tokio::spawn(delayed(tokio::io::stdin(), cin, half));
    let down = delayed(cout, tokio::io::stdout(), half).await;
    // The server's output is done (it exited): stdin's read cannot be cancelled, so exit here.
    up.abort();
    let status = child.wait().await?;
    down?;
    std::process::exit(status.code().unwrap_or(1));
}
