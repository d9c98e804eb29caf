//! Measures the tunnel's throughput for several SSH channel windows at an emulated round-trip time.
//!
//! ```text
//! cargo run --release -p borg-pull-tunnel --example window_bench -- \
//!     USER@HOST SSHD_PORT IDENTITY RELAY [MIB] [RTT_MS] [WINDOW_MIB...]
//! ```
//!
//! A proxy on 127.0.0.1 delays each direction by RTT/2 on its way to the client's sshd (no
//! bandwidth limit, only latency). Each run is a real pull whose "borg" on the client is
//! `head -c MIB /dev/zero | borg-pull-relay --socket ...` and whose "borg serve" on this side is a
//! sink (`cat > /dev/null`), so the numbers are the SSH tunnel alone, not borg's chunking.
//! The time of a 0-byte run (connect, mktemp, forward, clean-up) is subtracted.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use borg_pull_core::ServeConfig;
use borg_pull_tunnel::jobs::pull::{pull_with_output, PullOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: window_bench USER@HOST SSHD_PORT IDENTITY RELAY [MIB] [RTT_MS] [WINDOW_MIB...]");
        std::process::exit(64);
    }
    let (dest, sshd_port, identity, relay) = (&args[0], args[1].parse::<u16>()?, &args[2], &args[3]);
    let mib: u64 = args.get(4).map_or(Ok(256), |s| s.parse())?;
    let rtt_ms: u64 = args.get(5).map_or(Ok(20), |s| s.parse())?;
    let windows: Vec<u32> = if args.len() > 6 {
        args[6..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?
    } else {
        vec![2, 4, 16]
    };
    let host = dest.rsplit_once('@').map_or(dest.as_str(), |(_, h)| h).to_owned();

    let dir = tempfile::tempdir()?;
    let sink = dir.path().join("sink");
    std::fs::write(&sink, "#!/bin/sh\nexec cat > /dev/null\n")?;
    std::fs::set_permissions(&sink, std::fs::Permissions::from_mode(0o755))?;
    let known_hosts = dir.path().join("known_hosts");

    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy.local_addr()?.port();
    let one_way = Duration::from_millis(rtt_ms / 2);
    let target = (host.clone(), sshd_port);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = proxy.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(outbound) = TcpStream::connect((target.0.as_str(), target.1)).await {
                    delay_both_ways(inbound, outbound, one_way).await;
                }
            });
        }
    });

    println!("tunnel throughput, {mib} MiB per run, emulated RTT {rtt_ms} ms");
    for window_mib in windows {
        let run = |bytes: u64| {
            let mut o = PullOptions::new(
                &dest.replace(&host, "127.0.0.1"),
                dir.path().join("repo"),
                vec![
                    "-c".into(),
                    OsString::from(format!("head -c {bytes} /dev/zero | eval \"exec $BORG_RSH\"")),
                ],
            )
            .expect("options");
            o.session.port = proxy_port;
            o.session.identity = Some(identity.into());
            o.session.known_hosts = known_hosts.clone();
            o.session.accept_new_host_key = true;
            o.session.channel_window = window_mib * 1024 * 1024;
            let mut serve = ServeConfig::new(dir.path().join("repo")).expect("absolute");
            serve.borg = sink.clone();
            o.serve = serve;
            o.relay = relay.into();
            o.remote_borg = "/bin/sh".into();
            o
        };
        let (mut out, mut err) = (tokio::io::sink(), tokio::io::stderr());
        let t = Instant::now();
        pull_with_output(run(0), &mut out, &mut err).await?;
        let base = t.elapsed();
        let t = Instant::now();
        let outcome = pull_with_output(run(mib << 20), &mut out, &mut err).await?;
        let total = t.elapsed();
        let secs = total.saturating_sub(base).as_secs_f64().max(1e-3);
        println!(
            "window {window_mib:>3} MiB: {:>7.1} MB/s  ({} bytes forwarded, {:.2} s, setup {:.2} s, exit {:?})",
            outcome.forwarded.to_serve as f64 / secs / 1e6,
            outcome.forwarded.to_serve,
            secs,
            base.as_secs_f64(),
            outcome.exit
        );
    }
    Ok(())
}

/// Copies both ways, delivering every chunk `delay` after it was read.
async fn delay_both_ways(a: TcpStream, b: TcpStream, delay: Duration) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::join!(delayed_copy(ar, bw, delay), delayed_copy(br, aw, delay));
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until((at + delay).into()).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
