//! End-to-end tests of `borg-pull-server restore-tar --via sftp` against a real OpenSSH sshd whose
//! key line is `restrict,command="internal-sftp"` (SFTP only: no shell, no tar) and real borg on
//! the server: the archive is made locally, restored over SFTP into a directory "on the client"
//! and compared byte for byte and by `lstat`.
//!
//! What a real SFTP server never does (stall a write) and archives borg never makes (a symlink
//! followed by an entry under it, `..` names) are tested with the library's writer
//! ([`write_archive`]) against OpenSSH's own `sftp-server` run as a child, with a hand-made tar
//! and, for the stall, an in-process relay that holds every WRITE.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::{self, Sshd, SshdOptions};
use borg_pull_testkit::{assert_ok, Outcome, TestCommand};
use borg_pull_tunnel::jobs::sftp_restore::{
    write_archive, Fatal, Owners, SftpClient, SftpError, SftpLimits, SftpRestoreOutcome, Verdict,
};

const PASSPHRASE: &str = "sftp 'restore' $(pass)";
const ARCHIVE: &str = "sftp-restore";
/// OpenSSH's SFTP server, which speaks SFTP on stdin and stdout.
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// The README's key line for restores over SFTP (read-write, nothing else).
const SFTP_READ_WRITE: &str = "restrict,command=\"internal-sftp\" ";
/// The README's key line for `pull --via sftp` (read-only): restores must be refused.
const SFTP_READ_ONLY: &str = "restrict,command=\"internal-sftp -R\" ";
/// The big file's size: above 8 MiB, so several chunks and write windows.
const BIG: usize = 9 * 1024 * 1024 + 4321;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// An sshd with an SFTP-only key, an encrypted repository and a source tree archived in it.
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    server_base: PathBuf,
    /// The archived tree is `src/tree`; the archive holds `tree/...`.
    src: PathBuf,
    borg: PathBuf,
}

impl Fixture {
    fn new(key_options: &'static str, borg: PathBuf) -> Fixture {
        assert!(borg_pull_testkit::require_tool("borg"), "borg is needed");
        let sshd = Sshd::start_with(SshdOptions {
            authorized_keys_options: key_options,
            extra_config: "Subsystem sftp internal-sftp\n".into(),
            ..SshdOptions::default()
        });
        let d = sshd.dir.path().to_owned();
        let f = Fixture {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            src: d.join("src"),
            sshd,
            borg,
        };
        assert_ok(&f.borg_cmd(&["init", "-e", "repokey"]).output(), "borg init");
        make_tree(&f.src.join("tree"));
        let out = f
            .borg_cmd(&[
                OsString::from("create"),
                format!("::{ARCHIVE}").into(),
                "tree".into(),
            ])
            .current_dir(&f.src)
            .output();
        assert_ok(&out, "borg create");
        f
    }

    fn borg_cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new(&self.borg);
        cmd.args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND");
        cmd
    }

    /// A fresh directory to restore into, owned by `login`.
    fn target(&self, name: &str, login: &str) -> PathBuf {
        let dir = self.sshd.dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        if login != "root" {
            sshd::chown_to_login_user(&dir);
        }
        dir
    }

    /// `restore-tar --via sftp` of `archive` as `login` into `dir`.
    fn restore(&self, archive: &str, login: &str, dir: &Path) -> Outcome {
        self.restore_with(
            archive,
            login,
            dir,
            &[OsStr::new("--borg"), self.borg.as_os_str()],
            &[],
        )
    }

    /// [`Fixture::restore`] with `extra` options (`--borg` among them) and only `paths`.
    fn restore_with(
        &self,
        archive: &str,
        login: &str,
        dir: &Path,
        extra: &[&OsStr],
        paths: &[&str],
    ) -> Outcome {
        TestCommand::new(borg_pull_testkit::server_bin())
            .arg("restore-tar")
            .args(["--via", "sftp", "-p"])
            .arg(self.sshd.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--archive")
            .arg(archive)
            .args(extra)
            .arg("--remote-dir")
            .arg(dir)
            .arg(format!("{login}@127.0.0.1"))
            .args(paths)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path())
            .output()
    }
}

