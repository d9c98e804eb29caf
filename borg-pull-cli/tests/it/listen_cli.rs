//! `borg-pull-server listen` end to end: the real binary, real borg, and `borg-pull-relay` as the
//! client's BORG_RSH (URL `ssh://borg-pull-server/ABS_REPO`), each test in its own temp dir and borg env.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use borg_pull_testkit::{
    assert_ok, borg2, children_of, process_exists, relay_bin, require_tool, server_bin, wait_until, Outcome,
    Spawned, TestCommand, TestDir,
};

/// BORG_RSH for a client of `socket`: our relay.
///
/// For debugging the server alone, BORG_PULL_TEST_RSH overrides it (`{socket}` is replaced), e.g.
/// `BORG_PULL_TEST_RSH="sh -c 'exec socat STDIO UNIX-CONNECT:{socket}'"`.
fn rsh(socket: &Path) -> String {
    match std::env::var("BORG_PULL_TEST_RSH") {
        Ok(template) => template.replace("{socket}", &socket.display().to_string()),
        Err(_) => format!("'{}' --socket '{}'", relay_bin().display(), socket.display()),
    }
}

/// Runs a client command with the suite's deadline.
fn run(cmd: &mut TestCommand) -> Outcome {
    cmd.output()
}

fn url(repo: &Path) -> String {
    format!("ssh://borg-pull-server{}", repo.display())
}

/// `borg ARGS` through the server at `socket`.
fn client<I, S>(t: &TestDir, socket: &Path, args: I) -> TestCommand
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = t.borg(args);
    cmd.env("BORG_RSH", rsh(socket));
    cmd
}

fn server_cmd(t: &TestDir, args: &[&OsStr]) -> TestCommand {
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd).arg("listen").args(args);
    cmd
}

/// Starts `borg-pull-server listen --socket SOCKET --repo REPO EXTRA...` and waits until it listens.
fn start_server(t: &TestDir, socket: &Path, repo: &Path, extra: &[&str]) -> Spawned {
    let mut args = vec![
        OsStr::new("--socket"),
        socket.as_os_str(),
        OsStr::new("--repo"),
        repo.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let log = t.join(format!("server-{}.log", unique()));
    let mut server = Spawned::spawn(server_cmd(t, &args), log);
    // Not a probe connection: that would start a borg serve session of its own. The server logs
    // "listening" once the socket is bound, 0600, and its signal handlers are in place.
    server.wait_for_log("listening");
    server
}

/// Runs the server with `args`, expecting it to exit by itself; returns its exit code and log.
fn run_server_to_exit(t: &TestDir, args: &[&OsStr]) -> (Option<i32>, String) {
    let log = t.join(format!("server-{}.log", unique()));
    let mut server = Spawned::spawn(server_cmd(t, args), log);
    let status = server.wait_exit();
    (status.code(), server.log())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn stderr(out: &Outcome) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A repo initialised locally and a socket path in a fresh `run/` dir (created by the server).
fn setup() -> (TestDir, PathBuf, PathBuf) {
    let t = TestDir::new();
    let repo = t.join("repo");
    t.init_repo(&repo);
    let socket = t.join("run/borg.sock");
    (t, repo, socket)
}

/// Every file under `root`: relative path (raw bytes) -> content (`None` for directories).
fn tree(root: &Path) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Files with names that break naive quoting, plus a few hundred KiB of pseudo-random bytes.
fn make_data(dir: &Path) {
    fs::create_dir_all(dir.join("sub dir/deeper")).unwrap();
    let names: &[&[u8]] = &[
        b"plain.txt",
        b"with space.txt",
        b"single'quote",
        b"double\"quote",
        b"$(touch PWNED)",
        b"`touch PWNED2`",
        b"new\nline",
        b"non-utf8-\xff\xfe-bytes",
        b"sub dir/deeper/-leading-dash",
        b"sub dir/star*and?glob",
        b"sub dir/back\\slash",
    ];
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(OsStr::from_bytes(name));
        fs::write(&path, format!("file {i}: {}\n", String::from_utf8_lossy(name))).unwrap();
    }
    // Deterministic noise, incompressible, several chunks' worth for borg's small-file path.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(dir.join("sub dir/noise.bin"), noise).unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
}

#[test]
fn create_list_extract_check_round_trip() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let _server = start_server(&t, &socket, &repo, &[]);
    make_data(&t.join("data"));

    let archive = format!("{}::first", url(&repo));
    let out = run(client(&t, &socket, ["create", &archive, "data"]).current_dir(t.path()));
    assert_ok(&out, "borg create through the server");

    let out = run(&mut client(&t, &socket, ["list", "--short", &archive]));
    assert_ok(&out, "borg list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("data/with space.txt"), "{listed}");
    assert!(listed.contains("data/$(touch PWNED)"), "{listed}");

    let dest = t.join("restore");
    fs::create_dir(&dest).unwrap();
    let out = run(client(&t, &socket, ["extract", &archive]).current_dir(&dest));
    assert_ok(&out, "borg extract");
    assert_eq!(
        tree(&t.join("data")),
        tree(&dest.join("data")),
        "extracted tree differs"
    );
    assert!(
        !t.join("PWNED").exists() && !dest.join("PWNED").exists(),
        "a file name was evaluated"
    );

    let out = run(&mut client(&t, &socket, ["check", &url(&repo)]));
    assert_ok(&out, "borg check");
}

#[test]
fn other_repository_path_is_refused() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let other = t.join("other");
    t.init_repo(&other);
    let server = start_server(&t, &socket, &repo, &[]);

    let out = run(&mut client(&t, &socket, ["list", &url(&other)]));
    assert!(!out.status.success(), "listing another repository must fail");
    assert!(
        stderr(&out).contains("not allowed"),
        "borg's error: {}",
        stderr(&out)
    );
    // A path inside the allowed repository is not the repository either.
    let out = run(&mut client(
        &t,
        &socket,
        ["init", "-e", "none", &url(&repo.join("nested"))],
    ));
    assert!(
        !out.status.success(),
        "creating a repository below the allowed one must fail"
    );
    assert!(!repo.join("nested").exists());
    // The allowed one still works on the same server.
    let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
    assert_ok(&out, "borg list of the allowed repository");
    drop(server);
}

