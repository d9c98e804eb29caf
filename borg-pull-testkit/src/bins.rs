//! Our binaries as cargo built them, for the tests that spawn them.
//!
//! Cargo sets `CARGO_BIN_EXE_*` only while compiling the tests of the package that has the
//! binaries, never in a library such as this one; it does build those binaries before running
//! that package's integration tests, next to the `deps/` directory holding the test binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `borg-pull-server` (`BORG_PULL_SERVER_BIN` overrides it, for trying another build).
pub fn server_bin() -> PathBuf {
    std::env::var_os("BORG_PULL_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| built("borg-pull-server"))
}

/// `borg-pull-relay` as cargo built it: possibly under a directory the sshd's login user cannot
/// enter (a checkout in a private home or `mktemp -d`), so pull tests copy it somewhere reachable.
pub fn relay_bin() -> PathBuf {
    built("borg-pull-relay")
}

/// `name` in the target directory of the running test binary (`target/PROFILE/deps/it-HASH`).
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("{} is not in a cargo target directory", exe.display()));
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: cargo builds it only for borg-pull-cli's own tests \
         (run them with `cargo test -p borg-pull-cli`)",
        path.display()
    );
    path
}

/// The relay in `dir/bin/`, where the sshd's login user can run it (see [`relay_bin`]): a hard
/// link, which costs nothing (the debug relay is ~80 MB), or a copy across file systems.
pub fn reachable_relay(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let relay = bin.join("borg-pull-relay");
    if fs::hard_link(relay_bin(), &relay).is_err() {
        fs::copy(relay_bin(), &relay).unwrap();
    }
    fs::set_permissions(&relay, fs::Permissions::from_mode(0o755)).unwrap();
    relay
}
