//! End-to-end tests of `pull --via sftp` (Borg's SSHFS method without sshfs) against a real
//! OpenSSH sshd whose key line is `restrict,command="internal-sftp -R"` (read-only SFTP, no exec),
//! the in-process FUSE mount, and real borg on the server.
//!
//! The client's SFTP server is chrooted (`ChrootDirectory`) into a tree of the test's: its
//! `/etc/passwd` and `/etc/group` there give the login user's uid and gid other names than this
//! machine's, so the archive shows whose names borg used, and its files appear at `/data` on the
//! client, a path that is not where they are on this machine.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use borg_pull_testkit::sshd::{Sshd, SshdOptions, TEST_USER};
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand, TestDir};

/// The recommended key line for the sftp method (README).
const SFTP_ONLY: &str = "restrict,command=\"internal-sftp -R\" ";

/// A name that is not UTF-8.
const LATIN1_NAME: &[u8] = b"caf\xe9";

/// The client (a chrooted read-only SFTP server on a real sshd) and the server's state.
struct Fixture {
    /// First: sshd is stopped before the trees go.
    sshd: Sshd,
    /// The client's `/`: root-owned and not writable by others, as `ChrootDirectory` wants.
    chroot: tempfile::TempDir,
    /// The server's HOME, BORG_BASE_DIR, repository and sftp work directory.
    server: TestDir,
    repo: PathBuf,
    /// borg on the server (pull's --borg and the tests' own calls).
    borg: PathBuf,
    /// borg 1 or borg 2 command lines.
    line: BorgLine,
    uid: u32,
    gid: u32,
}

/// Which command lines the server's borg takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BorgLine {
    /// borg 1.x: `REPO::ARCHIVE`, `init`, an unencrypted repository.
    One,
    /// borg 2: `-r REPO`, `repo-create`, an authenticated repository (borg 2 has no `-e none`)
    /// whose passphrase pull hands to the server's borg.
    Two,
}

/// The passphrase of the borg 2 repositories.
const BORG2_PASSPHRASE: &str = "sftp 'borg 2' $(x)";