/// Relative paths of every file under `repo/data` (borg's segment files).
fn segments(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in fs::read_dir(repo.join("data")).unwrap() {
        let dir = dir.unwrap().path();
        for seg in fs::read_dir(&dir).unwrap() {
            out.push(seg.unwrap().path().strip_prefix(repo).unwrap().to_owned());
        }
    }
    out.sort();
    out
}

/// Creates an archive, then deletes it and compacts through the server; returns the segments
/// before and after.
fn delete_and_compact(extra: &[&str]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (t, repo, socket) = setup();
    let _server = start_server(&t, &socket, &repo, extra);
    make_data(&t.join("data"));
    let archive = format!("{}::doomed", url(&repo));
    let out = run(client(&t, &socket, ["create", &archive, "data"]).current_dir(t.path()));
    assert_ok(&out, "borg create");
    let before = segments(&repo);

    let out = run(&mut client(&t, &socket, ["delete", &archive]));
    assert_ok(&out, "borg delete");
    // In append-only mode borg compact has nothing it may do; its exit status is borg's business.
    let _ = run(&mut client(&t, &socket, ["compact", &url(&repo)]));
    (before, segments(&repo))
}

#[test]
fn append_only_delete_and_compact_remove_no_segment() {
    if !require_tool("borg") {
        return;
    }
    let (before, after) = delete_and_compact(&[]);
    assert!(!before.is_empty());
    let lost: Vec<_> = before.iter().filter(|s| !after.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "append-only server lost segments {lost:?} (after: {after:?})"
    );
}

#[test]
fn allow_delete_lets_compact_free_segments() {
    if !require_tool("borg") {
        return;
    }
    // The contrast case: proves --allow-delete reaches borg serve (and that the test above can fail).
    let (before, after) = delete_and_compact(&["--allow-delete"]);
    let lost: Vec<_> = before.iter().filter(|s| !after.contains(s)).collect();
    assert!(
        !lost.is_empty(),
        "compact freed nothing: before {before:?}, after {after:?}"
    );
}

#[test]
fn four_simultaneous_clients() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let server = start_server(&t, &socket, &repo, &[]);
    let out =
        run(client(&t, &socket, ["create", &format!("{}::a", url(&repo)), "home"]).current_dir(t.path()));
    assert_ok(&out, "borg create");

    // Four connections held open at once: four borg serve processes at the same time.
    let held: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    wait_until("four borg serve sessions at once", || {
        children_of(server.pid()).len() == 4
    });
    drop(held);
    wait_until("the four sessions to end", || {
        children_of(server.pid()).is_empty()
    });

    // Four real clients at once (borg list takes a shared lock, so they really overlap).
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let log = t.join(format!("client-{i}.log"));
            Spawned::spawn(client(&t, &socket, ["list", "--short", &url(&repo)]), log)
        })
        .collect();
    for mut c in clients {
        let status = c.wait_exit();
        assert!(status.success(), "borg list failed ({status}):\n{}", c.log());
        assert!(
            c.log().lines().any(|l| l.trim() == "a"),
            "archive a not listed: {}",
            c.log()
        );
    }
}

#[test]
fn connections_over_the_limit_wait_for_a_free_slot() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let mut server = start_server(&t, &socket, &repo, &["--max-connections", "1"]);
    let holder = UnixStream::connect(&socket).unwrap();
    wait_until("the first session's borg serve", || {
        children_of(server.pid()).len() == 1
    });
    server.wait_for_log("connection limit reached");

    let mut waiting = Spawned::spawn(client(&t, &socket, ["list", &url(&repo)]), t.join("waiting.log"));
    if require_tool("ss") {
        wait_until("the second client to wait in the backlog", || {
            borg_pull_testkit::pending_connections(&socket).is_some_and(|n| n >= 1)
        });
    } else {
        // Without ss the backlog is invisible: give the client a bounded moment to get there.
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        waiting.is_running(),
        "the second client must wait: {}",
        waiting.log()
    );
    assert_eq!(
        children_of(server.pid()).len(),
        1,
        "no second borg serve while at the limit"
    );

    drop(holder);
    let status = waiting.wait_exit();
    assert!(
        status.success(),
        "the waiting client failed ({status}):\n{}",
        waiting.log()
    );
}

