//! A TCP proxy on 127.0.0.1 that delays every chunk by a fixed one-way time in each direction
//! (RTT = 2 x ONE_WAY_MS). Latency only: no bandwidth limit, no loss. Used by
//! `benches/pull-vs-openssh.sh` between the ssh client (ours or OpenSSH's) and sshd, so both tools
//! see the same emulated round trip. Standalone (std only, no crates), built with
//! `rustc -O --edition 2021 benches/delay_proxy.rs -o DIR/delay-proxy`.
//!
//! ```text
//! delay-proxy TARGET_PORT ONE_WAY_MS      # prints the listening port on stdout, then serves
//! ```
//!
//! Like the proxy in `borg-pull-tunnel/examples/window_bench.rs`, it reads as fast as it can and
//! holds chunks until they are due, so what bounds throughput is the SSH channel window (bytes in
//! flight per round trip), not TCP: the same for both tools.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: delay-proxy TARGET_PORT ONE_WAY_MS");
        std::process::exit(64);
    }
    let target: u16 = args[0].parse().expect("TARGET_PORT");
    let delay = Duration::from_millis(args[1].parse().expect("ONE_WAY_MS"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    println!("{}", listener.local_addr().expect("local addr").port());
    std::io::stdout().flush().ok();
    for inbound in listener.incoming() {
        let Ok(inbound) = inbound else { continue };
        thread::spawn(move || {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (a2, b2) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            let t = thread::spawn(move || delayed_copy(a2, b2, delay));
            delayed_copy(outbound, inbound, delay);
            let _ = t.join();
        });
    }
}

/// Copies `from` to `to`, writing each chunk `delay` after it was read; half-closes `to` at EOF.
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (at, chunk) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