fn id(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, TEST_USER]).output().unwrap();
    assert!(out.status.success(), "id {flag} {TEST_USER}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// Where the client trees (sshd's `ChrootDirectory`) live. sshd refuses a chroot with any
/// component above it not root's or writable by group or others: /tmp is, and so is a clone
/// anywhere below it, so the trees go to a directory of root's in /run, wherever the clone lives.
fn chroot_base() -> &'static Path {
    let base = Path::new("/run/borg-pull-test");
    fs::create_dir_all(base).unwrap();
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    for dir in base.ancestors() {
        let meta = fs::metadata(dir).unwrap();
        assert!(
            meta.uid() == 0 && meta.mode() & 0o022 == 0,
            "{} must be root's and not writable by group or others for sshd's ChrootDirectory",
            dir.display()
        );
    }
    base
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_borg(PathBuf::from("borg"))
    }

    fn with_borg(borg: PathBuf) -> Fixture {
        Self::with(borg, BorgLine::One)
    }

    fn with(borg: PathBuf, line: BorgLine) -> Fixture {
        assert!(
            rustix::process::geteuid().is_root(),
            "the sftp tests need root: sshd's ChrootDirectory (the client's own passwd) and borg's private mount namespace"
        );
        let chroot = tempfile::Builder::new()
            .prefix("sftp-client-")
            .tempdir_in(chroot_base())
            .unwrap();
        fs::set_permissions(chroot.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let options = SshdOptions {
            authorized_keys_options: SFTP_ONLY,
            extra_config: format!(
                "Subsystem sftp internal-sftp\nChrootDirectory {}\n",
                chroot.path().display()
            ),
            ..SshdOptions::default()
        };
        let sshd = Sshd::start_with(options);
        let (uid, gid) = (id("-u"), id("-g"));
        let root = chroot.path();
        fs::create_dir(root.join("etc")).unwrap();
        // The client's own names for our login user's ids, and lines a hostile client might
        // send (ignored).
        fs::write(
            root.join("etc/passwd"),
            format!(
                "croot:x:0:0:root:/root:/bin/sh\nclient-alice:x:{uid}:{gid}::/data:/bin/sh\nevil\n\
                 bad name:x:5:5::/:/bin/sh\n-opt:x:6:6::/:\n"
            ),
        )
        .unwrap();
        fs::write(
            root.join("etc/group"),
            format!("croot:x:0:\nclient-staff:x:{gid}:client-alice\nx y:x:7:\n"),
        )
        .unwrap();
        fs::write(root.join("etc/hostname"), "sftp-client\n").unwrap();
        write_tree(&root.join("data"), uid, gid);
        let server = TestDir::new();
        let repo = server.join("repo");
        let f = Fixture {
            sshd,
            chroot,
            server,
            repo,
            borg,
            line,
            uid,
            gid,
        };
        let init = match line {
            BorgLine::One => f.borg(&["init", "-e", "none", f.repo.to_str().unwrap()]),
            BorgLine::Two => f.borg(&[
                "-r",
                f.repo.to_str().unwrap(),
                "repo-create",
                "-e",
                "authenticated-blake3",
            ]),
        };
        assert_ok(&init, "creating the repository");
        f
    }

    /// How the archive `name` is given to `create` (for pull too).
    fn archive(&self, name: &str) -> String {
        match self.line {
            BorgLine::One => format!("::{name}"),
            BorgLine::Two => name.to_owned(),
        }
    }

    /// `borg ARGS` about the archive `name` (or the repository when `None`).
    fn borg_on(&self, command: &[&str], name: Option<&str>) -> TestCommand {
        let repo = self.repo.to_str().unwrap();
        let mut args: Vec<String> = Vec::new();
        match self.line {
            BorgLine::One => {
                args.extend(command.iter().map(|a| a.to_string()));
                args.push(match name {
                    Some(name) => format!("{repo}::{name}"),
                    None => repo.to_owned(),
                });
            }
            BorgLine::Two => {
                args.extend(["-r".to_owned(), repo.to_owned()]);
                args.extend(command.iter().map(|a| a.to_string()));
                args.extend(name.map(str::to_owned));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.borg_cmd(&args)
    }

    /// The repository's archive names, one a line.
    fn archive_names(&self) -> String {
        let out = match self.line {
            BorgLine::One => self.borg_on(&["list", "--short"], None).output(),
            BorgLine::Two => self
                .borg_on(&["repo-list", "--format", "{archive}{NL}"], None)
                .output(),
        };
        assert_ok(&out, "listing the archives");
        out.stdout_text()
    }

    fn work_dir(&self) -> PathBuf {
        self.server.join("sftp-work")
    }

    /// `borg-pull-server pull --via sftp ... -- ARGS` with the server's environment.
    fn pull_cmd(&self, extra: &[&str], args: &[&str]) -> TestCommand {
        let mut cmd = TestCommand::new(server_bin());
        self.server.env(&mut cmd);
        cmd.arg("pull")
            .arg("-p")
            .arg(self.sshd.port.to_string())
            .arg("-i")
            .arg(self.sshd.client_key())
            .arg("--known-hosts")
            .arg(&self.sshd.known_hosts)
            .arg("--repo")
            .arg(&self.repo)
            .args(["--via", "sftp", "--sftp-dir"])
            .arg(self.work_dir())
            .args(extra);
        // A test's own --borg (a wrapper) wins.
        if !extra.contains(&"--borg") {
            cmd.arg("--borg").arg(&self.borg);
        }
        cmd.arg(self.sshd.destination())
            .arg("--")
            .args(args)
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", self.sshd.log_path());
        if self.line == BorgLine::Two {
            cmd.env("BORG_PASSPHRASE", BORG2_PASSPHRASE);
        }
        cmd
    }

    fn pull(&self, args: &[&str]) -> Outcome {
        self.pull_cmd(&[], args).output()
    }

    fn borg(&self, args: &[&str]) -> Outcome {
        self.borg_cmd(args).output()
    }

    fn borg_cmd(&self, args: &[&str]) -> TestCommand {
        let mut cmd = TestCommand::new(&self.borg);
        self.server.env(&mut cmd).args(args);
        if self.line == BorgLine::Two {
            cmd.env("BORG_PASSPHRASE", BORG2_PASSPHRASE);
        }
        cmd
    }

    /// The mounts under the sftp work directory, from this process's mountinfo.
    fn mounts(&self) -> Vec<String> {
        let work = self.work_dir();
        let work = work.to_string_lossy();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(work.as_ref()))
            .map(str::to_owned)
            .collect()
    }

    fn client_data(&self) -> PathBuf {
        self.chroot.path().join("data")
    }
}

/// The client's tree: names (one not UTF-8), symlinks, modes, owners, mtimes, a sparse file, a
/// fifo, an empty file and one large enough for read-ahead.
fn write_tree(data: &Path, uid: u32, gid: u32) {
    fs::create_dir_all(data.join("sub/deep")).unwrap();
    let file = |name: &[u8], content: &[u8], mode: u32| {
        let path = data.join(std::ffi::OsStr::from_bytes(name));
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    file(b"small", b"hello from the client\n", 0o640);
    file(b"exec", b"#!/bin/sh\necho hi\n", 0o755);
    file(b"secret", b"only the owner\n", 0o600);
    file(LATIN1_NAME, b"latin-1 name\n", 0o644);
    file(b"empty", b"", 0o644);
    file(b"sub/deep/file", b"deep\n", 0o644);
    file(b"rootfile", b"root's\n", 0o644);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    file(b"big", &big, 0o644);
    let mut sparse = fs::File::create(data.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.seek(SeekFrom::Start(4 << 20)).unwrap();
    sparse.write_all(b"in the middle of nothing").unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("small", data.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("abs-link")).unwrap();
    let out = Command::new("mkfifo").arg(data.join("fifo")).output().unwrap();
    assert!(out.status.success(), "mkfifo: {out:?}");
    fs::set_permissions(data.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    // Owners: the login user's everywhere (it must read them), root's on one file.
    for entry in walk(data) {
        let path = data.join(std::ffi::OsStr::from_bytes(&entry));
        if entry != b"rootfile" {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).unwrap();
        }
    }
    std::os::unix::fs::lchown(data, Some(uid), Some(gid)).unwrap();
    // Times last, deepest first (creating an entry changes its directory's mtime).
    let mut entries = walk(data);
    entries.sort_by_key(|e| std::cmp::Reverse(e.iter().filter(|&&b| b == b'/').count()));
    for (i, entry) in entries.iter().enumerate() {
        let path = data.join(std::ffi::OsStr::from_bytes(entry));
        touch(&path, 1_600_000_000 + i as u64 * 1000);
    }
    touch(data, 1_500_000_000);
}

fn touch(path: &Path, secs: u64) {
    let out = Command::new("touch")
        .args(["-h", "-d", &format!("@{secs}")])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "touch {}: {out:?}", path.display());
}

/// Every entry under `dir` (relative, bytes), in no particular order.
fn walk(dir: &Path) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut todo = vec![PathBuf::new()];
    // Bounded by the tree, which the test wrote.
    while let Some(rel) = todo.pop() {
        for entry in fs::read_dir(dir.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                todo.push(rel.clone());
            }
            found.push(rel.into_os_string().into_vec());
        }
    }
    found
}

