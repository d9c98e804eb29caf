//! End-to-end tests of `borg-pull-server restore-tar` against a real OpenSSH sshd (started per
//! test on 127.0.0.1) and real borg on the server: the archive is made locally, restored into a
//! directory "on the client" through sshd and `tar -x`, and compared byte for byte and by `stat`.
//!
//! Run as root, the tests that check owners log in as root (the fixture's sshd permits root
//! logins with its key) and pass `--numeric-owner`; the others log in as the fixture's
//! unprivileged user, so tar's non-root path is covered too.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, TestCommand};

const PASSPHRASE: &str = "restore 'pass' $(word) phrase";
const ARCHIVE: &str = "it's a $(restore) `test` archive";
/// The sparse file's size: 64 MiB, with a little data in the middle.
const SPARSE_SIZE: u64 = 64 << 20;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// An sshd, an encrypted repository on "the server" and a source tree archived in it.
struct Fixture {
    sshd: Sshd,
    repo: PathBuf,
    server_base: PathBuf,
    /// The archived tree is `src/tree`; the archive holds `tree/...`.
    src: PathBuf,
}

impl Fixture {
    fn new(sparse: bool) -> Option<Fixture> {
        if !borg_pull_testkit::require_tool("borg") || !borg_pull_testkit::require_tool("tar") {
            return None;
        }
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let f = Fixture {
            repo: d.join("repo"),
            server_base: d.join("server-base"),
            src: d.join("src"),
            sshd,
        };
        assert_ok(&f.borg(&["init", "-e", "repokey"]).output(), "borg init");
        make_tree(&f.src.join("tree"), sparse);
        let out = f
            .borg(&[
                OsString::from("create"),
                format!("::{ARCHIVE}").into(),
                "tree".into(),
            ])
            .current_dir(&f.src)
            .output();
        assert_ok(&out, "borg create");
        Some(f)
    }

    /// borg on the server, with the repository and passphrase in its environment.
    fn borg<S: AsRef<OsStr>>(&self, args: &[S]) -> TestCommand {
        let mut cmd = TestCommand::new("borg");
        cmd.args(args)
            .env("BORG_REPO", &self.repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND");
        cmd
    }

    /// A fresh directory for the client to restore into, owned by `login`.
    fn target(&self, name: &str, login: &str) -> PathBuf {
        let dir = self.sshd.dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        if login != "root" {
            borg_pull_testkit::sshd::chown_to_login_user(&dir);
        }
        dir
    }

    /// `restore-tar` logging in as `login`, with `options` before the destination and `paths`
    /// after it.
    fn restore<O: AsRef<OsStr>>(&self, login: &str, options: &[O], paths: &[&[u8]]) -> TestCommand {
        self.restore_archive(ARCHIVE, login, options, paths)
    }

    /// [`Fixture::restore`] of another archive.
    fn restore_archive<O: AsRef<OsStr>>(
        &self,
        archive: &str,
        login: &str,
        options: &[O],
        paths: &[&[u8]],
    ) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("restore-tar")
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--archive")
            .arg(archive)
            .args(options)
            .arg(format!("{login}@127.0.0.1"))
            .args(paths.iter().map(|p| OsStr::from_bytes(p)))
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    /// Waits until no process mentions this test's directory (borg export-tar included).
    fn assert_no_processes_left(&self) {
        borg_pull_testkit::assert_no_process_mentions(self.sshd.dir.path());
    }
}

/// Who logs in: root where owners are checked (when the tests run as root), else the fixture's
/// login user.
fn owner_checking_login(f: &Fixture) -> String {
    if is_root() {
        "root".into()
    } else {
        f.sshd.user.clone()
    }
}

/// The uid and primary gid of `user` (`id -u`, `id -g`).
fn ids_of(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = TestCommand::new("id").arg(flag).arg(user).output();
        assert_ok(&out, "id");
        out.stdout_text().trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
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

/// Hostile names, hard links, symlinks (relative, absolute, dangling), a sparse file, modes,
/// owners (as root) and mtimes.
fn make_tree(root: &Path, sparse: bool) {
    let names: &[&[u8]] = &[
        b"plain.txt",
        b"with space",
        b"it's",
        b"double\"quote",
        b"$(touch pwned)",
        b"`id`",
        b"new\nline",
        b"back\\slash",
        b"-dash-first",
        b"\xff\xfe not utf-8",
    ];
    let sub = root.join("sub dir/$HOME");
    fs::create_dir_all(&sub).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for (i, name) in names.iter().enumerate() {
        let mut content = Vec::new();
        for _ in 0..(i * 997 + 13) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            content.push(seed as u8);
        }
        fs::write(root.join(OsStr::from_bytes(name)), &content).unwrap();
        fs::write(sub.join(OsStr::from_bytes(name)), name).unwrap();
    }
    // Hard links, also across directories.
    fs::hard_link(root.join("plain.txt"), root.join("hard link")).unwrap();
    fs::hard_link(root.join("it's"), sub.join("hard 'link'")).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory.
    std::os::unix::fs::symlink("plain.txt", root.join("rel link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/$(x)", root.join("dangling link")).unwrap();
    std::os::unix::fs::symlink("sub dir", root.join("dir link")).unwrap();
    // Modes.
    let modes = root.join("modes");
    fs::create_dir(&modes).unwrap();
    for (name, mode) in [("0600", 0o600), ("0755", 0o755), ("0444", 0o444), ("0640", 0o640)] {
        let p = modes.join(name);
        fs::write(&p, name).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    let setgid = modes.join("setgid dir");
    fs::create_dir(&setgid).unwrap();
    fs::write(setgid.join("inside"), b"x").unwrap();
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2755)).unwrap();
    if sparse {
        let f = fs::File::create(root.join("sparse file")).unwrap();
        f.set_len(SPARSE_SIZE).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data in the middle of a hole", SPARSE_SIZE / 2)
            .unwrap();
        let m = fs::metadata(root.join("sparse file")).unwrap();
        assert!(m.blocks() * 512 < m.len() / 2, "the source file is not sparse");
    }
    if is_root() {
        // Owners that exist nowhere: only --numeric-owner as root brings them back.
        let out = TestCommand::new("chown")
            .arg("-h")
            .arg("12345:54321")
            .arg(root.join("plain.txt"))
            .arg(root.join("rel link"))
            .arg(&setgid)
            .output();
        assert_ok(&out, "chown");
    }
    // mtimes last, deepest first (writing into a directory changes its mtime).
    let mut all = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        all.push(dir.clone());
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                all.push(entry.path());
            }
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        touch(path, 1_000_000_000 + 86_400 * i as i64);
    }
}

