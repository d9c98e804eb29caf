//! The one-key agent against OpenSSH's own agent clients: `ssh-add` lists it and fails to change
//! it, `ssh-keygen -Y sign` signs through it and `ssh-keygen -Y check-novalidate` verifies the
//! signature; a raw socket sends oversized frames and garbage.
//!
//! Each test serves a [`KeyAgent`] on a UNIX socket in its own temp dir, in a task the test owns
//! (aborted, with every connection's task, when the fixture is dropped). A missing OpenSSH tool
//! fails the test under `BORG_PULL_REQUIRE_DEPS=1` (CI), as in `borg-pull-cli/tests/common`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use borg_pull_tunnel::limits::MAX_AGENT_FRAME;
use borg_pull_tunnel::ssh::key_agent::{AgentStats, KeyAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long any command or wait may take (the machine is slow and shared).
const DEADLINE: Duration = Duration::from_secs(60);

/// `true` if `tool` is on PATH; if not, panics under BORG_PULL_REQUIRE_DEPS=1 (CI), else prints a
/// note and returns `false` so the test can skip (copied from borg-pull-cli/tests/common).
fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found {
        return true;
    }
    if std::env::var_os("BORG_PULL_REQUIRE_DEPS").is_some_and(|v| v == "1") {
        panic!("{tool} (not on PATH) is required (BORG_PULL_REQUIRE_DEPS=1); run scripts/install-deps");
    }
    eprintln!("note: skipping: {tool} is missing (set BORG_PULL_REQUIRE_DEPS=1 to make this fail)");
    false
}

fn have_tools() -> bool {
    require_tool("ssh-add") && require_tool("ssh-keygen")
}

/// A [`KeyAgent`] listening on `dir/agent.sock`.
struct Fixture {
    dir: tempfile::TempDir,
    agent: Arc<KeyAgent>,
    socket: PathBuf,
    panicked: Arc<AtomicBool>,
    server: JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection's task.
        self.server.abort();
    }
}