/// What a round trip must keep of each entry: name, type, permission bits, owner, mtime
/// (seconds: SFTP carries no more), and the content or link target.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    name: String,
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    content: Vec<u8>,
}

fn snapshot(dir: &Path) -> Vec<Seen> {
    let mut names = walk(dir);
    names.push(Vec::new());
    names.sort();
    names
        .into_iter()
        .map(|rel| {
            let path = if rel.is_empty() {
                dir.to_owned()
            } else {
                dir.join(std::ffi::OsStr::from_bytes(&rel))
            };
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            let (kind, content) = if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&path).unwrap().into_os_string().into_vec(),
                )
            } else if ft.is_dir() {
                ("dir", Vec::new())
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("file", fs::read(&path).unwrap())
            };
            Seen {
                name: format!("{:?}", OsString::from_vec(rel)),
                kind,
                // Symlink modes are not kept anywhere (always 0777 on Linux).
                mode: if ft.is_symlink() { 0 } else { meta.mode() & 0o7777 },
                owner: (meta.uid(), meta.gid()),
                mtime: meta.mtime(),
                content,
            }
        })
        .collect()
}

/// The first pull of `f`'s client: archive name, paths and owners as on the client, and a byte
/// for byte round trip through borg extract. Returns the client's tree as seen.
fn round_trip(f: &Fixture) -> Vec<Seen> {
    let out = f.pull(&["create", "--stats", &f.archive("{hostname}-1"), "/data"]);
    assert_ok(&out, "pull --via sftp");
    assert!(f.mounts().is_empty(), "mounted after success: {:?}", f.mounts());

    // The archive is named with the client's host name and holds the client's paths.
    assert_eq!(f.archive_names().trim(), "sftp-client-1");
    let items = f
        .borg_on(
            &["list", "--format", "{user}:{group}:{uid}:{gid} {path}{NL}"],
            Some("sftp-client-1"),
        )
        .output();
    assert_ok(&items, "borg list ARCHIVE");
    let items = items.stdout_text();
    let lines: Vec<&str> = items.lines().collect();
    assert!(lines.len() >= 15, "{items}");
    for line in &lines {
        let (owner, path) = line.split_once(' ').unwrap();
        assert!(
            path == "data" || path.starts_with("data/"),
            "mount prefix in {line:?}"
        );
        let expected = if path == "data/rootfile" {
            "croot:croot:0:0".to_owned()
        } else {
            format!("client-alice:client-staff:{}:{}", f.uid, f.gid)
        };
        assert_eq!(owner, expected, "{line}");
    }

    // Byte for byte: borg extract (as root, so owners too) gives back the client's tree.
    let restore = f.server.join("restore");
    fs::create_dir(&restore).unwrap();
    let extracted = f
        .borg_on(&["extract"], Some("sftp-client-1"))
        .current_dir(&restore)
        .output();
    assert_ok(&extracted, "borg extract");
    let want = snapshot(&f.client_data());
    let got = snapshot(&restore.join("data"));
    assert_eq!(want.len(), got.len(), "entries: {got:#?}");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    let latin1 = format!("{:?}", std::ffi::OsStr::from_bytes(LATIN1_NAME));
    assert!(got.iter().any(|s| s.name == latin1), "{latin1} missing: {got:#?}");
    assert!(got.iter().any(|s| s.kind == "fifo"));
    want
}

