//! The same measurement as borg-pull-sftp's `examples/sftp-read.rs`, through russh-sftp's own
//! client (its `File` with its read-ahead of N requests), on the same sftp-server child: the
//! comparison issue 18 asks for. Outside the workspace so the project does not depend on it.
//!
//! Usage: russh-sftp-read FILE OUTSTANDING [READ_SIZE] [SFTP_SERVER]

use std::process::Stdio;
use std::time::Instant;

use russh_sftp::client::{Config, SftpSession};
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).ok_or("usage: russh-sftp-read FILE OUTSTANDING [READ_SIZE] [SFTP_SERVER]")?;
    let outstanding: usize = args.get(2).ok_or("OUTSTANDING")?.parse()?;
    let read_size: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64 * 1024);
    let server = args.get(4).map(String::as_str).unwrap_or("/usr/lib/openssh/sftp-server");
    let size = std::fs::metadata(file)?.len();

    let mut child = tokio::process::Command::new(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    // Its READ size is max_packet_len less the 13 bytes of a DATA header (or the server's limit).
    let cfg = Config { max_packet_len: read_size + 13, max_concurrent_reads: outstanding, ..Config::default() };
    let sftp = SftpSession::new_with_config(stream, cfg).await?;
    let started = Instant::now();
    let mut f = sftp.open(file.as_str()).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(f);
    sftp.close().await?;
    if total != size {
        return Err(format!("read {total} bytes of {size}").into());
    }
    println!(
        "outstanding={outstanding} read_size={read_size} bytes={total} seconds={seconds:.3} mib_per_s={:.0}",
        total as f64 / seconds / (1024.0 * 1024.0)
    );
    Ok(())
}