#[test]
fn sigterm_ends_sessions_removes_socket_and_exits_zero() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let mut server = start_server(&t, &socket, &repo, &["--shutdown-grace", "1"]);
    // An idle session: borg serve waits for a request that never comes.
    let _idle = UnixStream::connect(&socket).unwrap();
    wait_until("the idle session's borg serve", || {
        children_of(server.pid()).len() == 1
    });
    let serve_pid = children_of(server.pid())[0];

    let start = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert!(!socket.exists(), "socket left behind");
    assert!(
        !process_exists(serve_pid),
        "borg serve {serve_pid} was not killed and reaped"
    );
    let log = server.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("killing the remaining borg serve"), "{log}");
}

#[test]
fn second_signal_stops_sessions_at_once() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    // The default grace period (30 s) would outlast this test's patience.
    let mut server = start_server(&t, &socket, &repo, &[]);
    let _idle = UnixStream::connect(&socket).unwrap();
    wait_until("the idle session's borg serve", || {
        children_of(server.pid()).len() == 1
    });
    let serve_pid = children_of(server.pid())[0];

    let start = Instant::now();
    server.signal("INT");
    server.wait_for_log("waiting for running sessions");
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(0), "log:\n{}", server.log());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(server.log().contains("shutdown forced"), "{}", server.log());
    assert!(!socket.exists());
    assert!(
        !process_exists(serve_pid),
        "borg serve {serve_pid} was not killed and reaped"
    );
}

#[test]
fn forced_stop_mid_backup_leaves_no_repository_lock() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let data = t.join("data");
    fs::create_dir_all(&data).unwrap();
    // Incompressible, so the backup is still running when the signals arrive.
    let noise: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(data.join("big.bin"), noise).unwrap();
    let mut server = start_server(&t, &socket, &repo, &[]);
    let archive = format!("{}::interrupted", url(&repo));
    let mut backup = Spawned::spawn(
        client(
            &t,
            &socket,
            [OsStr::new("create"), OsStr::new(&archive), data.as_os_str()],
        ),
        t.join("backup.log"),
    );
    wait_until("borg serve to lock the repository", || {
        repo.join("lock.exclusive").exists()
    });

    server.signal("INT");
    server.wait_for_log("waiting for running sessions");
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(0), "log:\n{}", server.log());
    let backup_status = backup.wait_exit();
    assert!(
        !backup_status.success(),
        "the backup must have been cut off: {}",
        backup.log()
    );
    // Closing borg serve's stdin lets it roll back and unlock; a SIGKILL would leave the lock.
    assert!(
        !repo.join("lock.exclusive").exists() && !repo.join("lock.roster").exists(),
        "the forced stop left the repository locked; server log:\n{}",
        server.log()
    );
    assert_ok(
        &borg_pull_testkit::output(&mut t.borg(["list", repo.to_str().unwrap()])),
        "borg list",
    );
}

#[test]
fn sigint_without_sessions_exits_zero_and_removes_socket() {
    let t = TestDir::new();
    let socket = t.join("run/borg.sock");
    let true_bin = stand_in_borg(&t);
    let mut server = start_server(
        &t,
        &socket,
        &t.join("repo"),
        &["--borg", true_bin.to_str().unwrap()],
    );
    server.signal("INT");
    assert_eq!(server.wait_exit().code(), Some(0), "log:\n{}", server.log());
    assert!(!socket.exists());
    assert!(t.join("run").is_dir(), "the directory stays");
}

#[test]
fn stale_socket_is_replaced() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    fs::create_dir(t.join("run")).unwrap();
    fs::set_permissions(t.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
    drop(UnixListener::bind(&socket).unwrap()); // what a killed server leaves behind
    assert!(UnixStream::connect(&socket).is_err());

    let server = start_server(&t, &socket, &repo, &[]);
    assert!(server.log().contains("removed stale socket"), "{}", server.log());
    let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
    assert_ok(&out, "borg list after replacing the stale socket");
}

#[test]
fn live_socket_is_refused_and_left_alone() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let mut first = start_server(&t, &socket, &repo, &[]);
    let ino = fs::metadata(&socket).unwrap().ino();

    let args = [os("--socket"), socket.as_os_str(), os("--repo"), repo.as_os_str()];
    let (code, log) = run_server_to_exit(&t, &args);
    assert_eq!(code, Some(206), "log:\n{log}");
    assert!(log.contains("is in use"), "{log}");
    assert!(log.contains("choose another --socket"), "{log}");

    assert_eq!(
        fs::metadata(&socket).unwrap().ino(),
        ino,
        "the first server's socket was touched"
    );
    first.assert_running();
    let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
    assert_ok(&out, "the first server still serves");
}