#[test]
fn sftp_pull_round_trips_the_client_tree_with_its_names_and_hits_the_files_cache() {
    let f = Fixture::new();
    let want = round_trip(&f);
    an_unchanged_second_run_hits_the_files_cache(&f, &want);
}

/// A second pull of the unchanged client adds, modifies and fails nothing; the same mount
/// point (one per client) is used and gone afterwards.
fn an_unchanged_second_run_hits_the_files_cache(f: &Fixture, want: &[Seen]) {
    // Except the file with the newest mtime: borg never keeps that one in its files cache (its
    // guard against mtime granularity), with a local borg too.
    let newest = want
        .iter()
        .filter(|s| s.kind == "file")
        .max_by_key(|s| s.mtime)
        .unwrap();
    let newest = format!("A data/{}", newest.name.trim_matches('"'));
    // borg 2 keeps a files cache per archive series (name): the second archive is of the
    // first's series.
    let name = match f.line {
        BorgLine::One => "second",
        BorgLine::Two => "{hostname}-1",
    };
    let out = f.pull(&["create", "--list", "--filter=AME", &f.archive(name), "/data"]);
    assert_ok(&out, "second pull");
    let changed: Vec<String> = out
        .stderr_text()
        .lines()
        .filter(|l| l.len() > 2 && matches!(&l[..2], "A " | "M " | "E "))
        .filter(|l| *l != newest)
        .map(str::to_owned)
        .collect();
    assert!(
        changed.is_empty(),
        "the files cache missed: {changed:?}\n{}",
        out.describe()
    );

    let clients: Vec<_> = fs::read_dir(f.work_dir().join("sftp")).unwrap().collect();
    assert_eq!(clients.len(), 1, "one directory per client: {clients:?}");
    assert!(
        f.mounts().is_empty(),
        "mounted after the second run: {:?}",
        f.mounts()
    );
}

#[test]
fn sftp_pull_round_trips_with_borg_2_on_the_server_and_hits_its_files_cache() {
    let Some(borg2) = borg_pull_testkit::borg2() else {
        return;
    };
    let f = Fixture::with(borg2, BorgLine::Two);
    let want = round_trip(&f);
    an_unchanged_second_run_hits_the_files_cache(&f, &want);
}

#[test]
fn sftp_pull_unmounts_after_a_failing_borg_and_passes_its_code_through() {
    let f = Fixture::new();
    assert_ok(&f.pull(&["create", "::a", "/data"]), "first pull");
    // The same archive name again: borg create fails (2, "Archive already exists").
    let out = f.pull(&["create", "::a", "/data"]);
    out.assert_code(2);
    assert!(out.stderr_text().contains("already exists"), "{}", out.describe());
    assert!(
        f.mounts().is_empty(),
        "mounted after borg failed: {:?}",
        f.mounts()
    );
}