fn touch(path: &Path, epoch: i64) {
    let out = TestCommand::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{epoch}"))
        .arg(path)
        .output();
    assert_ok(&out, "touch");
}

fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Names (one not UTF-8, one with a newline), nested directories (one read-only), symlinks, a
/// hard link across directories, modes, mtimes, an empty file, a big file, a FIFO (which SFTP
/// cannot create) and, as root, owners that exist nowhere.
fn make_tree(root: &Path) {
    let deep = root.join("a/b/c");
    fs::create_dir_all(&deep).unwrap();
    let file = |rel: &[u8], content: &[u8], mode: u32| {
        let p = root.join(OsStr::from_bytes(rel));
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    file(b"plain", b"plain text\n", 0o644);
    file(b"\xff\xfe not utf-8", b"latin\n", 0o640);
    file(b"new\nline", b"nl\n", 0o600);
    file(b"exec", b"#!/bin/sh\n", 0o755);
    file(b"empty", b"", 0o644);
    file(b"a/b/c/deep", &noise(70_000, 7), 0o444);
    file(b"big", &noise(BIG, 11), 0o644);
    fs::hard_link(root.join("plain"), root.join("a/hard link")).unwrap();
    std::os::unix::fs::symlink("plain", root.join("rel link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs link")).unwrap();
    std::os::unix::fs::symlink("../nowhere", root.join("a/dangling")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("dir link")).unwrap();
    let ro = root.join("read-only dir");
    fs::create_dir(&ro).unwrap();
    fs::write(ro.join("inside"), b"in a 0555 directory\n").unwrap();
    let out = TestCommand::new("mkfifo").arg(root.join("fifo")).output();
    assert_ok(&out, "mkfifo");
    if is_root() {
        let out = TestCommand::new("chown")
            .args(["-h", "12345:54321"])
            .arg(root.join("exec"))
            .arg(root.join("a/b"))
            .output();
        assert_ok(&out, "chown");
    }
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    // mtimes last, deepest first (writing into a directory changes its mtime).
    let mut all: Vec<PathBuf> = snapshot(root)
        .keys()
        .map(|k| root.join(OsStr::from_bytes(k)))
        .collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        touch(path, 1_200_000_000 + 86_400 * i as i64);
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
}

/// What `lstat` says about one entry, plus its content's digest or its link target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    mtime: i64,
    uid: u32,
    gid: u32,
    ino: u64,
    size: u64,
    content: u64,
    target: Option<Vec<u8>>,
}

fn digest(path: &Path) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in fs::read(path).unwrap() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Relative path -> [`Entry`], the root included (as "").
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut map = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    // Each pass takes one entry of a finite tree.
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        map.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
                uid: m.uid(),
                gid: m.gid(),
                ino: m.ino(),
                size: if ft.is_file() { m.len() } else { 0 },
                content: if ft.is_file() { digest(&path) } else { 0 },
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&path).unwrap().into_os_string().into_vec()),
            },
        );
        if ft.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(entry.unwrap().file_name()));
            }
        }
    }
    map
}

/// The restored tree is the source's: same entries, kinds, contents, link targets, modes, mtimes
/// (not of symlinks: SFTP cannot set them), the hard link one file, owners when `owners`; the
/// FIFO is the one entry missing.
fn assert_restored(src: &Path, restored: &Path, owners: bool) {
    let mut want = snapshot(src);
    let got = snapshot(restored);
    assert_eq!(want.remove(b"fifo".as_slice()).map(|e| e.kind), Some("special"));
    let names = |m: &BTreeMap<Vec<u8>, Entry>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "the restored tree has other entries");
    for (name, w) in &want {
        let g = &got[name];
        let what = String::from_utf8_lossy(name);
        assert_eq!(g.kind, w.kind, "{what}");
        assert_eq!((g.size, g.content), (w.size, w.content), "{what}: content");
        assert_eq!(g.target, w.target, "{what}: symlink target");
        if w.kind != "symlink" {
            assert_eq!(g.mode, w.mode, "{what}: mode");
            if !name.is_empty() {
                assert_eq!(g.mtime, w.mtime, "{what}: mtime");
            }
        }
        if owners && w.kind != "symlink" && !name.is_empty() {
            assert_eq!((g.uid, g.gid), (w.uid, w.gid), "{what}: owner");
        }
    }
    assert_eq!(
        got[b"plain".as_slice()].ino,
        got[b"a/hard link".as_slice()].ino,
        "the hard link is one file with its target"
    );
}

