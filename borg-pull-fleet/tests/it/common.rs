//! What the fleet tests share: an isolated borg home, real borg runs with readable failures,
//! stand-in borg scripts, and `Client`/`ServerSettings` values built directly.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use borg_pull_fleet::config::{Client, PassphraseSource, ServerSettings, ViaConfig};
use borg_pull_fleet::retention::{CheckPolicy, Retention};

/// The real borg (1.2 on the test machines).
const REAL_BORG: &str = "/usr/bin/borg";

/// The borg the tests use, the library's `[server] borg` included: a wrapper running the real
/// borg with BORG_BASE_DIR (its config, keys, cache, security dir) in a temporary directory of
/// this test process. A wrapper, because the library's borg inherits this process's environment
/// and setting that environment is unsound while other tests' threads run (one test binary).
pub fn borg_bin() -> &'static Path {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("borg-base-")
            .tempdir()
            .unwrap()
            .keep();
        let base = dir.join("base");
        std::fs::create_dir(&base).unwrap();
        stand_in(
            &dir,
            "borg",
            &format!(
                "BORG_BASE_DIR='{}'\nexport BORG_BASE_DIR\nexec {REAL_BORG} \"$@\"",
                base.display()
            ),
        )
    })
}

/// Runs the real borg with `args` and extra `env`; panics with its output when it fails.
pub fn borg(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(borg_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "borg {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of Unix time `t`, as borg create --timestamp takes it.
pub fn utc(t: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An unencrypted repository `dir/name` with the archives named and timed as given.
pub fn repo_with(dir: &Path, name: &str, archives: &[(&str, u64)]) -> PathBuf {
    let repo = dir.join(name);
    borg(&["init", "-e", "none", repo.to_str().unwrap()], &[]);
    add_archives(&repo, archives, &[]);
    repo
}

/// Creates the archives in `repo` (a tiny data dir), with `env` (e.g. BORG_PASSPHRASE).
pub fn add_archives(repo: &Path, archives: &[(&str, u64)], env: &[(&str, &str)]) {
    let data = repo.with_extension("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("file"), repo.to_str().unwrap()).unwrap();
    for (name, time) in archives {
        let target = format!("{}::{name}", repo.display());
        borg(
            &[
                "create",
                "--timestamp",
                &utc(*time),
                &target,
                data.to_str().unwrap(),
            ],
            env,
        );
    }
}

/// A file with `text`, mode 0600 (as a passphrase file must be).
pub fn secret_file(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

/// An executable `/bin/sh` script standing in for borg.
pub fn stand_in(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The `[server]` settings with `borg` as the server's borg.
pub fn server(borg: &Path, state_dir: &Path) -> ServerSettings {
    ServerSettings {
        state_dir: state_dir.to_owned(),
        prometheus: None,
        jobs: 2,
        borg: borg.to_owned(),
        html: None,
    }
}

/// A client of repository `repo` with nothing configured beyond the defaults.
pub fn client(name: &str, repo: &Path) -> Client {
    Client {
        name: name.to_owned(),
        host: format!("{name}.invalid"),
        port: 22,
        user: None,
        identity: None,
        known_hosts: None,
        accept_new_host_key: false,
        relay: None,
        install_relay: false,
        remote_borg: None,
        repo: repo.to_owned(),
        via: ViaConfig::Socket,
        jump: Vec::new(),
        cipher: borg_pull_tunnel::ssh::cipher::CipherChoice::Auto,
        env: BTreeMap::new(),
        args: vec!["create".into(), "::{hostname}-{now}".into(), "/etc".into()],
        passphrase: PassphraseSource::Inherited,
        max_runtime: Duration::from_secs(24 * 3600),
        storage_quota: None,
        prune: Retention::default(),
        compact: false,
        check: CheckPolicy::default(),
        max_age: Duration::from_secs(36 * 3600),
        schedule: Default::default(),
    }
}