/// What `stat` says about one entry, plus a digest of its content or its link target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    mtime: i64,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    content: u64,
    target: Option<Vec<u8>>,
}

/// FNV-1a over a file's bytes, read in pieces (the sparse file is 64 MiB).
fn digest(path: &Path) -> u64 {
    use std::io::Read;
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h;
        }
        for &b in &buf[..n] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Relative path -> [`Entry`], the root included (as "").
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut map = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        map.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
                nlink: m.nlink(),
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.len() },
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

/// Compares two snapshots entry by entry; `owner` maps the source's owner to the expected one.
fn assert_same_trees(
    restored: &BTreeMap<Vec<u8>, Entry>,
    source: &BTreeMap<Vec<u8>, Entry>,
    owner: impl Fn(&Entry) -> (u32, u32),
) {
    let names = |m: &BTreeMap<Vec<u8>, Entry>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(restored),
        names(source),
        "the restored tree has other entries"
    );
    for (name, want) in source {
        let got = &restored[name];
        let mut want = want.clone();
        (want.uid, want.gid) = owner(&want);
        assert_eq!(got, &want, "{:?}", String::from_utf8_lossy(name));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` in the background, checking all the while that no process's argv holds the
/// passphrase; returns how it ended.
fn run_watching_argv(cmd: &mut TestCommand, log: PathBuf) -> (std::process::ExitStatus, String) {
    let mut running = cmd.spawn(log.clone());
    let mut checks = 0;
    while running.is_running() {
        let leaked = borg_pull_testkit::processes_mentioning(PASSPHRASE.as_bytes());
        assert!(leaked.is_empty(), "the passphrase is in an argv: {leaked:?}");
        checks += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(checks > 0);
    let status = running.wait_exit();
    (status, fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_hostile_tree_round_trips_byte_for_byte_and_by_stat() {
    let Some(f) = Fixture::new(true) else { return };
    let login = owner_checking_login(&f);
    let target = f.target("restored 'here' $(x)", &login);
    let mut options: Vec<OsString> = vec!["--remote-dir".into(), target.clone().into()];
    if login == "root" {
        options.push("--numeric-owner".into());
    }
    let mut cmd = f.restore(&login, &options, &[]);
    let (status, log) = run_watching_argv(&mut cmd, f.sshd.dir.path().join("restore.log"));
    assert_eq!(status.code(), Some(0), "{log}");
    f.assert_no_processes_left();

    let source = snapshot(&f.src.join("tree"));
    let restored = snapshot(&target.join("tree"));
    let login_ids = ids_of(&login);
    assert_same_trees(&restored, &source, |e| {
        if login == "root" {
            (e.uid, e.gid)
        } else {
            // tar as another user cannot give files away: everything belongs to the login user.
            login_ids
        }
    });
    // The owners really were exotic (not root's), so --numeric-owner did the work.
    if login == "root" {
        assert_eq!(restored[&b"plain.txt"[..]].uid, 12345);
        assert_eq!(restored[&b"sub dir"[..]].uid, 0);
    }
    // Hard links are one inode again.
    let ino = |p: &str| fs::metadata(target.join("tree").join(p)).unwrap().ino();
    assert_eq!(ino("plain.txt"), ino("hard link"));
    assert_eq!(ino("it's"), ino("sub dir/$HOME/hard 'link'"));
    // export-tar writes no sparse entries (borg's docs: no --sparse), so GNU tar fills the hole:
    // same size and bytes, but fully allocated.
    let m = fs::metadata(target.join("tree/sparse file")).unwrap();
    assert_eq!(m.len(), SPARSE_SIZE);
    assert!(
        m.blocks() * 512 >= SPARSE_SIZE,
        "export-tar became sparse-aware: assert that instead ({} blocks)",
        m.blocks()
    );
}

#[test]
fn a_partial_restore_brings_back_only_the_path() {
    let Some(f) = Fixture::new(false) else { return };
    // The unprivileged login user: tar's non-root path.
    let login = f.sshd.user.clone();
    let target = f.target("partial", &login);
    let out = f
        .restore(
            &login,
            &[OsStr::new("--remote-dir"), target.as_os_str()],
            &[b"tree/sub dir/$HOME"],
        )
        .output();
    out.assert_code(0);
    let restored = snapshot(&target);
    let mut names: Vec<String> = restored.keys().map(|k| text(k)).collect();
    names.sort();
    assert!(
        names.iter().all(|n| n.is_empty() || n.starts_with("tree")),
        "{names:?}"
    );
    assert!(!restored.contains_key(&b"tree/plain.txt"[..]), "{names:?}");
    let source = snapshot(&f.src.join("tree/sub dir/$HOME"));
    let restored = snapshot(&target.join("tree/sub dir/$HOME"));
    let login_ids = ids_of(&login);
    // Within the path, hard links to files outside it come back as files of their own.
    assert_same_trees(
        &restored
            .into_iter()
            .map(|(k, mut e)| {
                e.nlink = 0;
                (k, e)
            })
            .collect(),
        &source
            .into_iter()
            .map(|(k, mut e)| {
                e.nlink = 0;
                (k, e)
            })
            .collect(),
        |_| login_ids,
    );
}

#[test]
fn a_missing_directory_fails_before_anything_streams() {
    let Some(f) = Fixture::new(false) else { return };
    // A borg that records being started: it must not be.
    let started = f.sshd.dir.path().join("borg started");
    let borg = f.sshd.dir.path().join("borg-wrapper");
    fs::write(
        &borg,
        format!("#!/bin/sh\ntouch '{}'\nexec borg \"$@\"\n", started.display()),
    )
    .unwrap();
    fs::set_permissions(&borg, fs::Permissions::from_mode(0o755)).unwrap();
    let missing = f.sshd.dir.path().join("no such dir");
    let out = f
        .restore(
            &f.sshd.user,
            &[
                OsStr::new("--remote-dir"),
                missing.as_os_str(),
                OsStr::new("--borg"),
                borg.as_os_str(),
            ],
            &[],
        )
        .output();
    out.assert_code(214);
    let err = out.stderr_text();
    assert!(
        err.contains("no such directory") && err.contains("no such dir"),
        "{}",
        out.describe()
    );
    assert!(
        !started.exists(),
        "borg export-tar was started: {}",
        out.describe()
    );

    // A missing tar is named with the flag that fixes it.
    let target = f.target("t", &f.sshd.user);
    let out = f
        .restore(
            &f.sshd.user,
            &[
                OsStr::new("--remote-dir"),
                target.as_os_str(),
                OsStr::new("--remote-tar"),
                OsStr::new("/nonexistent/tar"),
            ],
            &[],
        )
        .output();
    out.assert_code(214);
    assert!(
        out.stderr_text().contains("tar program") && out.stderr_text().contains("--remote-tar"),
        "{}",
        out.describe()
    );
    assert!(!started.exists());
}

#[test]
fn a_missing_archive_names_borgs_code_and_tars() {
    let Some(f) = Fixture::new(false) else { return };
    let target = f.target("t", &f.sshd.user);
    let out = f
        .restore_archive(
            "no such archive",
            &f.sshd.user,
            &[OsStr::new("--remote-dir"), target.as_os_str()],
            &[],
        )
        .output();
    out.assert_code(2);
    let err = out.stderr_text();
    assert!(
        err.contains("borg export-tar exited 2") && err.contains("does not exist"),
        "{}",
        out.describe()
    );
    assert!(err.contains("tar on the client exited"), "{}", out.describe());
    assert!(err.contains("(0 bytes sent)"), "{}", out.describe());
    assert_eq!(
        fs::read_dir(&target).unwrap().count(),
        0,
        "something was restored"
    );
    f.assert_no_processes_left();
}

#[test]
fn tar_failing_mid_stream_stops_borg_and_names_tar() {
    let Some(f) = Fixture::new(true) else { return };
    // A "tar" that reads a little, then fails like a full disk.
    let bin = f.sshd.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = bin.join("failing tar");
    fs::write(
        &tar,
        "#!/bin/sh\nhead -c 100000 >/dev/null\necho 'fake tar: No space left on device' >&2\nexit 2\n",
    )
    .unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o755)).unwrap();
    let target = f.target("t", &f.sshd.user);
    let started = Instant::now();
    let out = f
        .restore(
            &f.sshd.user,
            &[
                OsStr::new("--remote-dir"),
                target.as_os_str(),
                OsStr::new("--remote-tar"),
                tar.as_os_str(),
            ],
            &[],
        )
        .output();
    out.assert_code(2);
    let err = out.stderr_text();
    assert!(
        err.contains("tar on the client exited 2: fake tar: No space left on device")
            && err.contains("borg export-tar was stopped"),
        "{}",
        out.describe()
    );
    // Stopped, not streamed to the end: far less than the 64 MiB archive was sent.
    let sent: u64 = err
        .split("sent in full (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {}", out.describe()));
    assert!(sent < SPARSE_SIZE / 4, "{sent} bytes sent: {}", out.describe());
    f.assert_no_processes_left();
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn help_states_tars_limits() {
    let out = TestCommand::new(server_bin())
        .args(["restore-tar", "--help"])
        .output();
    assert_ok(&out, "restore-tar --help");
    let help = out.stdout_text();
    for needle in [
        "GNU tar format",
        "ACLs",
        "xattrs",
        "BSD flags",
        "Hard links",
        "--numeric-owner",
        "214",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_tar_that_stops_reading_holds_no_archive_in_memory_and_max_runtime_ends_it() {
    let Some(f) = Fixture::new(true) else { return };
    // A "tar" that never reads: the client's window fills, then borg's pipe; nothing may pile up
    // in our memory (the archive is 64 MiB).
    let bin = f.sshd.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = bin.join("stalling tar");
    fs::write(&tar, "#!/bin/sh\nexec sleep 20\n").unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o755)).unwrap();
    let target = f.target("t", &f.sshd.user);
    let mut cmd = f.restore(
        &f.sshd.user,
        &[
            OsStr::new("--remote-dir"),
            target.as_os_str(),
            OsStr::new("--remote-tar"),
            tar.as_os_str(),
            OsStr::new("--max-runtime"),
            OsStr::new("5s"),
        ],
        &[],
    );
    let log = f.sshd.dir.path().join("restore.log");
    let started = Instant::now();
    let mut running = cmd.spawn(log.clone());
    let mut peak = 0;
    while running.is_running() {
        peak = peak.max(rss_kib(running.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = running.wait_exit();
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(217), "{out}");
    assert!(
        out.contains("maximum run time of 5 s") && out.contains("--max-runtime"),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{out}");
    eprintln!("restore-tar peak RSS while tar stalled: {peak} KiB");
    // The window (2 MiB from OpenSSH) and our buffers, not the archive.
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB: the archive piled up in memory\n{out}"
    );
    f.assert_no_processes_left();
}

#[test]
fn sigint_mid_stream_stops_borg_and_tar_and_exits_202() {
    let Some(f) = Fixture::new(true) else { return };
    let bin = f.sshd.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = bin.join("slow tar");
    fs::write(&tar, "#!/bin/sh\nhead -c 1000 >/dev/null\nexec sleep 20\n").unwrap();
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o755)).unwrap();
    let target = f.target("t", &f.sshd.user);
    let mut cmd = f.restore(
        &f.sshd.user,
        &[
            OsStr::new("--remote-dir"),
            target.as_os_str(),
            OsStr::new("--remote-tar"),
            tar.as_os_str(),
        ],
        &[],
    );
    let mut running = cmd.spawn(f.sshd.dir.path().join("restore.log"));
    // borg export-tar runs once tar is ready on the client.
    let mut location = f.repo.as_os_str().as_bytes().to_vec();
    location.extend_from_slice(b"::");
    borg_pull_testkit::wait_until("borg export-tar to start", || {
        running.assert_running();
        !borg_pull_testkit::processes_mentioning(&location).is_empty()
    });
    running.signal("INT");
    let status = running.wait_exit();
    assert_eq!(status.code(), Some(202), "{}", running.report());
    f.assert_no_processes_left();
}