/// A stand-in borg for tests that need no borg serve: says it is borg 1.2.4 and does nothing else.
fn stand_in_borg(t: &TestDir) -> PathBuf {
    let path = t.join("stand-in-borg");
    if !path.exists() {
        fs::write(
            &path,
            "#!/bin/sh\n[ \"$1\" = --version ] && echo 'borg 1.2.4'\nexit 0\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

/// Runs the server with a stand-in borg (no borg needed) on `socket`; expects exit `code`.
fn refused(t: &TestDir, socket: &Path, code: i32) -> String {
    let true_bin = stand_in_borg(t);
    let args = [
        os("--socket"),
        socket.as_os_str(),
        os("--repo"),
        t.path().as_os_str(),
        os("--borg"),
        true_bin.as_os_str(),
    ];
    let (got, log) = run_server_to_exit(t, &args);
    assert_eq!(got, Some(code), "log:\n{log}");
    log
}

#[test]
fn missing_parent_of_socket_dir_is_explained() {
    let t = TestDir::new();
    let log = refused(&t, &t.join("no-such-parent/run/borg.sock"), 205);
    assert!(log.contains("does not exist"), "{log}");
    assert!(log.contains("tmpfiles.d"), "{log}");
    assert!(!t.join("no-such-parent").exists(), "parents are not created");
}

#[test]
fn group_writable_socket_dir_is_refused() {
    let t = TestDir::new();
    let dir = t.join("run");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    let log = refused(&t, &dir.join("borg.sock"), 205);
    assert!(log.contains("writable by group or others"), "{log}");
    assert!(log.contains("0770"), "{log}");
    assert!(log.contains(&format!("chmod 700 {}", dir.display())), "{log}");
    assert!(!dir.join("borg.sock").exists());
}

#[test]
fn file_in_the_way_is_refused_and_kept() {
    let t = TestDir::new();
    let socket = t.join("borg.sock");
    fs::write(&socket, b"not a socket").unwrap();
    let log = refused(&t, &socket, 205);
    assert!(log.contains("regular file is in the way"), "{log}");
    assert!(log.contains("--socket"), "{log}");
    assert_eq!(fs::read(&socket).unwrap(), b"not a socket");
}

#[test]
fn socket_is_private() {
    let t = TestDir::new();
    let socket = t.join("run/borg.sock");
    let true_bin = stand_in_borg(&t);
    let _server = start_server(&t, &socket, t.path(), &["--borg", true_bin.to_str().unwrap()]);
    assert_eq!(fs::metadata(t.join("run")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::symlink_metadata(&socket).unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn usage_errors_exit_200_and_missing_borg_203() {
    let t = TestDir::new();
    let sock = t.join("s.sock");
    let (code, log) = run_server_to_exit(
        &t,
        &[os("--socket"), sock.as_os_str(), os("--repo"), os("rel/repo")],
    );
    assert_eq!(code, Some(200), "{log}");
    assert!(log.contains("must be absolute"), "{log}");

    let (code, log) = run_server_to_exit(
        &t,
        &[
            os("--repo"),
            t.path().as_os_str(),
            os("--borg"),
            stand_in_borg(&t).as_os_str(),
        ],
    );
    assert_eq!(code, Some(200), "{log}");
    assert!(log.contains("no --socket"), "{log}");

    let (code, log) = run_server_to_exit(&t, &[os("--socket"), sock.as_os_str(), os("--repo")]);
    assert_eq!(code, Some(200), "{log}");

    let args = [
        os("--socket"),
        sock.as_os_str(),
        os("--repo"),
        t.path().as_os_str(),
        os("--borg"),
        os("/nonexistent/borg"),
    ];
    let (code, log) = run_server_to_exit(&t, &args);
    assert_eq!(code, Some(203), "{log}");
    assert!(log.contains("cannot find borg program"), "{log}");
    assert!(
        log.contains("; pass the borg program's path with --borg PATH"),
        "listen adds its own option as the hint: {log}"
    );
    assert!(!sock.exists());
}

#[test]
fn help_documents_exit_codes() {
    let out = run(TestCommand::new(server_bin()).args(["listen", "--help"]));
    assert_ok(&out, "listen --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit codes",
        "200",
        "203",
        "204",
        "205",
        "206",
        "--max-connections",
        "--allow-delete",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn systemd_socket_activation() {
    if !require_tool("borg") || !require_tool("systemd-socket-activate") {
        return;
    }
    let (t, repo, _) = setup();
    let dir = t.join("run");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.join("activated.sock");
    // systemd-socket-activate binds the socket, waits for the first connection, then execs us with
    // LISTEN_FDS=1 and the listener on fd 3, like a .socket unit with Accept=no. No --socket given.
    let mut cmd = TestCommand::new("systemd-socket-activate");
    t.env(&mut cmd)
        .arg("-l")
        .arg(&socket)
        .arg(server_bin())
        .args(["listen", "--repo"])
        .arg(&repo);
    let mut server = Spawned::spawn(cmd, t.join("activated.log"));
    server.wait_for_socket(&socket);

    for _ in 0..2 {
        let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
        assert_ok(&out, "borg list through the activated server");
    }
    server.wait_for_log("listening on socket from systemd");
    server.signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0), "log:\n{}", server.log());
    assert!(socket.exists(), "the socket belongs to systemd and must stay");
}

#[test]
fn borg_serve_stderr_is_logged_line_by_line() {
    let t = TestDir::new();
    // A stand-in for borg that complains on stderr, like borg serve does about a broken repository.
    let fake = t.join("fake-borg");
    fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'borg 1.2.4'; exit 0; }\necho 'first complaint' >&2\necho 'second: $*' >&2\nexec cat\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = t.join("run/borg.sock");
    let mut server = start_server(&t, &socket, t.path(), &["--borg", fake.to_str().unwrap()]);
    let conn = UnixStream::connect(&socket).unwrap();
    server.wait_for_log("first complaint");
    server.wait_for_log("second: $*");
    drop(conn);
    server.wait_for_log("session ended");
    let log = server.log();
    let line = log.lines().find(|l| l.contains("first complaint")).unwrap();
    assert!(
        line.contains("session{id="),
        "logged in the session's span: {line}"
    );
}

#[test]
fn socket_activation_with_accept_yes_is_refused() {
    if !require_tool("systemd-socket-activate") {
        return;
    }
    let t = TestDir::new();
    let socket = t.join("accept.sock");
    let true_bin = stand_in_borg(&t);
    // --accept hands each *connection* to a new process, like Accept=yes: not a listener for us.
    let mut cmd = TestCommand::new("systemd-socket-activate");
    t.env(&mut cmd)
        .arg("--accept")
        .arg("-l")
        .arg(&socket)
        .arg(server_bin());
    cmd.args(["listen", "--repo"])
        .arg(t.path())
        .arg("--borg")
        .arg(&true_bin);
    let mut activator = Spawned::spawn(cmd, t.join("accept.log"));
    activator.wait_for_socket(&socket);
    activator.wait_for_log("died with code 204");
    assert!(activator.log().contains("Accept=no"), "{}", activator.log());
}

#[test]
fn socket_dir_of_another_user_is_refused() {
    let t = TestDir::new();
    let dir = t.join("run");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    // Only root can give a directory away; elsewhere the unit test of the check covers it.
    let chown = Command::new("chown").arg("65534").arg(&dir).output().unwrap();
    if !chown.status.success() {
        eprintln!("note: skipping: cannot chown (not root)");
        return;
    }
    let log = refused(&t, &dir.join("borg.sock"), 205);
    assert!(log.contains("belongs to uid 65534"), "{log}");
    assert!(log.contains("chown"), "{log}");
}

#[test]
fn borg_serve_gets_no_secrets_from_the_servers_environment() {
    let t = TestDir::new();
    let dump = t.join("serve.env");
    let fake = t.join("fake-borg");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'borg 1.2.4'; exit 0; }}\ncat /proc/$$/environ > '{}'\nexec cat\n",
            dump.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = t.join("run/borg.sock");
    let args = [
        os("--socket"),
        socket.as_os_str(),
        os("--repo"),
        t.path().as_os_str(),
        os("--borg"),
        fake.as_os_str(),
    ];
    let mut cmd = server_cmd(&t, &args);
    let secrets = [
        "BORG_PASSPHRASE",
        "BORG_PASSCOMMAND",
        "BORG_NEW_PASSPHRASE",
        "BORG_PULL_IDENTITY_PASSPHRASE",
        "SSH_ORIGINAL_COMMAND",
        "BORG_REPO_PERMISSIONS",
        "BORG_RSH",
    ];
    for name in secrets {
        cmd.env(name, "s3cret");
    }
    cmd.env("BORG_HOST_ID", "listen-test");
    let mut server = Spawned::spawn(cmd, t.join("server.log"));
    server.wait_for_log("listening");
    let conn = UnixStream::connect(&socket).unwrap();
    wait_until("the fake borg serve to dump its environment", || {
        fs::read(&dump).is_ok_and(|d| d.ends_with(b"\0"))
    });
    drop(conn);
    let env = fs::read(&dump).unwrap();
    let vars: Vec<String> = env
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for name in secrets {
        assert!(
            !vars.iter().any(|v| v.starts_with(&format!("{name}="))),
            "{name} reached borg serve: {vars:?}"
        );
    }
    assert!(vars.iter().any(|v| v == "BORG_HOST_ID=listen-test"), "{vars:?}");
    assert!(vars.iter().any(|v| v.starts_with("BORG_BASE_DIR=")), "{vars:?}");
    assert!(vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
}

#[test]
fn borg_serve_stderr_is_escaped_and_survives_invalid_utf8() {
    let t = TestDir::new();
    let fake = t.join("fake-borg");
    fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'borg 1.2.4'; exit 0; }\nprintf 'colour \\033[31mred\\033]0;title\\007\\n' >&2\n\
         printf 'bytes \\377\\376 here\\n' >&2\necho 'after the bad bytes' >&2\nexec cat\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = t.join("run/borg.sock");
    let mut server = start_server(&t, &socket, t.path(), &["--borg", fake.to_str().unwrap()]);
    let conn = UnixStream::connect(&socket).unwrap();
    server.wait_for_log("after the bad bytes");
    drop(conn);
    server.wait_for_log("session ended");
    let log = server.log();
    assert!(!log.contains('\u{1b}'), "a raw ESC reached the log: {log:?}");
    assert!(log.contains(r"colour \x1b[31mred\x1b]0;title\x07"), "{log}");
    assert!(log.contains(r"bytes \xff\xfe here"), "{log}");
}

/// Runs the server with `--borg true` on `socket`, expecting a start-up failure; returns the log.
///
/// Exit code 205: the socket cannot be created safely.
fn refused_unsafe_dir(t: &TestDir, socket: &Path) -> String {
    let true_bin = stand_in_borg(t);
    let args = [
        os("--socket"),
        socket.as_os_str(),
        os("--repo"),
        t.path().as_os_str(),
        os("--borg"),
        true_bin.as_os_str(),
    ];
    let (code, log) = run_server_to_exit(t, &args);
    assert_eq!(code, Some(205), "log:\n{log}");
    assert!(!socket.exists(), "{log}");
    log
}

#[test]
fn symlinked_socket_dir_is_refused() {
    let t = TestDir::new();
    let real = t.join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, t.join("run")).unwrap();
    let log = refused_unsafe_dir(&t, &t.join("run/borg.sock"));
    assert!(log.contains("is a symbolic link"), "{log}");
    assert!(!real.join("borg.sock").exists());
}

#[test]
fn socket_dir_under_a_writable_parent_is_refused() {
    let t = TestDir::new();
    let parent = t.join("shared");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    let log = refused_unsafe_dir(&t, &parent.join("run/borg.sock"));
    assert!(log.contains("not sticky"), "{log}");
    assert!(log.contains(&format!("{:?}", parent)), "names the parent: {log}");
    assert!(!parent.join("run").exists(), "nothing created under it");
}

#[test]
fn socket_dir_under_a_sticky_parent_is_accepted() {
    let t = TestDir::new();
    let parent = t.join("sticky");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = parent.join("run/borg.sock");
    let true_bin = stand_in_borg(&t);
    let _server = start_server(&t, &socket, t.path(), &["--borg", true_bin.to_str().unwrap()]);
    assert_eq!(fs::symlink_metadata(&socket).unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn running_listener_keeps_its_socket_even_if_it_looks_stale() {
    let t = TestDir::new();
    let socket = t.join("run/borg.sock");
    let true_bin = stand_in_borg(&t);
    let mut first = start_server(&t, &socket, t.path(), &["--borg", true_bin.to_str().unwrap()]);
    // Someone replaced the running server's socket with a dead one: a second server must not
    // take the path over while the first still runs (their lock says so).
    fs::remove_file(&socket).unwrap();
    drop(UnixListener::bind(&socket).unwrap());
    let args = [
        os("--socket"),
        socket.as_os_str(),
        os("--repo"),
        t.path().as_os_str(),
        os("--borg"),
        true_bin.as_os_str(),
    ];
    let (code, log) = run_server_to_exit(&t, &args);
    assert_eq!(code, Some(206), "log:\n{log}");
    assert!(log.contains("is in use"), "{log}");
    first.assert_running();
}

#[test]
fn storage_quota_stops_a_backup_that_would_exceed_it() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let _server = start_server(&t, &socket, &repo, &["--storage-quota", "10M"]);

    let small = t.join("small");
    fs::create_dir(&small).unwrap();
    fs::write(small.join("a.txt"), b"fits easily\n").unwrap();
    let archive = format!("{}::small", url(&repo));
    let out = run(client(&t, &socket, ["create", &archive, "small"]).current_dir(t.path()));
    assert_ok(&out, "a backup within the quota");

    let big = t.join("big");
    fs::create_dir(&big).unwrap();
    // 16 MB of incompressible bytes: more than the 10 MB quota whatever borg's compression.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let noise: Vec<u8> = (0..16_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(big.join("noise.bin"), noise).unwrap();
    let archive = format!("{}::big", url(&repo));
    let out = run(client(&t, &socket, ["create", &archive, "big"]).current_dir(t.path()));
    assert!(!out.status.success(), "the quota did not stop the backup");
    assert!(
        stderr(&out).contains("storage quota"),
        "borg's quota error expected:\n{}",
        stderr(&out)
    );

    let out = run(&mut client(&t, &socket, ["list", "--short", &url(&repo)]));
    assert_ok(&out, "borg list after the refused backup");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("small") && !listed.contains("big"), "{listed}");
}

mod storage_quota_is_checked_before_starting {
    use super::*;

    #[test]
    fn below_the_minimum_of_10m() {
        case("9M");
    }

    #[test]
    fn not_a_number() {
        case("lots");
    }

    #[test]
    fn with_a_space() {
        case("5 G");
    }

    fn case(bad: &str) {
        let t = TestDir::new();
        let sock = t.join("s.sock");
        let (code, log) = run_server_to_exit(
            &t,
            &[
                os("--socket"),
                sock.as_os_str(),
                os("--repo"),
                t.path().as_os_str(),
                os("--storage-quota"),
                os(bad),
            ],
        );
        assert_eq!(code, Some(200), "{bad}: {log}");
        assert!(log.contains("storage quota"), "{log}");
    }
}

#[test]
fn real_borg_serve_environment_has_no_secrets() {
    if !require_tool("borg") {
        return;
    }
    let (t, repo, socket) = setup();
    let args = [os("--socket"), socket.as_os_str(), os("--repo"), repo.as_os_str()];
    let mut cmd = server_cmd(&t, &args);
    cmd.env("BORG_PASSPHRASE", "s3cret")
        .env("BORG_PASSCOMMAND", "echo s3cret")
        .env("SSH_ORIGINAL_COMMAND", "borg serve")
        .env("BORG_RSH", "ssh -oProxyCommand=evil");
    let mut server = Spawned::spawn(cmd, t.join("server.log"));
    server.wait_for_log("listening");
    let _idle = UnixStream::connect(&socket).unwrap();
    // Until it has exec'd, the forked child still has our environment: wait for borg's argv.
    wait_until("the session's borg serve", || {
        let children = children_of(server.pid());
        children.len() == 1
            && fs::read(format!("/proc/{}/cmdline", children[0]))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"serve"))
    });
    let serve_pid = children_of(server.pid())[0];
    let environ = fs::read(format!("/proc/{serve_pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for name in [
        "BORG_PASSPHRASE",
        "BORG_PASSCOMMAND",
        "SSH_ORIGINAL_COMMAND",
        "BORG_RSH",
    ] {
        assert!(
            !environ.split('\0').any(|v| v.starts_with(&format!("{name}="))),
            "{name} reached borg serve {serve_pid}: {environ:?}"
        );
    }
    assert!(environ.contains("BORG_BASE_DIR="), "{environ:?}");
    // And it still serves.
    let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
    assert_ok(&out, "borg list");
}

/// `borg ARGS` with borg 2 through the server at `socket`: BORG_RSH and BORGSTORE_RSH are the relay
/// (borg 2 copies BORG_RSH to BORGSTORE_RSH itself; set both as `pull` does).
fn client2(t: &TestDir, borg: &Path, socket: &Path, args: &[&str]) -> TestCommand {
    let mut cmd = TestCommand::new(borg);
    t.env(&mut cmd)
        .args(args)
        .env("BORG_RSH", rsh(socket))
        .env("BORGSTORE_RSH", rsh(socket))
        .env("BORG_PASSPHRASE", "borg2-test");
    cmd
}

/// borg 2's URL for an absolute path: `ssh://host//abs` (one slash would be relative to the login
/// directory).
fn url2(repo: &Path) -> String {
    format!("ssh://borg-pull-server/{}", repo.display())
}

/// A borg 2 repository created locally (`repo-create`), as `--init` does.
fn setup2(borg: &Path) -> (TestDir, PathBuf, PathBuf) {
    let t = TestDir::new();
    let repo = t.join("repo");
    let mut cmd = TestCommand::new(borg);
    t.env(&mut cmd)
        .env("BORG_PASSPHRASE", "borg2-test")
        .arg("-r")
        .arg(&repo)
        .args(["repo-create", "-e", "aes256-ocb"]);
    assert_ok(&cmd.output(), "borg 2 repo-create");
    let socket = t.join("run/borg.sock");
    (t, repo, socket)
}

#[test]
fn borg2_create_list_extract_check_and_no_delete() {
    let Some(borg) = borg2() else {
        return;
    };
    let (t, repo, socket) = setup2(&borg);
    let server = start_server(&t, &socket, &repo, &["--borg", borg.to_str().unwrap()]);
    let log = server.log();
    assert!(
        log.contains("serve --rest --backend FILE:") && log.contains("--permissions no-delete"),
        "{log}"
    );
    make_data(&t.join("data"));
    let r = url2(&repo);

    let out = run(client2(&t, &borg, &socket, &["-r", &r, "create", "first", "data"]).current_dir(t.path()));
    assert_ok(&out, "borg 2 create through the server");
    let out = run(&mut client2(
        &t,
        &borg,
        &socket,
        &["-r", &r, "list", "--short", "first"],
    ));
    assert_ok(&out, "borg 2 list");
    let listed = out.stdout_text();
    assert!(
        listed.contains("data/with space.txt") && listed.contains("data/$(touch PWNED)"),
        "{listed}"
    );

    let dest = t.join("restore");
    fs::create_dir(&dest).unwrap();
    let out = run(client2(&t, &borg, &socket, &["-r", &r, "extract", "first"]).current_dir(&dest));
    assert_ok(&out, "borg 2 extract");
    assert_eq!(
        tree(&t.join("data")),
        tree(&dest.join("data")),
        "extracted tree differs"
    );
    assert!(
        !t.join("PWNED").exists() && !dest.join("PWNED").exists(),
        "a file name was evaluated"
    );
    let out = run(&mut client2(&t, &borg, &socket, &["-r", &r, "check"]));
    assert_ok(&out, "borg 2 check");

    // --permissions no-delete: deleting an archive or the repository is refused; nothing is gone.
    let archives_before = fs::read_dir(repo.join("archives")).unwrap().count();
    let out = run(&mut client2(
        &t,
        &borg,
        &socket,
        &["-r", &r, "delete", "-a", "first"],
    ));
    assert_ne!(
        out.status.code(),
        Some(0),
        "delete was allowed: {}",
        out.describe()
    );
    assert!(
        out.stderr_text().contains("PermissionDenied"),
        "{}",
        out.describe()
    );
    let out = run(&mut client2(&t, &borg, &socket, &["-r", &r, "repo-delete"]));
    assert_ne!(
        out.status.code(),
        Some(0),
        "repo-delete was allowed: {}",
        out.describe()
    );
    assert!(
        out.stderr_text().contains("PermissionDenied"),
        "{}",
        out.describe()
    );
    assert_eq!(
        fs::read_dir(repo.join("archives")).unwrap().count(),
        archives_before
    );
    let out = run(&mut client2(
        &t,
        &borg,
        &socket,
        &["-r", &r, "repo-list", "--format", "{archive}{NL}"],
    ));
    assert_ok(&out, "borg 2 repo-list after the refused deletes");
    assert_eq!(out.stdout_text().trim(), "first");

    // The path in the client's URL never reaches borg serve (the server fixes --backend): asking
    // for another path reaches the one repository, and creating one there is refused.
    let other = t.join("other");
    let out = run(&mut client2(
        &t,
        &borg,
        &socket,
        &["-r", &url2(&other), "repo-list", "--format", "{archive}{NL}"],
    ));
    assert_ok(&out, "borg 2 repo-list of another path");
    assert_eq!(out.stdout_text().trim(), "first", "not the served repository");
    let out = run(&mut client2(
        &t,
        &borg,
        &socket,
        &["-r", &url2(&other), "repo-create", "-e", "none"],
    ));
    assert_ne!(out.status.code(), Some(0), "{}", out.describe());
    assert!(!other.exists());
}

#[test]
fn borg2_storage_quota_is_a_usage_error() {
    let Some(borg) = borg2() else {
        return;
    };
    let t = TestDir::new();
    let socket = t.join("run/borg.sock");
    let (code, log) = run_server_to_exit(
        &t,
        &[
            os("--socket"),
            socket.as_os_str(),
            os("--repo"),
            t.path().as_os_str(),
            os("--borg"),
            borg.as_os_str(),
            os("--storage-quota"),
            os("10G"),
        ],
    );
    assert_eq!(code, Some(200), "{log}");
    assert!(log.contains("has no --storage-quota"), "{log}");
}

mod init_creates_a_missing_repository_with_the_servers_borg {
    use super::*;

    #[test]
    fn borg1() {
        if !require_tool("borg") {
            return;
        }
        case(PathBuf::from("borg"), "repokey-blake2", "data", Generation::One);
    }

    #[test]
    fn borg2() {
        let Some(borg2) = super::borg2() else {
            return;
        };
        case(borg2, "aes256-ocb", "packs", Generation::Two);
    }

    /// Which client command line the new repository is checked with.
    #[derive(PartialEq)]
    enum Generation {
        One,
        Two,
    }

    fn case(borg: PathBuf, encryption: &str, layout: &str, generation: Generation) {
        let t = TestDir::new();
        let repo = t.join("new repo");
        let socket = t.join("run/borg.sock");
        let mut cmd = server_cmd(
            &t,
            &[
                os("--socket"),
                socket.as_os_str(),
                os("--repo"),
                repo.as_os_str(),
                os("--borg"),
                borg.as_os_str(),
                os("--init"),
                os("--encryption"),
                os(encryption),
            ],
        );
        cmd.env("BORG_PASSPHRASE", "borg2-test");
        let mut server = Spawned::spawn(cmd, t.join("server.log"));
        server.wait_for_log("listening");
        assert!(server.log().contains("repository created"), "{}", server.log());
        assert!(
            repo.join(layout).is_dir(),
            "{borg:?}: no {layout}/ in the new repository"
        );
        // A client can use it at once.
        let out = if generation == Generation::Two {
            run(&mut client2(
                &t,
                &borg,
                &socket,
                &["-r", &url2(&repo), "repo-info"],
            ))
        } else {
            let mut cmd = client(&t, &socket, ["info", &url(&repo)]);
            cmd.env("BORG_PASSPHRASE", "borg2-test");
            run(&mut cmd)
        };
        assert_ok(&out, "info on the repository --init created");
        // Given again, --init leaves the existing repository alone.
        drop(server);
        let mut cmd = server_cmd(
            &t,
            &[
                os("--socket"),
                socket.as_os_str(),
                os("--repo"),
                repo.as_os_str(),
                os("--borg"),
                borg.as_os_str(),
                os("--init"),
                os("--encryption"),
                os(encryption),
            ],
        );
        cmd.env("BORG_PASSPHRASE", "borg2-test");
        let mut server = Spawned::spawn(cmd, t.join("server2.log"));
        server.wait_for_log("listening");
        assert!(!server.log().contains("repository created"), "{}", server.log());
    }
}

#[test]
fn a_borg_1_client_of_a_borg_2_listener_is_named_in_the_log() {
    if !require_tool("borg") {
        return;
    }
    let Some(borg2) = borg2() else {
        return;
    };
    let (t, repo, socket) = setup2(&borg2);
    let server = start_server(&t, &socket, &repo, &["--borg", borg2.to_str().unwrap()]);
    let out = run(&mut client(&t, &socket, ["list", &url(&repo)]));
    assert_ne!(out.status.code(), Some(0), "{}", out.describe());
    let log = server.log();
    assert!(
        log.contains("(borg 1.x) but this server's borg serve is borg 2.0.0b25 (borg 2.0.0b25 and later)"),
        "{log}"
    );
}

#[test]
fn a_borg_2_client_of_a_borg_1_listener_is_named_in_the_log() {
    let Some(borg2) = borg2() else {
        return;
    };
    let (t, repo, socket) = setup();
    let server = start_server(&t, &socket, &repo, &[]);
    let out = run(&mut client2(
        &t,
        &borg2,
        &socket,
        &["-r", &url2(&repo), "repo-list"],
    ));
    assert_ne!(out.status.code(), Some(0), "{}", out.describe());
    let log = server.log();
    assert!(
        log.contains("the client runs borg 2.0.0b22 and later (it speaks HTTP) but this server's borg serve is borg 1."),
        "{log}"
    );
}

#[test]
fn borg_1_4_serves_with_the_spelled_out_flags() {
    let Some(borg14) = borg_pull_testkit::borg14() else {
        return;
    };
    let (t, repo, socket) = setup();
    let server = start_server(&t, &socket, &repo, &["--borg", borg14.to_str().unwrap()]);
    assert!(
        server
            .log()
            .contains("serve --append-only --restrict-to-repository"),
        "{}",
        server.log()
    );
    fs::create_dir(t.join("data")).unwrap();
    fs::write(t.join("data/f"), b"x").unwrap();
    let archive = format!("{}::a", url(&repo));
    let borg = |args: &[&str]| {
        let mut cmd = TestCommand::new(&borg14);
        t.env(&mut cmd).args(args).env("BORG_RSH", rsh(&socket));
        cmd
    };
    let out = run(borg(&["create", &archive, "data"]).current_dir(t.path()));
    assert_ok(&out, "borg 1.4 create through borg 1.4's serve");
    let out = run(&mut borg(&["list", "--short", &archive]));
    assert_ok(&out, "borg 1.4 list");
    assert_eq!(out.stdout_text(), "data\ndata/f\n");
}
