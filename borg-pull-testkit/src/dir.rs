//! A private temp dir per test, with its own HOME and BORG_BASE_DIR.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::command::{assert_ok, TestCommand};

/// A private temporary directory (mode 0700) with a HOME and BORG_BASE_DIR of its own.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    /// A fresh directory; removed on drop.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bp-")
            .tempdir()
            .expect("create temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let t = Self { dir };
        fs::create_dir(t.home()).unwrap();
        fs::create_dir(t.base()).unwrap();
        t
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// HOME for every process of this test.
    pub fn home(&self) -> PathBuf {
        self.join("home")
    }

    /// BORG_BASE_DIR for every process of this test.
    pub fn base(&self) -> PathBuf {
        self.join("borg-base")
    }

    /// Applies this test's private environment to `cmd`.
    pub fn env<'a>(&self, cmd: &'a mut TestCommand) -> &'a mut TestCommand {
        cmd.env("HOME", self.home())
            .env("BORG_BASE_DIR", self.base())
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_CHECK_I_KNOW_WHAT_I_AM_DOING", "NO")
            .env("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING", "YES")
            .env_remove("BORG_REPO")
            .env_remove("BORG_RSH")
            .env_remove("BORGSTORE_RSH")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
    }

    /// `borg ARGS` with this test's environment.
    pub fn borg<I, S>(&self, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = TestCommand::new("borg");
        self.env(&mut cmd).args(args);
        cmd
    }

    /// `borg init -e none REPO`, locally; panics on failure.
    pub fn init_repo(&self, repo: &Path) {
        let out = self.borg(["init", "-e", "none"]).arg(repo).output();
        assert_ok(&out, "borg init");
    }
}