#[test]
fn nothing_can_be_written_through_the_mount() {
    let f = Fixture::new();
    let report = f.server.join("write-report");
    let wrapper = f.server.join("borg-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ touch data/new; echo \"touch=$?\"; echo x >>data/small; echo \"append=$?\"; \
             mkdir data/newdir; echo \"mkdir=$?\"; rm -f data/secret; echo \"rm=$?\"; chmod 777 data/exec; echo \"chmod=$?\"; \
             ln -s x data/newlink; echo \"symlink=$?\"; mv data/small data/moved; echo \"rename=$?\"; \
             cat data/small >/dev/null; echo \"read=$?\"; echo \"env=$SFTP_TEST_VAR\"; }} >'{r}' 2>&1\nexec borg \"$@\"\n",
            r = report.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&f.client_data());
    let out = f
        .pull_cmd(
            &[
                "--borg",
                wrapper.to_str().unwrap(),
                "--env",
                "SFTP_TEST_VAR=for borg here",
            ],
            &["create", "::a", "/data"],
        )
        .output();
    assert_ok(&out, "pull with the writing wrapper");
    let report = fs::read_to_string(&report).unwrap();
    // --env is for the borg that runs: this server's.
    assert!(report.lines().any(|l| l == "env=for borg here"), "{report}");
    // The wrapper runs where borg does, in the mount: reading works, so the writes did reach it.
    assert!(report.lines().any(|l| l == "read=0"), "{report}");
    for op in ["touch", "append", "mkdir", "rm", "chmod", "symlink", "rename"] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{op}=")))
            .unwrap_or_else(|| panic!("{op} not reported: {report}"));
        assert_ne!(
            line,
            format!("{op}=0"),
            "{op} succeeded through the mount: {report}"
        );
    }
    assert_eq!(snapshot(&f.client_data()), before, "the client's tree changed");
}

/// How a long run is ended from outside.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// A signal to `borg-pull-server` (Ctrl-C is SIGINT).
    Signal(&'static str),
    /// `--max-runtime 3s`.
    MaxRuntime,
}

