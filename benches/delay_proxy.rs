//! A TCP proxy on 127.0.0.1 that delays every chunk by a fixed one-way time in each direction
//! (RTT = 2 x ONE_WAY_MS). Latency only: no bandwidth limit, no loss. Used by
//! `benches/pull-vs-openssh.sh` and `benches/round-trips.sh` between the ssh client (ours or
//! OpenSSH's) and sshd, so both tools see the same emulated round trip. Standalone (std only, no
//! crates), built with `rustc -O --edition 2021 benches/delay_proxy.rs -o DIR/delay-proxy`.
//!
//! ```text
//! delay-proxy TARGET_PORT ONE_WAY_MS      # prints the listening port on stdout, then serves
//! ```
//!
//! Like the proxy in `borg-pull-tunnel/examples/window_bench.rs`, it reads as fast as it can and
//! holds chunks until they are due, so what bounds throughput is the SSH channel window (bytes in
//! flight per round trip), not TCP: the same for both tools.
//!
//! Optional, from the environment (both off by default, so older results stay comparable):
//!
//! * `DELAY_PROXY_HANDSHAKE=1`: also charge TCP's three-way handshake, which a user-space proxy on
//!   loopback otherwise gets for free. The proxy connects to the target only 1.5 RTT after it
//!   accepted (when the client's ACK would reach the server), and holds what the client sent
//!   before that until then (as if the client could only send 1 RTT after its SYN). So the
//!   server's first bytes reach the client 2 RTT after connect(), as on a real network.
//! * `DELAY_PROXY_LOG=FILE`: appends one line per event, `CONN EVENT UNIX_NS BYTES`, for the
//!   round-trip counter (`benches/round_trips.py`). CONN numbers connections from 1; EVENT is
//!   `accept` (client connected to the proxy), `connect` (proxy connected to the target), `c2s` or
//!   `s2c` (a chunk the proxy READ from the client or the target: the time the sender sent it; it
//!   is delivered ONE_WAY_MS later, or at `connect` if that is later), `c2s_eof`, `s2c_eof`.
//!   Times are CLOCK_REALTIME nanoseconds, like `date +%s%N`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Log = Option<Arc<Mutex<File>>>;

fn emit(log: &Log, conn: u64, event: &str, bytes: usize) {
    if let Some(f) = log {
        let ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let line = format!("{conn} {event} {ns} {bytes}\n");
        let _ = f.lock().unwrap().write_all(line.as_bytes());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 {
        eprintln!("usage: delay-proxy TARGET_PORT ONE_WAY_MS");
        std::process::exit(64);
    }
    let target: u16 = args[0].parse().expect("TARGET_PORT");
    let delay = Duration::from_millis(args[1].parse().expect("ONE_WAY_MS"));
    let handshake = std::env::var("DELAY_PROXY_HANDSHAKE").is_ok_and(|v| v == "1");
    let log: Log = std::env::var_os("DELAY_PROXY_LOG").map(|p| {
        let f = File::options().create(true).append(true).open(p).expect("DELAY_PROXY_LOG");
        Arc::new(Mutex::new(f))
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    println!("{}", listener.local_addr().expect("local addr").port());
    std::io::stdout().flush().ok();
    let next = AtomicU64::new(1);
    for inbound in listener.incoming() {
        let Ok(inbound) = inbound else { continue };
        let accepted = Instant::now();
        let conn = next.fetch_add(1, Ordering::Relaxed);
        let log = log.clone();
        emit(&log, conn, "accept", 0);
        thread::spawn(move || {
            let _ = inbound.set_nodelay(true);
            // Read the client from the start (it may send before the target is connected).
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let Ok(reader) = inbound.try_clone() else { return };
            let (log2, log3) = (log.clone(), log.clone());
            let c2s_reader = thread::spawn(move || read_chunks(reader, tx, &log2, conn, "c2s"));
            if handshake {
                // SYN out, SYN-ACK back (1 RTT), then the ACK reaches the server (0.5 RTT more).
                let due = accepted + delay * 3;
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
            }
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                let _ = inbound.shutdown(Shutdown::Both);
                let _ = c2s_reader.join();
                return;
            };
            emit(&log, conn, "connect", 0);
            let _ = outbound.set_nodelay(true);
            let Ok(out2) = outbound.try_clone() else { return };
            let c2s_writer = thread::spawn(move || write_chunks(out2, rx, delay));
            let (s2c_tx, s2c_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let s2c_writer = thread::spawn(move || write_chunks(inbound, s2c_rx, delay));
            read_chunks(outbound, s2c_tx, &log3, conn, "s2c");
            let _ = s2c_writer.join();
            let _ = c2s_reader.join();
            let _ = c2s_writer.join();
        });
    }
}

/// Reads `from` until EOF, sending each chunk with the time it was read.
fn read_chunks(mut from: TcpStream, tx: mpsc::Sender<(Instant, Vec<u8>)>, log_to: &Log, conn: u64, dir: &str) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let at = Instant::now();
                emit(log_to, conn, dir, n);
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    emit(log_to, conn, &format!("{dir}_eof"), 0);
}

/// Writes each chunk `delay` after it was read (at once if that is past); half-closes `to` at EOF.
fn write_chunks(mut to: TcpStream, rx: mpsc::Receiver<(Instant, Vec<u8>)>, delay: Duration) {
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
}
