//! Reads one file through OpenSSH's sftp-server (a child on stdin/stdout) with N reads
//! outstanding and prints the throughput: the measurement behind `benches/sftp-read.sh`.
//!
//! Usage: sftp-read FILE OUTSTANDING [READ_SIZE] [SFTP_SERVER]
//! Prints one line: `outstanding=N read_size=S bytes=B seconds=T mib_per_s=R`.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use borg_pull_sftp::{Client, Limits, ReadData};

fn usage() -> ! {
    eprintln!("usage: sftp-read FILE OUTSTANDING [READ_SIZE] [SFTP_SERVER]");
    std::process::exit(2);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        usage();
    }
    let file = std::path::PathBuf::from(&args[1]);
    let outstanding: usize = args[2].parse().unwrap_or_else(|_| usage());
    let read_size: u32 = args
        .get(3)
        .map(|s| s.parse().unwrap_or_else(|_| usage()))
        .unwrap_or(64 * 1024);
    let server = args
        .get(4)
        .map(String::as_str)
        .unwrap_or("/usr/lib/openssh/sftp-server");

    let mut child = tokio::process::Command::new(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let limits = Limits {
        max_outstanding: outstanding,
        max_read: read_size,
        ..Limits::default()
    };
    let client = Client::start(stream, limits).await?;
    let path = file.as_os_str().as_bytes();
    let size = client.lstat(path).await?.size.ok_or("no size")?;
    let chunk = u64::from(client.max_read());

    let started = Instant::now();
    let handle = Arc::new(client.open_read(path).await?);
    let mut in_flight = VecDeque::with_capacity(outstanding);
    let mut next = 0u64;
    let mut total = 0u64;
    // A window of `outstanding` reads, consumed in order as a sequential reader would.
    while next < size || !in_flight.is_empty() {
        while next < size && in_flight.len() < outstanding {
            let (c, h, at) = (client.clone(), handle.clone(), next);
            in_flight.push_back((
                at,
                tokio::spawn(async move { c.read(&h, at, chunk as u32).await }),
            ));
            next += chunk;
        }
        let (at, task) = in_flight.pop_front().expect("a read in flight");
        match task.await?? {
            ReadData::Bytes(b) => {
                total += b.len() as u64;
                // sftp-server answers regular files in full; a short read would leave a hole.
                let want = chunk.min(size - at);
                if (b.len() as u64) < want {
                    return Err(format!("short read at {at}: {} of {want}", b.len()).into());
                }
            }
            ReadData::Eof => return Err(format!("EOF at {at} before {size}").into()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let handle = Arc::try_unwrap(handle).map_err(|_| "handle still shared")?;
    client.close(handle).await?;
    client.clone().shutdown().await?;
    if total != size {
        return Err(format!("read {total} bytes of {size}").into());
    }
    println!(
        "outstanding={outstanding} read_size={chunk} bytes={total} seconds={seconds:.3} mib_per_s={:.0}",
        total as f64 / seconds / (1024.0 * 1024.0)
    );
    Ok(())
}
