//! `pull --remote-dir DIR`: a directory borg cannot run in is refused before borg starts (exit
//! 214, naming the client, the directory, the cause and the fix), as `restore-tar` refuses its
//! own, instead of the client's shell failing its `cd` and the run blaming borg. Real sshd (the
//! login user unprivileged when the tests run as root), real borg on both ends.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, Outcome, PullFixture, TestCommand};

/// The shared pull fixture with an unencrypted repository.
struct Fixture(PullFixture);

impl std::ops::Deref for Fixture {
    type Target = PullFixture;

    fn deref(&self) -> &PullFixture {
        &self.0
    }
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture(PullFixture::new(Sshd::start()));
        let out = f.borg(&["init", "-e", "none"]).arg(&f.repo).output();
        assert_ok(&out, "borg init");
        f
    }

    /// borg on the server, with the server's borg state.
    fn borg(&self, args: &[&str]) -> TestCommand {
        self.server_borg(args)
    }

    /// `pull --remote-dir DIR ... -- create ::ARCHIVE data` (`data` relative: borg reads it in DIR).
    fn pull_in(&self, dir: &Path, archive: &str) -> Outcome {
        self.pull_with(
            &[OsStr::new("--remote-dir"), dir.as_os_str()],
            &["create", &format!("::{archive}"), "data"],
        )
        .output()
    }

    /// The archives in the repository, as `borg list --short` prints them.
    fn archives(&self) -> String {
        let out = self.borg(&["list", "--short"]).arg(&self.repo).output();
        assert_ok(&out, "borg list");
        out.stdout_text()
    }

    /// Nothing of the run is left on the client: no private directory, no process (bounded waits:
    /// the client's watcher polls).
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.sshd.tmpdir_entries().is_empty() {
            assert!(
                Instant::now() < deadline,
                "left on the client: {:?}",
                self.sshd.tmpdir_entries()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        borg_pull_testkit::assert_no_process_mentions(self.dir());
    }
}

#[test]
fn a_directory_borg_cannot_run_in_is_refused_before_borg_starts() {
    let f = Fixture::new();
    let good = f.dir().join("client dir $(x) 'q'");
    fs::create_dir_all(good.join("data")).unwrap();
    fs::write(good.join("data/file"), b"read relative to --remote-dir\n").unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&good);

    // The same command line works with a usable directory: borg runs in it.
    let out = f.pull_in(&good, "in-the-dir");
    out.assert_code(0);
    let listed = f
        .borg(&["list", "--short"])
        .arg(format!("{}::in-the-dir", f.repo.display()))
        .output();
    assert_ok(&listed, "borg list of the archive");
    assert!(
        listed.stdout_text().lines().any(|l| l == "data/file"),
        "not read in --remote-dir: {}",
        listed.stdout_text()
    );
    f.assert_clean();

    let file = f.dir().join("a regular file");
    fs::write(&file, b"not a directory\n").unwrap();
    // Another owner's 0700 directory, for the unprivileged login user (as root: root's); a test
    // not run as root logs in as itself, so its own directory without search permission.
    let closed = f.dir().join("closed");
    fs::create_dir_all(closed.join("data")).unwrap();
    let running_as_root = f.sshd.user == borg_pull_testkit::sshd::TEST_USER;
    let mode = if running_as_root { 0o700 } else { 0o600 };
    fs::set_permissions(&closed, fs::Permissions::from_mode(mode)).unwrap();
    let cases: [(&Path, &str, String); 4] = [
        (&f.dir().join("missing"), "missing", "no such directory".into()),
        (
            &f.dir().join("missing/below"),
            "missing-parent",
            "no such directory".into(),
        ),
        (&file, "regular-file", "it is not a directory".into()),
        (
            &closed,
            "not-searchable",
            format!("it is not searchable by user {}", f.sshd.user),
        ),
    ];
    for (dir, archive, why) in cases {
        let out = f.pull_in(dir, archive);
        out.assert_code(214);
        let err = out.stderr_text();
        let expected = format!(
            "cannot run borg in {:?} on the client 127.0.0.1: {why}",
            dir.display().to_string()
        );
        for needle in [expected.as_str(), "create it on the client", "--remote-dir DIR"] {
            assert!(
                err.contains(needle),
                "{archive}: no {needle:?}:\n{}",
                out.describe()
            );
        }
        for not_said in ["borg's own code", "No such file or directory", "can't cd"] {
            assert!(
                !err.contains(not_said),
                "{archive}: {not_said:?}:\n{}",
                out.describe()
            );
        }
        f.assert_clean();
    }
    // Only the archive of the usable directory: borg never ran for the others.
    assert_eq!(f.archives(), "in-the-dir\n");
}
