//! borgmatic users: real borgmatic 2.x (from PyPI in a venv, `scripts/install-deps`) on the client,
//! with its own config (hooks, excludes), reaching the server through borg-pull:
//! - `pull --remote-borg borgmatic -- -c CONFIG create`: borgmatic passes its environment to borg,
//!   so the `BORG_RSH` and passphrase `pull` sets reach the borg it starts; its config names the
//!   repository as `pull` presents it, `ssh://borg-pull-server/REPO`;
//! - `listen` + `borg-pull-relay` as borgmatic's `ssh_command`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, relay_bin, server_bin, Spawned, TestCommand, TestDir};

/// Where `scripts/install-deps` puts borgmatic (`BORG_PULL_BORGMATIC` overrides it).
const BORGMATIC_DEFAULT: &str = "/opt/borg-pull/venv-borgmatic/bin/borgmatic";
const PASSPHRASE: &str = "borgmatic 'pass' $(x)";

/// borgmatic 2.x; `None` (skip) when missing, a failure under BORG_PULL_REQUIRE_DEPS=1.
fn borgmatic() -> Option<PathBuf> {
    let path = std::env::var_os("BORG_PULL_BORGMATIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BORGMATIC_DEFAULT));
    let version = TestCommand::new(&path).arg("--version").output().stdout_text();
    if version.starts_with("2.") {
        Some(path)
    } else {
        borg_pull_testkit::missing(&format!(
            "borgmatic 2.x at {} (BORG_PULL_BORGMATIC)",
            path.display()
        ));
        None
    }
}

/// A borgmatic config: `repo_url`, the data with an exclude, a before-create hook writing
/// `marker`, and `extra` lines (e.g. `ssh_command`).
fn borgmatic_config(path: &Path, repo_url: &str, data: &Path, marker: &Path, extra: &str) {
    let text = format!(
        "source_directories:\n  - {data}\nrepositories:\n  - path: {repo_url}\n    label: server\n\
         exclude_patterns:\n  - '*.tmp'\narchive_name_format: 'bm-{{now}}'\n\
         commands:\n  - before: action\n    when: [create]\n    run:\n      - echo hook ran > {marker}\n{extra}",
        data = data.display(),
        marker = marker.display(),
    );
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

fn write_data(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("keep.txt"), b"kept by borgmatic\n").unwrap();
    fs::write(dir.join("skip.tmp"), b"excluded by the client's config\n").unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The archive's paths, listed locally on the server.
fn archive_paths(repo: &Path, base: &Path) -> String {
    let mut cmd = TestCommand::new("borg");
    let list = cmd
        .args(["list", "--short", "--format", "{path}{NL}"])
        .arg(format!("{}::{}", repo.display(), newest(repo, base)))
        .env("BORG_BASE_DIR", base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .output();
    assert_ok(&list, "borg list ARCHIVE");
    list.stdout_text()
}

fn newest(repo: &Path, base: &Path) -> String {
    let out = TestCommand::new("borg")
        .args(["list", "--short", "--last", "1"])
        .arg(repo)
        .env("BORG_BASE_DIR", base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .output();
    assert_ok(&out, "borg list --last 1");
    let name = out.stdout_text().trim().to_owned();
    assert!(
        name.starts_with("bm-"),
        "borgmatic's archive_name_format: {name:?}"
    );
    name
}

#[test]
fn pull_runs_the_clients_borgmatic_with_its_hooks_and_excludes() {
    let Some(borgmatic) = borgmatic() else {
        return;
    };
    let sshd = Sshd::start();
    let d = sshd.dir.path().to_owned();
    let (repo, base, work) = (d.join("repo"), d.join("server-base"), d.join("work"));
    let out = TestCommand::new("borg")
        .args(["init", "-e", "repokey"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .output();
    assert_ok(&out, "borg init");
    let data = d.join("data");
    write_data(&data);
    fs::create_dir(&work).unwrap();
    let config = work.join("borgmatic.yaml");
    let marker = work.join("hook-ran");
    borgmatic_config(
        &config,
        &format!("ssh://borg-pull-server{}", repo.display()),
        &data,
        &marker,
        "",
    );
    borg_pull_testkit::sshd::chown_to_login_user(&work);
    // The relay where the client's login user can run it.
    let bin = d.join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(relay_bin(), bin.join("borg-pull-relay")).unwrap();

    let out = TestCommand::new(server_bin())
        .arg("pull")
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg("-i")
        .arg(sshd.client_key())
        .arg("--known-hosts")
        .arg(&sshd.known_hosts)
        .arg("--relay")
        .arg(bin.join("borg-pull-relay"))
        .arg("--repo")
        .arg(&repo)
        .arg("--remote-borg")
        .arg(&borgmatic)
        .arg("--env")
        .arg(format!("HOME={}", work.display()))
        .arg("--env")
        .arg(format!("BORG_BASE_DIR={}", work.display()))
        .arg(sshd.destination())
        .arg("--")
        .args(["-c", config.to_str().unwrap(), "create", "--verbosity", "1"])
        .env("BORG_BASE_DIR", &base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .env_remove("BORG_PASSCOMMAND")
        .attach_log("sshd log", sshd.log_path())
        .output();
    out.assert_code(0);
    assert_eq!(
        fs::read_to_string(&marker).unwrap_or_default(),
        "hook ran\n",
        "{}",
        out.describe()
    );
    let paths = archive_paths(&repo, &base);
    let inside = data.strip_prefix("/").unwrap().display().to_string();
    assert!(paths.contains(&format!("{inside}/keep.txt")), "{paths}");
    assert!(
        !paths.contains("skip.tmp"),
        "the client's exclude was ignored: {paths}"
    );
}

#[test]
fn borgmatic_with_the_relay_as_ssh_command_reaches_listen() {
    let Some(borgmatic) = borgmatic() else {
        return;
    };
    let t = TestDir::new();
    let (repo, socket) = (t.join("repo"), t.join("run/borg.sock"));
    fs::create_dir(t.join("run")).unwrap();
    let out = t
        .borg(["init", "-e", "repokey"])
        .arg(&repo)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .output();
    assert_ok(&out, "borg init");
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(&socket)
        .arg("--repo")
        .arg(&repo);
    let mut server = Spawned::spawn(cmd, t.join("server.log"));
    server.wait_for_log("listening");
    let data = t.join("data");
    write_data(&data);
    let (config, marker) = (t.join("borgmatic.yaml"), t.join("hook-ran"));
    let ssh_command = format!(
        "ssh_command: {} --socket {}\n",
        relay_bin().display(),
        socket.display()
    );
    borgmatic_config(
        &config,
        &format!("ssh://borg-pull-server{}", repo.display()),
        &data,
        &marker,
        &ssh_command,
    );
    let mut cmd = TestCommand::new(&borgmatic);
    let out = t
        .env(&mut cmd)
        .args(["-c", config.to_str().unwrap(), "create", "--verbosity", "1"])
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .output();
    out.assert_code(0);
    assert_eq!(fs::read_to_string(&marker).unwrap_or_default(), "hook ran\n");
    let paths = archive_paths(&repo, &t.base());
    assert!(
        paths.contains("keep.txt") && !paths.contains("skip.tmp"),
        "{paths}"
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.report());
}

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// The archive names in `repo`, listed locally on the server.
fn archive_names(repo: &Path, base: &Path) -> Vec<String> {
    let out = TestCommand::new("borg")
        .args(["list", "--short"])
        .arg(repo)
        .env("BORG_BASE_DIR", base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .output();
    assert_ok(&out, "borg list");
    out.stdout_text().lines().map(str::to_owned).collect()
}

/// A borgmatic client in a fleet: `run` cannot tell from `-c FILE create` what borgmatic does, so
/// it looks at the repository: after each borgmatic create an archive appeared and `keep_last =
/// 1` prunes on the server (two runs leave one archive); a borgmatic `list` made none, and
/// retention is skipped and said so.
#[test]
fn fleet_prunes_after_a_borgmatic_create_and_says_why_not_after_a_list() {
    let Some(borgmatic) = borgmatic() else {
        return;
    };
    let sshd = Sshd::start();
    let d = sshd.dir.path().to_owned();
    let (repo, base, work) = (d.join("repo"), d.join("server-base"), d.join("work"));
    let out = TestCommand::new("borg")
        .args(["init", "-e", "repokey"])
        .arg(&repo)
        .env("BORG_BASE_DIR", &base)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .output();
    assert_ok(&out, "borg init");
    let data = d.join("data");
    write_data(&data);
    fs::create_dir(&work).unwrap();
    let config = work.join("borgmatic.yaml");
    borgmatic_config(
        &config,
        &format!("ssh://borg-pull-server{}", repo.display()),
        &data,
        &work.join("hook-ran"),
        "",
    );
    // Archive names to the microsecond: two runs never make the same name.
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("'bm-{now}'", "'bm-{now:%Y-%m-%dT%H:%M:%S.%f}'");
    fs::write(&config, text).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&work);
    let bin = d.join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(relay_bin(), bin.join("borg-pull-relay")).unwrap();
    let passphrase_file = d.join("passphrase");
    fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
    fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();

    let fleet = |action: &str| {
        let path = d.join(format!("fleet-{action}.toml"));
        let text = format!(
            "[server]\nstate_dir = {state}\n\n[[client]]\nname = \"bm\"\nhost = \"127.0.0.1\"\n\
             port = {port}\nuser = {user}\nidentity = {key}\nknown_hosts = {kh}\nrelay = {relay}\n\
             remote_borg = {borgmatic}\nrepo = {repo}\npassphrase_file = {pf}\n\
             env = {{ HOME = {work}, BORG_BASE_DIR = {work} }}\n\
             args = [\"-c\", {config}, {action}, \"--verbosity\", \"1\"]\n\
             prune = {{ keep_last = 1 }}\ncompact = true\n",
            state = toml_str(d.join("state")),
            port = sshd.port,
            user = toml_str(&sshd.user),
            key = toml_str(sshd.client_key()),
            kh = toml_str(&sshd.known_hosts),
            relay = toml_str(bin.join("borg-pull-relay")),
            borgmatic = toml_str(&borgmatic),
            repo = toml_str(&repo),
            pf = toml_str(&passphrase_file),
            work = toml_str(&work),
            config = toml_str(&config),
            action = toml_str(action),
        );
        fs::write(&path, text).unwrap();
        path
    };
    let run = |config: &Path| {
        let out = TestCommand::new(server_bin())
            .args(["run", "--json", "--config"])
            .arg(config)
            .env("BORG_BASE_DIR", &base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .attach_log("sshd log", sshd.log_path())
            .output();
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON: {e}: {}", out.describe()));
        (out, json[0].clone())
    };

    let create = fleet("create");
    let mut made = Vec::new();
    for _ in 0..2 {
        let (out, result) = run(&create);
        out.assert_code(0);
        assert_eq!(
            result["retention"],
            serde_json::json!({"status": "ran", "prune_rc": 0, "compact_rc": 0, "check_rc": null}),
            "{}",
            out.describe()
        );
        assert!(
            out.stderr_text()
                .contains("retention done: prune_rc=0 compact_rc=0"),
            "{}",
            out.describe()
        );
        let names = archive_names(&repo, &base);
        assert_eq!(names.len(), 1, "keep_last = 1: {names:?}\n{}", out.describe());
        assert!(
            !made.contains(&names[0]),
            "a new archive each run: {made:?} {names:?}"
        );
        made.push(names[0].clone());
    }

    let (out, result) = run(&fleet("list"));
    out.assert_code(0);
    assert_eq!(
        result["retention"],
        serde_json::json!({"status": "skipped", "reason": "no new archive"}),
        "{}",
        out.describe()
    );
    let log = out.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("retention: skipped, no new archive") && l.contains("client=bm")),
        "{}",
        out.describe()
    );
    // borgmatic's list printed the archive: the job ran, and nothing was pruned.
    assert!(log.contains(&format!("bm: {}", made[1])), "{}", out.describe());
    assert_eq!(archive_names(&repo, &base), [made[1].clone()]);
}