impl Fixture {
    /// Generates a key of `key_type` with ssh-keygen and serves it.
    async fn start(key_type: &str) -> Fixture {
        let dir = tempfile::Builder::new().prefix("agent-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = keygen(dir.path(), "key", key_type).await;
        let agent = KeyAgent::load(&key, None).unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let panicked = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(accept_loop(listener, agent.clone(), panicked.clone()));
        Fixture {
            dir,
            agent,
            socket,
            panicked,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs an OpenSSH tool with `SSH_AUTH_SOCK` pointing at our agent and a private HOME.
    async fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env("SSH_AUTH_SOCK", &self.socket)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        output(command).await
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.panicked.load(Ordering::SeqCst),
            "a connection's task panicked"
        );
    }

    /// `ssh-add -l` lists exactly our key, with its fingerprint as `ssh-keygen -lf` prints it.
    async fn assert_lists_only_our_key(&self) {
        let listed = self.run("ssh-add", &["-l"]).await;
        assert!(listed.status.success(), "ssh-add -l: {}", report(&listed));
        let text = String::from_utf8(listed.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let expected = fingerprint_of(&self.path("key.pub")).await;
        assert_eq!(
            lines[0].split_whitespace().nth(1),
            Some(expected.as_str()),
            "{text}"
        );
        assert_eq!(self.agent.fingerprint(), expected);
        assert!(lines[0].contains("borg-pull"), "{text}");
    }
}

/// Accepts connections and serves each in a task of a set this loop owns; records panics.
async fn accept_loop(listener: UnixListener, agent: Arc<KeyAgent>, panicked: Arc<AtomicBool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.unwrap();
                let agent = agent.clone();
                connections.spawn(async move {
                    let _ = agent.serve(stream).await;
                });
            }
            Some(joined) = connections.join_next() => {
                if joined.is_err_and(|e| e.is_panic()) {
                    panicked.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

async fn output(mut command: tokio::process::Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {DEADLINE:?}"))
        .unwrap()
}

fn report(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ssh-keygen -t key_type` into `dir/name` (no passphrase), returning the private key's path.
async fn keygen(dir: &Path, name: &str, key_type: &str) -> PathBuf {
    let path = dir.join(name);
    let mut command = tokio::process::Command::new("ssh-keygen");
    command
        .args(["-q", "-t", key_type, "-N", "", "-C", "test", "-f"])
        .arg(&path);
    if key_type == "rsa" {
        command.args(["-b", "2048"]);
    }
    let out = output(command).await;
    assert!(out.status.success(), "ssh-keygen: {}", report(&out));
    path
}

/// The `SHA256:…` fingerprint `ssh-keygen -lf` prints for `public`.
async fn fingerprint_of(public: &Path) -> String {
    let mut command = tokio::process::Command::new("ssh-keygen");
    command.arg("-lf").arg(public);
    let out = output(command).await;
    assert!(out.status.success(), "ssh-keygen -lf: {}", report(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Sends `bytes`, closes our writing side and returns everything the agent sent until it closed.
async fn exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    // The agent may close before reading everything; a failed write is then expected.
    if stream.write_all(bytes).await.is_ok() {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply))
        .await
        .expect("the agent closed the connection")
        .ok();
    reply
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

const FAILURE: [u8; 5] = [0, 0, 0, 1, 5];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_add_lists_exactly_the_key() {
    if !have_tools() {
        return;
    }
    let fixture = Fixture::start("ed25519").await;
    fixture.assert_lists_only_our_key().await;

    let listed = fixture.run("ssh-add", &["-L"]).await;
    assert!(listed.status.success(), "ssh-add -L: {}", report(&listed));
    let text = String::from_utf8(listed.stdout).unwrap();
    let public = std::fs::read_to_string(fixture.path("key.pub")).unwrap();
    let fields = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(fields(&text), fields(&public));
    assert_eq!(text.split_whitespace().nth(2), Some("borg-pull"), "{text}");
    assert_eq!(
        fields(&fixture.agent.public_key().to_openssh().unwrap()),
        fields(&public)
    );
    assert_eq!(fixture.agent.stats(), AgentStats::default());
    fixture.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_add_cannot_add_remove_or_lock() {
    if !have_tools() {
        return;
    }
    let fixture = Fixture::start("ed25519").await;
    let other = keygen(fixture.dir.path(), "other", "ed25519").await;
    let askpass = fixture.path("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho lock-password\n").unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();

    let added = fixture.run("ssh-add", &[other.to_str().unwrap()]).await;
    assert!(!added.status.success(), "ssh-add OTHER: {}", report(&added));
    assert_eq!(fixture.agent.stats().refused, 1);
    let removed = fixture.run("ssh-add", &["-d", "key.pub"]).await;
    assert!(!removed.status.success(), "ssh-add -d: {}", report(&removed));
    assert_eq!(fixture.agent.stats().refused, 2);
    let removed_all = fixture.run("ssh-add", &["-D"]).await;
    assert!(
        !removed_all.status.success(),
        "ssh-add -D: {}",
        report(&removed_all)
    );
    // OpenSSH 9.2 also sends the protocol 1 "remove all" (type 9) here; later versions may not.
    assert!((3..=4).contains(&fixture.agent.stats().refused));
    let before_lock = fixture.agent.stats().refused;

    let mut lock = tokio::process::Command::new("ssh-add");
    lock.arg("-x")
        .env("SSH_AUTH_SOCK", &fixture.socket)
        .env("HOME", fixture.dir.path())
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let locked = output(lock).await;
    assert!(!locked.status.success(), "ssh-add -x: {}", report(&locked));
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("Failed to lock"),
        "ssh-add -x did not get as far as the lock request: {}",
        report(&locked)
    );

    fixture.assert_lists_only_our_key().await;
    let stats = fixture.agent.stats();
    assert_eq!(stats.signatures, 0);
    assert_eq!(stats.refused, before_lock + 1, "{stats:?}");
    fixture.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keygen_signs_through_the_agent_for_every_key_type() {
    if !have_tools() {
        return;
    }
    for key_type in ["ed25519", "ecdsa", "rsa"] {
        let fixture = Fixture::start(key_type).await;
        // Only the agent can sign now.
        std::fs::remove_file(fixture.path("key")).unwrap();
        std::fs::write(fixture.path("data"), b"what borg-pull signs\n").unwrap();

        let signed = fixture
            .run(
                "ssh-keygen",
                &["-Y", "sign", "-n", "file", "-f", "key.pub", "data"],
            )
            .await;
        assert!(
            signed.status.success(),
            "{key_type}: ssh-keygen -Y sign: {}",
            report(&signed)
        );
        assert_eq!(
            fixture.agent.stats(),
            AgentStats {
                signatures: 1,
                refused: 0
            },
            "{key_type}"
        );

        let mut check = tokio::process::Command::new("ssh-keygen");
        check
            .args([
                "-Y",
                "check-novalidate",
                "-n",
                "file",
                "-f",
                "key.pub",
                "-s",
                "data.sig",
            ])
            .current_dir(fixture.dir.path())
            .stdin(std::fs::File::open(fixture.path("data")).unwrap())
            .kill_on_drop(true);
        let checked = output(check).await;
        assert!(
            checked.status.success(),
            "{key_type}: ssh-keygen -Y check-novalidate: {}",
            report(&checked)
        );
        assert!(
            String::from_utf8_lossy(&checked.stdout).contains(&fixture.agent.fingerprint()),
            "{key_type}: {}",
            report(&checked)
        );

        // Raw sign requests: the flags choose the RSA hash (SHA-1 refused) and are ignored for
        // other keys; a request for a key we do not hold fails.
        let blob = blob_of(&fixture.agent);
        let expected: &[(u32, Option<&str>)] = match key_type {
            "rsa" => &[(0, None), (2, Some("rsa-sha2-256")), (4, Some("rsa-sha2-512"))],
            "ed25519" => &[(0, Some("ssh-ed25519")), (4, Some("ssh-ed25519"))],
            _ => &[(0, Some("ecdsa-sha2-nistp256"))],
        };
        for &(flags, algorithm) in expected {
            let reply = exchange(&fixture.socket, &sign_request(&blob, flags)).await;
            match algorithm {
                None => assert_eq!(reply, FAILURE, "{key_type} flags {flags}"),
                Some(name) => {
                    assert_eq!(reply[4], 14, "{key_type} flags {flags}: {reply:?}");
                    // string signature { string algorithm, string blob }
                    let algorithm = &reply[13..13 + name.len()];
                    assert_eq!(algorithm, name.as_bytes(), "{key_type} flags {flags}");
                }
            }
        }
        let mut other = blob.clone();
        *other.last_mut().unwrap() ^= 1;
        assert_eq!(exchange(&fixture.socket, &sign_request(&other, 0)).await, FAILURE);
        let signed = expected.iter().filter(|(_, a)| a.is_some()).count() as u64;
        let refused = expected.len() as u64 - signed + 1;
        assert_eq!(
            fixture.agent.stats(),
            AgentStats {
                signatures: 1 + signed,
                refused
            },
            "{key_type}"
        );
        fixture.assert_no_panic();
    }
}

fn blob_of(agent: &KeyAgent) -> Vec<u8> {
    russh::keys::ssh_encoding::Encode::encode_vec(agent.public_key().key_data()).unwrap()
}

/// A complete `SIGN_REQUEST` frame for `blob` over a fixed message.
fn sign_request(blob: &[u8], flags: u32) -> Vec<u8> {
    let mut body = vec![13];
    for field in [blob, b"data to sign"] {
        body.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        body.extend_from_slice(field);
    }
    body.extend_from_slice(&flags.to_be_bytes());
    frame(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_ends_only_its_connection() {
    if !have_tools() {
        return;
    }
    let fixture = Fixture::start("ed25519").await;
    let too_long = u32::try_from(MAX_AGENT_FRAME + 1).unwrap();
    for len in [too_long, u32::MAX] {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[11; 64]);
        assert_eq!(exchange(&fixture.socket, &bytes).await, b"", "length {len}");
    }
    // A frame of exactly the bound is read and answered.
    let mut largest = vec![0u8; MAX_AGENT_FRAME];
    largest[0] = 200;
    let mut bytes = frame(&largest);
    bytes.extend_from_slice(&frame(&[11]));
    let reply = exchange(&fixture.socket, &bytes).await;
    assert_eq!(reply[..5], FAILURE);
    assert_eq!(reply[9], 12, "identities answer after the failure");
    // And the next connection is served as usual.
    fixture.assert_lists_only_our_key().await;
    fixture.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_failure_or_a_close_never_a_panic() {
    if !have_tools() {
        return;
    }
    use rand::RngExt as _;

    let fixture = Fixture::start("ed25519").await;
    let mut rng = rand::rng();
    let blob = blob_of(&fixture.agent);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0, 0],
        frame(&[]),
        frame(&[13]),
        frame(&[13, 0, 0, 0, 200]),
        frame(&[13, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        frame(&[27, 0, 0, 0, 100, b'x']),
        frame(&[27, 0, 0, 0, 5, b'q', b'u', b'e', b'r', b'y']),
    ];
    // A sign request for our key with the data string cut short, and one without flags.
    let mut sign = vec![13];
    sign.extend_from_slice(&u32::try_from(blob.len()).unwrap().to_be_bytes());
    sign.extend_from_slice(&blob);
    cases.push(frame(&[&sign[..], &[0, 0, 1, 0, 1, 2]].concat()));
    cases.push(frame(&[&sign[..], &[0, 0, 0, 1, 1]].concat()));
    for _ in 0..200 {
        let len = rng.random_range(0..64usize);
        let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Some(first) = body.first_mut() {
            if *first == 11 {
                *first = 13;
            }
        }
        let mut bytes = frame(&body);
        if rng.random_bool(0.3) {
            let cut = rng.random_range(0..bytes.len());
            bytes.truncate(cut);
        }
        if rng.random_bool(0.1) {
            // Raw bytes; the high first byte makes the length far above the bound.
            bytes = (0..len).map(|_| rng.random()).collect();
            if let Some(first) = bytes.first_mut() {
                *first |= 0x80;
            }
        }
        cases.push(bytes);
    }
    for case in &cases {
        let reply = exchange(&fixture.socket, case).await;
        assert!(
            reply.is_empty() || reply.chunks(5).all(|r| r == FAILURE),
            "input {case:?} got {reply:?}"
        );
    }
    assert_eq!(fixture.agent.stats().signatures, 0);
    assert!(fixture.agent.stats().refused > 0);
    fixture.assert_lists_only_our_key().await;
    fixture.assert_no_panic();
}
