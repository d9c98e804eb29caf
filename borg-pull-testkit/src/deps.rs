//! What the tests need from the machine: tools on PATH, the borg 1.4 and 2 venvs, the Debian 13
//! client tree. A missing one skips the test, or fails it under `BORG_PULL_REQUIRE_DEPS=1` (CI,
//! `scripts/test`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::command::TestCommand;

/// `true` if `tool` is on PATH. If it is not: panics when BORG_PULL_REQUIRE_DEPS=1 (CI), otherwise
/// prints a note and returns `false` so the caller can skip.
pub fn require_tool(tool: &str) -> bool {
    if find_on_path(tool).is_some() {
        return true;
    }
    missing(&format!("{tool} (not on PATH)"))
}

/// Whether missing dependencies fail the tests (CI, `scripts/test`) instead of skipping them.
pub fn deps_required() -> bool {
    std::env::var_os("BORG_PULL_REQUIRE_DEPS").is_some_and(|v| v == "1")
}

/// Panics about `what` under BORG_PULL_REQUIRE_DEPS=1, else prints a note; returns `false`.
pub fn missing(what: &str) -> bool {
    if deps_required() {
        panic!("{what} is required (BORG_PULL_REQUIRE_DEPS=1); run scripts/install-deps");
    }
    eprintln!("note: skipping: {what} is missing (set BORG_PULL_REQUIRE_DEPS=1 to make this fail)");
    false
}

/// Where `scripts/install-deps` puts the borg 2 beta (`BORG_PULL_BORG2` overrides it).
pub const BORG2_DEFAULT: &str = "/opt/borg-pull/venv-borg2/bin/borg";

/// Where `scripts/install-deps` puts borg 1.4 (`BORG_PULL_BORG14` overrides it).
pub const BORG14_DEFAULT: &str = "/opt/borg-pull/venv-borg1.4/bin/borg";

/// The borg 2 beta, runnable by others (the tests' sshd login user runs it too); `None` (skip)
/// when missing, a failure under BORG_PULL_REQUIRE_DEPS=1.
pub fn borg2() -> Option<PathBuf> {
    venv_borg("BORG_PULL_BORG2", BORG2_DEFAULT, "borg 2.")
}

/// borg 1.4 (the first with modern exit codes), like [`borg2`].
pub fn borg14() -> Option<PathBuf> {
    venv_borg("BORG_PULL_BORG14", BORG14_DEFAULT, "borg 1.4.")
}

fn venv_borg(var: &str, default: &str, version_prefix: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let runs = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        && TestCommand::new(&path)
            .arg("--version")
            .output()
            .stdout_text()
            .starts_with(version_prefix);
    if runs {
        Some(path)
    } else {
        missing(&format!(
            "{} at {} ({var}), runnable by others,",
            version_prefix.trim_end_matches('.'),
            path.display()
        ));
        None
    }
}

/// The full path of `tool` on PATH.
pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Where `scripts/install-deps` builds the Debian 13 client tree (`BORG_PULL_TRIXIE_ROOT`
/// overrides it).
pub const TRIXIE_ROOT_DEFAULT: &str = "/var/cache/borg-pull-test/trixie-client";

/// The Debian 13 (trixie) client tree: complete (the build's stamp is written last), with its
/// sshd and borg; and root to chroot into it. `None` (skip) when not, a failure under
/// BORG_PULL_REQUIRE_DEPS=1.
pub fn trixie_root() -> Option<PathBuf> {
    let root = std::env::var_os("BORG_PULL_TRIXIE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TRIXIE_ROOT_DEFAULT));
    let complete = [
        "/.borg-pull-stamp",
        "/usr/sbin/sshd",
        "/usr/bin/borg",
        "/usr/bin/ssh",
    ]
    .iter()
    .all(|p| root.join(p.trim_start_matches('/')).is_file());
    if !complete {
        missing(&format!(
            "the Debian 13 client tree at {} (BORG_PULL_TRIXIE_ROOT), built by scripts/install-deps,",
            root.display()
        ));
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        missing("root (to chroot into the Debian 13 client tree)");
        return None;
    }
    Some(root)
}