/// A pull whose borg holds (bounded) like a long backup, after showing that it runs in the
/// mount; while it holds, the mount is private to this server's user (looked at before a
/// signal, not racing `--max-runtime`); `stop` ends it with
/// `code`, the mount is gone and nothing of the run is left running.
fn a_long_run_ends_without_a_mount(stop: Stop, code: i32) {
    let f = Fixture::new();
    let started = f.server.join("started");
    let wrapper = f.server.join("borg-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nls data/small >'{s}' 2>&1\nn=0; while [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done\nexec borg \"$@\"\n",
            s = started.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut extra = vec!["--borg", wrapper.to_str().unwrap()];
    if let Stop::MaxRuntime = stop {
        extra.extend(["--max-runtime", "3s"]);
    }
    let mut cmd = f.pull_cmd(&extra, &["create", "::a", "/data"]);
    let mut run = cmd.spawn(f.server.join("pull.log"));
    borg_pull_testkit::wait_until("borg started in the mount", || {
        fs::read_to_string(&started).is_ok_and(|s| s.trim() == "data/small")
    });
    match stop {
        Stop::Signal(signal) => {
            the_mount_is_private(&f);
            run.signal(signal);
        }
        // Looked at only while nothing ends the run by time.
        Stop::MaxRuntime => {}
    }
    let status = run.wait_exit();
    assert_eq!(status.code(), Some(code), "{}", run.report());
    assert!(f.mounts().is_empty(), "mounted after {stop:?}: {:?}", f.mounts());
    // borg (here its wrapper) was stopped with its process group.
    borg_pull_testkit::assert_no_process_mentions(&wrapper);
}

/// The mount of a running pull: one, read-only, without allow_other, below directories only
/// this server's user (root) may enter; the unprivileged test user can reach nothing of it.
fn the_mount_is_private(f: &Fixture) {
    let mounts = f.mounts();
    assert_eq!(mounts.len(), 1, "not mounted while borg runs: {mounts:?}");
    let line = &mounts[0];
    // mountinfo: ... mount point, its options, ... " - " fs type, source, super options.
    let (before, after) = line.split_once(" - ").unwrap();
    let options = before.split(' ').nth(5).unwrap();
    assert!(options.split(',').any(|o| o == "ro"), "not read-only: {line}");
    assert!(!after.contains("allow_other"), "allow_other: {line}");
    assert!(after.starts_with("fuse"), "not FUSE: {line}");
    let client_dir = f.work_dir().join("sftp");
    let client_dir = fs::read_dir(&client_dir).unwrap().next().unwrap().unwrap().path();
    for dir in [f.work_dir().join("sftp"), client_dir.clone()] {
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), 0, "{}", dir.display());
    }
    let root = client_dir.join("root");
    assert!(line.contains(&format!(" {} ", root.display())), "{line}");
    // What stands in another user's way besides those directories: the mount itself (no
    // allow_other). Opened for a moment to show it, as far as the mount point.
    let chain = [
        f.server.path().to_owned(),
        f.work_dir(),
        f.work_dir().join("sftp"),
        client_dir,
    ];
    let chmod = |mode: u32| {
        for dir in &chain {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    let as_test_user = |path: &Path| {
        let (uid, gid) = (f.uid.to_string(), f.gid.to_string());
        Command::new("/usr/bin/setpriv")
            .args(["--reuid", &uid, "--regid", &gid, "--clear-groups", "--"])
            .arg("/usr/bin/stat")
            .arg(path)
            .output()
            .unwrap()
    };
    let closed = as_test_user(&root);
    chmod(0o711);
    let open = as_test_user(&root);
    let parent = as_test_user(root.parent().unwrap());
    chmod(0o700);
    for out in [&closed, &open] {
        assert!(!out.status.success(), "{TEST_USER} reached the mount: {out:?}");
        let refusal = String::from_utf8_lossy(&out.stderr);
        assert!(refusal.contains("Permission denied"), "{refusal}");
    }
    // The path was open: the refusal above was the mount's.
    assert!(parent.status.success(), "{parent:?}");
}

#[test]
fn sigterm_stops_borg_and_unmounts() {
    a_long_run_ends_without_a_mount(Stop::Signal("TERM"), 202);
}

#[test]
fn ctrl_c_stops_borg_and_unmounts() {
    a_long_run_ends_without_a_mount(Stop::Signal("INT"), 202);
}

#[test]
fn max_runtime_stops_borg_and_unmounts() {
    a_long_run_ends_without_a_mount(Stop::MaxRuntime, 217);
}

/// One named test per option or argument that makes no sense with `--via sftp`: exit 200 before
/// anything is made here.
macro_rules! usage_errors {
    ($($name:ident: $extra:expr, $args:expr;)*) => {$(
        #[test]
        fn $name() {
            let f = Fixture::new();
            let extra: &[&str] = &$extra;
            let out = f.pull_cmd(extra, &$args).output();
            out.assert_code(200);
            assert!(out.stderr_text().contains("--via sftp"), "{}", out.describe());
            assert!(!f.work_dir().exists(), "a refused run made its work directory");
        }
    )*};
}

usage_errors! {
    install_relay_is_a_usage_error_with_sftp: ["--install-relay"], ["create", "::a", "/data"];
    remote_dir_is_a_usage_error_with_sftp: ["--remote-dir", "/tmp"], ["create", "::a", "/data"];
    storage_quota_is_a_usage_error_with_sftp: ["--storage-quota", "10G"], ["create", "::a", "/data"];
    a_command_other_than_create_is_a_usage_error_with_sftp: [], ["list", "::a"];
    a_path_with_dotdot_is_a_usage_error_with_sftp: [], ["create", "::a", "/data/../etc"];
    paths_from_command_is_a_usage_error_with_sftp: [], ["create", "--paths-from-command", "::a", "--", "sh"];
    a_repository_in_the_archive_is_a_usage_error_with_sftp: [], ["create", "/srv/repo::a", "/data"];
}

#[test]
fn sftp_pull_round_trips_with_borg_1_4_on_the_server() {
    let Some(borg14) = borg_pull_testkit::borg14() else {
        return;
    };
    let f = Fixture::with_borg(borg14);
    round_trip(&f);
}

/// After `kill -9` of a pull the client's tree stays mounted (the FUSE server is gone: ENOTCONN);
/// the next run of the same client finds it at its stable path and removes it first.
#[test]
fn a_stale_mount_of_a_killed_run_is_removed_by_the_next_run() {
    let f = Fixture::new();
    let started = f.server.join("started");
    let wrapper = f.server.join("borg-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nls data/small >'{s}' 2>&1\nn=0; while [ -e '{s}' ] && [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done\nexit 3\n",
            s = started.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = f.pull_cmd(
        &["--borg", wrapper.to_str().unwrap()],
        &["create", "::a", "/data"],
    );
    let mut run = cmd.spawn(f.server.join("pull.log"));
    borg_pull_testkit::wait_until("borg started in the mount", || {
        fs::read_to_string(&started).is_ok_and(|s| s.trim() == "data/small")
    });
    run.signal("KILL");
    let _ = run.wait_exit();
    // The wrapper (its own process group) ends once its file is gone.
    fs::remove_file(&started).unwrap();
    assert_eq!(f.mounts().len(), 1, "the killed run's mount: {:?}", f.mounts());
    let out = f.pull(&["create", "::b", "/data"]);
    assert_ok(&out, "the run after kill -9");
    assert!(
        f.mounts().is_empty(),
        "mounted after the next run: {:?}",
        f.mounts()
    );
    let listing = f.borg(&["list", "--short", f.repo.to_str().unwrap()]);
    assert_eq!(listing.stdout_text().trim(), "b");
}

/// A place of the unprivileged test user's own (0700) with what a pull needs as that user: a copy
/// of the client key and known_hosts, HOME, BORG_BASE_DIR, the sftp work directory.
struct UserSide {
    dir: tempfile::TempDir,
    key: PathBuf,
    known_hosts: PathBuf,
}

impl UserSide {
    fn new(f: &Fixture) -> UserSide {
        let dir = tempfile::Builder::new().prefix("bp-user-").tempdir().unwrap();
        let own = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(path, Some(f.uid), Some(f.gid)).unwrap();
        };
        own(dir.path(), 0o700);
        for sub in ["home", "base"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
            own(&dir.path().join(sub), 0o700);
        }
        let key = dir.path().join("key");
        fs::copy(f.sshd.client_key(), &key).unwrap();
        own(&key, 0o600);
        let known_hosts = dir.path().join("known_hosts");
        fs::copy(&f.sshd.known_hosts, &known_hosts).unwrap();
        own(&known_hosts, 0o600);
        UserSide {
            dir,
            key,
            known_hosts,
        }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `PROGRAM ARGS` as the test user (its uid and gid, no other groups), with PATH `path`.
    fn command(&self, f: &Fixture, path: &str, program: &Path, args: &[&OsStr]) -> TestCommand {
        let mut cmd = TestCommand::new("/usr/bin/setpriv");
        cmd.args(["--reuid", &f.uid.to_string(), "--regid", &f.gid.to_string()])
            .args(["--clear-groups", "--"])
            .arg(program)
            .args(args)
            .env("PATH", path)
            .env("HOME", self.join("home"))
            .env("BORG_BASE_DIR", self.join("base"))
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("BORG_REPO")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY");
        cmd
    }

    /// `borg-pull-server pull --via sftp` of `f`'s client as the test user, into its own repo.
    fn pull(&self, f: &Fixture, path: &str) -> Outcome {
        let port = f.sshd.port.to_string();
        let args: Vec<OsString> = vec![
            "pull".into(),
            "-p".into(),
            port.into(),
            "-i".into(),
            self.key.clone().into(),
            "--known-hosts".into(),
            self.known_hosts.clone().into(),
            "--repo".into(),
            self.join("repo").into(),
            "--via".into(),
            "sftp".into(),
            "--sftp-dir".into(),
            self.join("work").into(),
            "--borg".into(),
            f.borg.clone().into(),
            f.sshd.destination().into(),
            "--".into(),
            "create".into(),
            "::a".into(),
            "/data".into(),
        ];
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        self.command(f, path, &server_bin(), &args)
            .attach_log("sshd log", f.sshd.log_path())
            .output()
    }
}

/// Not root and no fusermount3 on PATH (Debian's fuse3 missing): the run names what is missing
/// and exits 221, before borg runs; nothing is mounted.
#[test]
fn without_root_and_without_fusermount3_the_run_names_what_is_missing() {
    let f = Fixture::new();
    let user = UserSide::new(&f);
    let out = user.pull(&f, "/nonexistent-bin");
    out.assert_code(221);
    let text = out.stderr_text();
    assert!(
        text.contains("fusermount3") && text.contains("fuse3"),
        "{}",
        out.describe()
    );
    assert!(!user.join("repo").exists(), "{}", out.describe());
    let work = user.join("work");
    let work = work.to_string_lossy();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(work.as_ref()), "{mountinfo}");
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// The fleet's `via = "sftp"` end to end: `run` pulls a client that allows only read-only SFTP
/// (the same chrooted sshd), with the mount under the unit's RUNTIME_DIRECTORY; the archive has
/// the client's paths and names, and no mount is left; check-config --connect asks its SFTP
/// server.
#[test]
fn run_pulls_a_fleet_client_with_via_sftp() {
    let f = Fixture::new();
    let config = f.server.join("fleet.toml");
    fs::write(
        &config,
        format!(
            "[server]\nstate_dir = {state}\nborg = {borg}\n\n[defaults]\nuser = {user}\nidentity = {key}\n\
             known_hosts = {kh}\n\n[[client]]\nname = \"appliance\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             repo = {repo}\nvia = \"sftp\"\nargs = [\"create\", \"--stats\", \"::{{hostname}}-fleet\", \"/data\"]\n",
            state = toml_str(f.server.join("state")),
            borg = toml_str(&f.borg),
            user = toml_str(&f.sshd.user),
            key = toml_str(f.sshd.client_key()),
            kh = toml_str(&f.sshd.known_hosts),
            port = f.sshd.port,
            repo = toml_str(&f.repo),
        ),
    )
    .unwrap();
    let mut cmd = TestCommand::new(server_bin());
    f.server.env(&mut cmd);
    let out = cmd
        .args(["run", "--json", "--config"])
        .arg(&config)
        .env("RUNTIME_DIRECTORY", f.work_dir())
        .env("BORG_PULL_LOG", "info")
        .attach_log("sshd log", f.sshd.log_path())
        .output();
    assert_ok(&out, "run with via = \"sftp\"");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["client"], "appliance", "{}", out.describe());
    assert_eq!(f.archive_names().trim(), "sftp-client-fleet");
    let items = f
        .borg_on(
            &["list", "--format", "{user}:{group} {path}{NL}"],
            Some("sftp-client-fleet"),
        )
        .output();
    assert_ok(&items, "borg list");
    let items = items.stdout_text();
    assert!(
        items.lines().any(|l| l == "client-alice:client-staff data/small"),
        "{items}"
    );
    assert!(f.work_dir().join("sftp").is_dir(), "not under RUNTIME_DIRECTORY");
    assert!(f.mounts().is_empty(), "mounted after run: {:?}", f.mounts());

    // check-config --connect looks at such a client through its SFTP server alone.
    let mut cmd = TestCommand::new(server_bin());
    f.server.env(&mut cmd);
    let out = cmd
        .args(["check-config", "--connect", "--config"])
        .arg(&config)
        .attach_log("sshd log", f.sshd.log_path())
        .output();
    assert_ok(&out, "check-config --connect");
    assert!(
        out.stdout_text()
            .contains("SFTP subsystem answers (working directory"),
        "{}",
        out.describe()
    );
}

/// `pull --via sftp` of a client on `sshd` (not the chrooted fixture), into an unused repository.
fn pull_from(sshd: &Sshd, server: &TestDir) -> Outcome {
    let mut cmd = TestCommand::new(server_bin());
    server.env(&mut cmd);
    cmd.arg("pull")
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg("-i")
        .arg(sshd.client_key())
        .arg("--known-hosts")
        .arg(&sshd.known_hosts)
        .arg("--repo")
        .arg(server.join("repo"))
        .args(["--via", "sftp", "--sftp-dir"])
        .arg(server.join("sftp-work"))
        .arg(sshd.destination())
        .args(["--", "create", "::a", "/tmp"])
        .attach_log("sshd log", sshd.log_path())
        .output()
}

/// A client's sshd without a `Subsystem sftp` line refuses the subsystem: exit 214 (the client's
/// set-up), naming the sshd_config line and the recommended key line; nothing is made here.
#[test]
fn a_client_without_an_sftp_subsystem_exits_214_naming_the_fix() {
    let sshd = Sshd::start_with(SshdOptions {
        authorized_keys_options: "restrict ",
        ..SshdOptions::default()
    });
    let server = TestDir::new();
    let out = pull_from(&sshd, &server);
    out.assert_code(214);
    let text = out.stderr_text();
    assert!(
        text.contains("refused the sftp subsystem")
            && text.contains("Subsystem sftp internal-sftp")
            && text.contains("internal-sftp -R"),
        "{}",
        out.describe()
    );
    assert!(!server.join("sftp-work").exists(), "{}", out.describe());
}

/// What answers the subsystem is not an SFTP server (a forced command that prints text): the
/// first reply breaks the protocol, the run exits 216 (the client misbehaved) without mounting.
#[test]
fn a_client_whose_sftp_answer_is_not_sftp_exits_216() {
    let sshd = Sshd::start_with(SshdOptions {
        authorized_keys_options: "restrict,command=\"echo this is not sftp\" ",
        extra_config: "Subsystem sftp internal-sftp\n".into(),
        ..SshdOptions::default()
    });
    let server = TestDir::new();
    let out = pull_from(&sshd, &server);
    out.assert_code(216);
    assert!(
        out.stderr_text()
            .contains("starting the SFTP session: sftp: the client's SFTP server broke the protocol"),
        "{}",
        out.describe()
    );
    assert!(!server.join("sftp-work").exists(), "{}", out.describe());
}

/// The client's `/etc/passwd` is longer than the bound on what we read of it (4 MiB): the run
/// stops before mounting with exit 216 naming the file and the bound.
#[test]
fn a_client_passwd_beyond_the_bound_exits_216_before_mounting() {
    let f = Fixture::new();
    let line = format!("client-alice:x:{}:{}::/data:/bin/sh\n", f.uid, f.gid);
    let passwd = line.repeat(4 * 1024 * 1024 / line.len() + 1);
    fs::write(f.chroot.path().join("etc/passwd"), passwd).unwrap();
    let out = f.pull(&["create", "::a", "/data"]);
    out.assert_code(216);
    assert!(
        out.stderr_text()
            .contains("/etc/passwd is longer than 4194304 bytes"),
        "{}",
        out.describe()
    );
    assert!(f.mounts().is_empty(), "{:?}", f.mounts());
    assert_eq!(f.archive_names().trim(), "");
}
