//! What OpenSSH >= 9.8's PerSourcePenalties (and MaxStartups) look like to a pull, and how careful
//! a pull is not to earn them.
//!
//! A penalised source address gets its TCP connection accepted and closed at once: sshd 9.8+
//! writes "Not allowed at this time" (no SSH banner) and closes. A real sshd cannot be made to
//! penalise us on demand here (the machine's sshd is 9.2), so in-process peers that speak raw
//! bytes play the refusing sshd: one that says what 9.8 says, one that closes right after its
//! banner and one that closes in the middle of key exchange (after its KEXINIT, once it has read
//! the client's key exchange init, so the test proves key exchange really started); and, as the
//! counter-example, one that ends key exchange with a disconnect message, which no penalty sends.
//! The raw bytes, not the hostile fixture's russh server: russh cannot be stopped at a chosen point
//! of its handshake, and raw bytes say exactly what OpenSSH says. (Checked by hand against Debian
//! 13's OpenSSH 10 with penalties on: four failed pulls, then the fifth got exactly this
//! "Not allowed at this time" and exit 220; with `PerSourcePenaltyExemptList 127.0.0.1` eight
//! failed pulls in a row all got 211.)
//!
//! The key budget is tested against the hostile fixture (an in-process russh sshd that counts
//! every key offered) with OpenSSH's `ssh-agent` holding more keys than sshd's MaxAuthTries
//! allows; against real sshd it is `borg-pull-cli/tests/pull_auth_limits.rs`.

mod hostile;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use borg_pull_tunnel::error::KexStage;
use borg_pull_tunnel::jobs::pull::{pull_with_output, PullOptions};
use borg_pull_tunnel::limits::MAX_KEY_OFFERS;
use borg_pull_tunnel::Error;
use hostile::{Capped, Fixture, Knobs};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A refused pull must end well within this (it ends at the first read after the close).
const REFUSAL_BOUND: Duration = Duration::from_secs(20);

/// How the raw peer refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// OpenSSH >= 9.8 for a penalised source (and past MaxStartups): "Not allowed at this time",
    /// no banner, close.
    NotAllowed,
    /// Its SSH banner, then close.
    AfterBanner,
    /// Banner, KEXINIT, the client's KEXINIT and key exchange init read, then close.
    MidKex,
    /// Banner, the client's KEXINIT read, then SSH_MSG_DISCONNECT with a reason, then close: a
    /// deliberate refusal with words, which no penalty sends.
    DisconnectMidKex,
}