fn borg12() -> PathBuf {
    PathBuf::from("borg")
}

/// The whole round trip for one borg and login.
fn round_trip(borg: PathBuf, as_root: bool) {
    let f = Fixture::new(SFTP_READ_WRITE, borg);
    let login = if as_root {
        "root".to_owned()
    } else {
        f.sshd.user.clone()
    };
    let dir = f.target("restored", &login);
    let started = Instant::now();
    let out = f.restore(ARCHIVE, &login, &dir);
    // The FIFO cannot be created over SFTP: a warning, named.
    out.assert_code(1);
    let err = out.stderr_text();
    assert!(
        err.contains("skipped tree/fifo: a FIFO cannot be created over SFTP"),
        "{}",
        out.describe()
    );
    assert!(err.contains("1 skipped"), "{}", out.describe());
    assert_restored(&f.src.join("tree"), &dir.join("tree"), as_root);
    let leftovers: Vec<_> = snapshot(&dir)
        .into_keys()
        .filter(|k| k.windows(10).any(|w| w == b".borg-pull"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    eprintln!("restored in {:?}", started.elapsed());
    // A second restore over the first replaces every file (renamed over) and keeps the tree.
    let again = f.restore(ARCHIVE, &login, &dir);
    again.assert_code(1);
    assert_restored(&f.src.join("tree"), &dir.join("tree"), as_root);
}

#[test]
fn an_archive_is_restored_over_sftp_byte_for_byte_by_an_unprivileged_login() {
    round_trip(borg12(), false);
}

#[test]
fn a_root_login_restores_owners_over_sftp() {
    assert!(is_root(), "this test needs root (owners that exist nowhere)");
    round_trip(borg12(), true);
}

#[test]
fn an_archive_of_borg_1_4_is_restored_over_sftp() {
    let borg = borg_pull_testkit::borg14().expect("borg 1.4 (BORG_PULL_BORG14)");
    round_trip(borg, false);
}

#[test]
fn a_path_of_the_archive_is_restored_with_the_parents_borg_does_not_send() {
    let f = Fixture::new(SFTP_READ_WRITE, borg12());
    let login = f.sshd.user.clone();
    let dir = f.target("restored", &login);
    let borg = [OsStr::new("--borg"), f.borg.as_os_str()];
    let out = f.restore_with(ARCHIVE, &login, &dir, &borg, &["tree/a/b/c"]);
    out.assert_code(0);
    let deep = dir.join("tree/a/b/c/deep");
    assert_eq!(
        fs::read(&deep).unwrap(),
        fs::read(f.src.join("tree/a/b/c/deep")).unwrap()
    );
    assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o7777, 0o444);
    let names: Vec<_> = snapshot(&dir).into_keys().collect();
    assert_eq!(
        names,
        [
            &b""[..],
            b"tree",
            b"tree/a",
            b"tree/a/b",
            b"tree/a/b/c",
            b"tree/a/b/c/deep"
        ],
        "only that path and its parents"
    );
}

#[test]
fn a_read_only_sftp_key_is_refused_before_borg_runs() {
    let f = Fixture::new(SFTP_READ_ONLY, borg12());
    let login = f.sshd.user.clone();
    let dir = f.target("restored", &login);
    let out = f.restore(ARCHIVE, &login, &dir);
    out.assert_code(214);
    let err = out.stderr_text();
    assert!(
        err.contains("refuses to write there") && err.contains("internal-sftp -R"),
        "{}",
        out.describe()
    );
    assert!(
        fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing was written"
    );
}

#[test]
fn a_missing_directory_is_named_and_nothing_streams() {
    let f = Fixture::new(SFTP_READ_WRITE, borg12());
    let login = f.sshd.user.clone();
    let dir = f.sshd.dir.path().join("no such dir");
    let out = f.restore(ARCHIVE, &login, &dir);
    out.assert_code(214);
    assert!(
        out.stderr_text().contains("no such directory"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_missing_archive_exits_with_borgs_code() {
    let f = Fixture::new(SFTP_READ_WRITE, borg12());
    let login = f.sshd.user.clone();
    let dir = f.target("restored", &login);
    let out = f.restore("no-such-archive", &login, &dir);
    out.assert_code(2);
    assert!(
        out.stderr_text().contains("borg export-tar exited 2"),
        "{}",
        out.describe()
    );
}

#[test]
fn max_runtime_stops_borg_and_the_writer() {
    let f = Fixture::new(SFTP_READ_WRITE, borg12());
    let login = f.sshd.user.clone();
    let dir = f.target("restored", &login);
    // A borg export-tar that never sends a byte (the test's directory in its command line).
    let slow = f.sshd.dir.path().join("slow-borg");
    fs::write(&slow, "#!/bin/sh\nsleep 300\n").unwrap();
    fs::set_permissions(&slow, fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let out = f.restore_with(
        ARCHIVE,
        &login,
        &dir,
        &[
            OsStr::new("--borg"),
            slow.as_os_str(),
            OsStr::new("--max-runtime"),
            OsStr::new("3"),
        ],
        &[],
    );
    out.assert_code(217);
    assert!(
        out.stderr_text().contains("maximum run time of 3 s"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    borg_pull_testkit::procs::assert_no_process_mentions(f.sshd.dir.path());
}

// ---- The writer against OpenSSH's sftp-server, with hand-made tars ----

/// A GNU tar header block.
fn header(name: &[u8], flag: u8, size: usize, link: &[u8]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..107].copy_from_slice(if flag == b'5' { b"0000755" } else { b"0000644" });
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"14361466130");
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..265].copy_from_slice(b"ustar  \0");
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

/// One entry of a hand-made tar: name, type flag, data, link target.
type TarEntry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// A tar of `entries`, ended.
fn tar(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, flag, data, link) in entries {
        out.extend_from_slice(&header(name, *flag, data.len(), link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// OpenSSH's sftp-server as a child (killed on drop), its stdin and stdout as one stream.
fn sftp_server() -> (
    tokio::process::Child,
    impl tokio::io::AsyncRead + tokio::io::AsyncWrite,
) {
    assert!(
        Path::new(SFTP_SERVER).exists(),
        "{SFTP_SERVER} is needed (openssh-sftp-server)"
    );
    let mut child = tokio::process::Command::new(SFTP_SERVER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start sftp-server");
    let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    (child, stream)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_restored_symlink_never_redirects_a_later_entry_and_unsafe_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let dir = tmp.path().join("restore");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(&dir).unwrap();
    let outside_bytes = outside.as_os_str().as_bytes();
    let archive = tar(&[
        (b"d/", b'5', b"", b""),
        (b"d/f", b'0', b"kept", b""),
        // A symlink out of the directory, then entries under it: created last, it cannot carry
        // them out.
        (b"a", b'2', b"", outside_bytes),
        (b"a/passwd", b'0', b"pwned", b""),
        // A symlink below another: made through it, it would land outside.
        (b"s", b'2', b"", outside_bytes),
        (b"s/evil", b'2', b"", b"/etc/passwd"),
        (b"d/up", b'2', b"", b"../.."),
        (b"d/up/escape", b'0', b"pwned", b""),
        (b"../escape", b'0', b"pwned", b""),
        (b"/abs", b'0', b"pwned", b""),
        (b"hl out", b'1', b"", b"../outside/x"),
        (b"hl in", b'1', b"", b"d/f"),
        (b"hl never", b'1', b"", b"not restored"),
    ]);
    let (written, ended) = runtime().block_on(async {
        let (_child, stream) = sftp_server();
        let client = SftpClient::start(stream, SftpLimits::default()).await.unwrap();
        let r = write_archive(
            &client,
            archive.as_slice(),
            dir.as_os_str().as_bytes(),
            Owners::LoginUser,
        )
        .await;
        client.shutdown().await.unwrap();
        r
    });
    ended.unwrap();
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing was written outside"
    );
    assert!(!tmp.path().join("escape").exists());
    // The entries under `a` and `d/up` made them real directories (as tar makes missing
    // parents), so those symlinks cannot be made; `s` is, and `s/evil` is not made through it.
    assert!(fs::symlink_metadata(dir.join("a")).unwrap().is_dir());
    assert_eq!(fs::read(dir.join("a/passwd")).unwrap(), b"pwned");
    assert_eq!(fs::read(dir.join("d/up/escape")).unwrap(), b"pwned");
    assert_eq!(fs::read_link(dir.join("s")).unwrap(), outside);
    assert_eq!(fs::read(dir.join("hl in")).unwrap(), b"kept");
    assert_eq!(
        fs::metadata(dir.join("hl in")).unwrap().ino(),
        fs::metadata(dir.join("d/f")).unwrap().ino()
    );
    assert!(!dir.join("hl out").exists() && !dir.join("hl never").exists());
    assert_eq!(
        written.refused, 4,
        "../escape, /abs, the hard link out, s/evil: {written:?}"
    );
    assert_eq!(
        written.failed, 3,
        "the symlinks a and d/up (directories there), hl never: {written:?}"
    );
    assert_eq!(
        written.entries, 6,
        "d, d/f, a/passwd, d/up/escape, hl in, s: {written:?}"
    );
    let outcome = SftpRestoreOutcome {
        borg_rc: 0,
        borg_said: None,
        written,
    };
    assert_eq!(outcome.verdict(), Verdict::UnsafeNames);
}

/// Relays SFTP packets from the client to `server`, holding every WRITE (type 6) for ever;
/// replies pass through.
async fn relay_holding_writes(
    client_side: tokio::io::DuplexStream,
    server: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = tokio::io::split(client_side);
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let replies = tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut held = Vec::new();
    // Ends when the client closes its side; each pass takes one packet.
    loop {
        let mut len = [0u8; 4];
        if from_client.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if from_client.read_exact(&mut body).await.is_err() {
            break;
        }
        if body.first() == Some(&6) {
            held.push(body);
            continue;
        }
        if to_server.write_all(&len).await.is_err() || to_server.write_all(&body).await.is_err() {
            break;
        }
    }
    replies.abort();
}

#[test]
fn a_client_that_stalls_a_write_ends_the_restore_by_the_request_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tar(&[(b"file", b'0', &noise(100_000, 3), b"")]);
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let (written, ended) = runtime().block_on(async {
        let (_child, server) = sftp_server();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(relay_holding_writes(theirs, server));
        let limits = SftpLimits {
            request_timeout: deadline,
            ..SftpLimits::default()
        };
        let client = SftpClient::start(ours, limits).await.unwrap();
        let run = write_archive(
            &client,
            archive.as_slice(),
            tmp.path().as_os_str().as_bytes(),
            Owners::LoginUser,
        );
        let r = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the restore ended by the deadline, not hung");
        let _ = client.shutdown().await;
        relay.abort();
        r
    });
    let e = ended.expect_err("a stalled write fails the restore");
    assert!(matches!(e, Fatal::Sftp(SftpError::Deadline { .. })), "{e}");
    assert!(e.to_string().contains("no reply within"), "{e}");
    assert_eq!(written.entries, 0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