/// A one-connection raw TCP peer on 127.0.0.1; `reached_kex` is set once it has read the
/// client's key exchange init (SSH_MSG_KEX_ECDH_INIT, 30).
struct RawPeer {
    port: u16,
    reached_kex: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawPeer {
    async fn start(refusal: Refusal) -> RawPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reached_kex = Arc::new(AtomicBool::new(false));
        let flag = reached_kex.clone();
        let task = tokio::spawn(async move {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            // Everything the client sent is read before closing, so the close is a FIN (a close
            // with unread data is a reset, which may overtake what we wrote).
            let Some(_client_banner) = read_line(&mut tcp).await else {
                return;
            };
            match refusal {
                Refusal::NotAllowed => {
                    let _ = tcp.write_all(b"Not allowed at this time\r\n").await;
                }
                Refusal::AfterBanner => {
                    let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.9\r\n").await;
                }
                Refusal::MidKex => {
                    let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.9\r\n").await;
                    let Some(kexinit) = read_packet(&mut tcp).await else {
                        return;
                    };
                    assert_eq!(kexinit.first(), Some(&20), "the client's first packet is KEXINIT");
                    let _ = tcp.write_all(&kexinit_packet()).await;
                    let Some(init) = read_packet(&mut tcp).await else {
                        return;
                    };
                    if init.first() == Some(&30) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
                Refusal::DisconnectMidKex => {
                    let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.9\r\n").await;
                    let Some(kexinit) = read_packet(&mut tcp).await else {
                        return;
                    };
                    assert_eq!(kexinit.first(), Some(&20), "the client's first packet is KEXINIT");
                    flag.store(true, Ordering::SeqCst);
                    let _ = tcp
                        .write_all(&disconnect_packet("no matching host key type found"))
                        .await;
                }
            }
            let _ = tcp.shutdown().await;
            // Hold the socket until the client has closed its side (bounded by the test's life).
            let mut rest = Vec::new();
            let _ = (&mut tcp).take(64 * 1024).read_to_end(&mut rest).await;
        });
        RawPeer {
            port,
            reached_kex,
            task,
        }
    }
}

/// One line (up to LF, at most 255 bytes as RFC 4253 allows a banner).
async fn read_line(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    while line.len() < 255 {
        let byte = tcp.read_u8().await.ok()?;
        line.push(byte);
        if byte == b'\n' {
            return Some(line);
        }
    }
    None
}

/// One unencrypted binary packet's payload (RFC 4253 section 6), at most 64 KiB.
async fn read_packet(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let len = tcp.read_u32().await.ok()? as usize;
    if !(5..=64 * 1024).contains(&len) {
        return None;
    }
    let mut packet = vec![0; len];
    tcp.read_exact(&mut packet).await.ok()?;
    let padding = usize::from(packet[0]);
    packet.get(1..len.checked_sub(padding)?).map(<[u8]>::to_vec)
}

/// SSH_MSG_DISCONNECT (reason 3, key exchange failed) with `why`, unencrypted.
fn disconnect_packet(why: &str) -> Vec<u8> {
    let mut payload = vec![1u8];
    payload.extend_from_slice(&3u32.to_be_bytes());
    payload.extend_from_slice(&(why.len() as u32).to_be_bytes());
    payload.extend_from_slice(why.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
    packet(payload)
}

/// A KEXINIT offering one algorithm of each kind that russh's client also offers.
fn kexinit_packet() -> Vec<u8> {
    let mut payload = vec![20u8];
    payload.extend_from_slice(&[7u8; 16]); // cookie
    for list in [
        "curve25519-sha256",
        "ssh-ed25519",
        "chacha20-poly1305@openssh.com",
        "chacha20-poly1305@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
        payload.extend_from_slice(list.as_bytes());
    }
    payload.push(0); // first_kex_packet_follows
    payload.extend_from_slice(&0u32.to_be_bytes());
    packet(payload)
}

/// `payload` as an unencrypted binary packet (RFC 4253 section 6).
fn packet(payload: Vec<u8>) -> Vec<u8> {
    // Padding: at least 4 bytes, the whole packet a multiple of 8.
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = Vec::new();
    packet.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    packet.push(padding as u8);
    packet.extend_from_slice(&payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    packet
}

/// A private directory with a fresh client key (mode 0600) and an empty known_hosts.
struct Files {
    dir: tempfile::TempDir,
    identity: PathBuf,
    known_hosts: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::Builder::new().prefix("penalties-").tempdir().unwrap();
    let identity = dir.path().join("id_ed25519");
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    write_private(&identity, &key);
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    Files {
        dir,
        identity,
        known_hosts,
    }
}

fn write_private(path: &Path, key: &PrivateKey) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(key.to_openssh(LineEnding::LF).unwrap().as_bytes())
        .unwrap();
}

fn options(port: u16, identity: Option<&Path>, known_hosts: &Path) -> PullOptions {
    let mut options = PullOptions::new(
        "penalised@127.0.0.1",
        "/nonexistent/repo",
        vec!["create".into(), "::a".into(), "/data".into()],
    )
    .unwrap();
    options.session.port = port;
    options.session.identity = identity.map(Path::to_path_buf);
    options.session.default_identities = Vec::new();
    options.session.agent_socket = None;
    options.session.known_hosts = known_hosts.to_path_buf();
    options
}

/// Runs a pull that must fail by itself within [`REFUSAL_BOUND`].
async fn failed_pull(options: PullOptions) -> Error {
    let (mut out, mut err) = (Capped::default(), Capped::default());
    let start = Instant::now();
    let result = tokio::time::timeout(REFUSAL_BOUND, pull_with_output(options, &mut out, &mut err))
        .await
        .unwrap_or_else(|_| panic!("the pull did not end within {REFUSAL_BOUND:?}"));
    let e = result.expect_err("the pull must fail");
    eprintln!("failed after {:?}: {e}", start.elapsed());
    e
}

async fn refused_with(refusal: Refusal) -> (Error, bool) {
    let files = files();
    let peer = RawPeer::start(refusal).await;
    let e = failed_pull(options(peer.port, Some(&files.identity), &files.known_hosts)).await;
    (e, peer.reached_kex.load(Ordering::SeqCst))
}

fn assert_names_the_penalty(e: &Error, port: u16) {
    let text = e.to_string();
    for needle in [
        &format!("127.0.0.1 port {port}") as &str,
        "closed the connection",
        "before key exchange",
        "PerSourcePenalties",
        "MaxStartups",
        "PerSourcePenaltyExemptList",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

#[tokio::test]
async fn the_refusal_of_openssh_9_8_is_named_with_what_sshd_said() {
    let files = files();
    let peer = RawPeer::start(Refusal::NotAllowed).await;
    let e = failed_pull(options(peer.port, Some(&files.identity), &files.known_hosts)).await;
    match &e {
        Error::ClosedBeforeKex { peer: at, stage, .. } => {
            assert_eq!(at.port, peer.port);
            assert_eq!(
                *stage,
                KexStage::Refused("Not allowed at this time".into()),
                "{e}"
            );
        }
        other => panic!("want ClosedBeforeKex, got {other:?}"),
    }
    assert_names_the_penalty(&e, peer.port);
    assert!(
        e.to_string().contains("(it said \"Not allowed at this time\")"),
        "{e}"
    );
}

#[tokio::test]
async fn a_close_right_after_the_banner_is_named() {
    let (e, _) = refused_with(Refusal::AfterBanner).await;
    assert!(
        matches!(
            &e,
            Error::ClosedBeforeKex {
                stage: KexStage::AfterBanner,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("right after its SSH banner"), "{e}");
}

#[tokio::test]
async fn a_close_in_the_middle_of_key_exchange_is_named() {
    let (e, reached_kex) = refused_with(Refusal::MidKex).await;
    assert!(
        reached_kex,
        "the peer never saw the client's key exchange init: {e:?}"
    );
    assert!(
        matches!(
            &e,
            Error::ClosedBeforeKex {
                stage: KexStage::AfterBanner,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_disconnect_with_a_reason_during_key_exchange_is_not_called_a_penalty() {
    let (e, reached) = refused_with(Refusal::DisconnectMidKex).await;
    assert!(reached, "the peer never saw the client's KEXINIT: {e:?}");
    assert!(!matches!(e, Error::ClosedBeforeKex { .. }), "{e:?}");
    assert!(!e.to_string().contains("PerSourcePenalties"), "{e}");
}

#[tokio::test]
async fn a_peer_that_sends_nothing_and_closes_is_named() {
    // Closed at once after accepting, as sshd < 9.8 does past MaxStartups: no bytes at all.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let closer = tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let _ = read_line(&mut tcp).await;
            let _ = tcp.shutdown().await;
            let mut rest = Vec::new();
            let _ = (&mut tcp).take(64 * 1024).read_to_end(&mut rest).await;
        }
    });
    let files = files();
    let e = failed_pull(options(port, Some(&files.identity), &files.known_hosts)).await;
    closer.abort();
    assert!(
        matches!(
            &e,
            Error::ClosedBeforeKex {
                stage: KexStage::NoBanner,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("without sending its SSH banner"), "{e}");
}

#[tokio::test]
async fn without_any_key_nothing_connects() {
    // No identity, no agent, no default key file: "no identity" before any TCP connection (a
    // connection closed without authenticating is a `noauth` penalty on OpenSSH >= 9.8).
    let files = files();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut options = options(port, None, &files.known_hosts);
    options.session.default_identities = vec![files.dir.path().join("absent_key")];
    let e = failed_pull(options).await;
    assert!(matches!(e, Error::NoIdentity { .. }), "{e:?}");
    // An unreadable default key file (and no agent) fails before connecting too.
    let broken = files.dir.path().join("id_broken");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&broken)
        .unwrap();
    std::fs::write(&broken, "not a key\n").unwrap();
    let mut options = self::options(port, None, &files.known_hosts);
    options.session.default_identities = vec![broken.clone()];
    let e = failed_pull(options).await;
    assert!(
        matches!(&e, Error::Identity { path, .. } if *path == broken),
        "{e:?}"
    );
    // Nothing is waiting to be accepted: neither pull connected. A connection made would be in
    // the backlog already (TCP completes before the pull can fail), so a short look suffices.
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a pull connected: {accepted:?}");
}

/// OpenSSH's `ssh-agent -D -a SOCK`, killed on drop, as the user's agent (a reference peer).
struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SshAgent {
    fn start(dir: &Path, keys: &[PathBuf]) -> SshAgent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("OpenSSH's ssh-agent (scripts/install-deps installs openssh-client)");
        let agent = SshAgent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not create its socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        for key in keys {
            let out = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-add {}: {out:?}", key.display());
        }
        agent
    }
}

/// `n` fresh keys no sshd authorises, written into `dir`.
fn strangers(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("stranger_{i}"));
            let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
            write_private(&path, &key);
            path
        })
        .collect()
}

#[tokio::test]
async fn an_agent_with_many_keys_gets_at_most_five_offers_per_connection() {
    let fixture = Fixture::start(Knobs::default()).await;
    let mut keys = strangers(fixture.dir(), 8);
    // The authorised key comes ninth: beyond what sshd's MaxAuthTries 6 lets anyone reach.
    keys.push(fixture.identity.clone());
    let agent = SshAgent::start(fixture.dir(), &keys);
    let mut options = options(fixture.port, None, &fixture.known_hosts);
    options.session.agent_socket = Some(agent.socket.clone());
    let e = failed_pull(options).await;
    match &e {
        Error::AuthFailed {
            agent_keys,
            agent_keys_held,
            ..
        } => {
            assert_eq!(*agent_keys, MAX_KEY_OFFERS, "{e}");
            assert_eq!(*agent_keys_held, 9, "{e}");
        }
        other => panic!("want AuthFailed, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("the 5 keys of the agent at")
            && text.contains("The agent holds 9 keys, but at most 5 keys are offered per login")
            && text.contains("MaxAuthTries"),
        "{text}"
    );
    let offers = fixture.stats.key_offers.load(Ordering::SeqCst);
    assert_eq!(offers, MAX_KEY_OFFERS, "keys offered to the sshd");
    assert_eq!(fixture.stats.auth_attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_default_key_file_keeps_its_turn_after_many_agent_keys() {
    let fixture = Fixture::start(Knobs::default()).await;
    let keys = strangers(fixture.dir(), 7);
    let agent = SshAgent::start(fixture.dir(), &keys);
    let mut options = options(fixture.port, None, &fixture.known_hosts);
    options.session.agent_socket = Some(agent.socket.clone());
    // The authorised key as the default key file: four agent keys, then the file.
    options.session.default_identities = vec![fixture.identity.clone()];
    let cancel = options.cancel.clone();
    let pull = tokio::spawn(async move {
        let (mut out, mut err) = (Capped::default(), Capped::default());
        pull_with_output(options, &mut out, &mut err).await
    });
    // Logged in; what the pull does after that does not matter here.
    let logged_in = fixture
        .wait_for(REFUSAL_BOUND, |s| s.auth_attempts.load(Ordering::SeqCst) > 0)
        .await;
    cancel.cancel();
    let ended = tokio::time::timeout(REFUSAL_BOUND, pull).await;
    assert!(logged_in, "no login: {ended:?}");
    assert!(ended.is_ok(), "the pull did not end after cancel");
    assert_eq!(
        fixture.stats.auth_attempts.load(Ordering::SeqCst),
        1,
        "the key file logged in"
    );
    assert_eq!(fixture.stats.key_offers.load(Ordering::SeqCst), MAX_KEY_OFFERS);
}
