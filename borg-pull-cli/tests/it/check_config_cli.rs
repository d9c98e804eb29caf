//! `borg-pull-server check-config --connect` judges each client as `run` will meet it, against a
//! real OpenSSH sshd (standing for every client) and real borg on both ends: the repository must
//! open with the passphrase the config gives (borg 1.2, 1.4 and 2 on this server), the relay is
//! checked by its `--version` (or, with `install_relay = true`, the relay to install and the
//! client's cache), and client names select as for `run`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, relay_bin, server_bin, Outcome, TestCommand};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The repositories' passphrase, in the file the config names; never in any output.
const PASSPHRASE: &str = "check 'secret' $(x) \"y\"";
/// Another passphrase: the repositories inited with it do not open with [`PASSPHRASE`].
const OTHER_PASSPHRASE: &str = "not the one in the file";

/// A TOML basic string (JSON's escaping is valid TOML).
fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// One sshd, the relay where the login user can run it, a passphrase file, repositories.
struct Fixture {
    sshd: Sshd,
    relay: PathBuf,
    passphrase_file: PathBuf,
    server_base: PathBuf,
    /// The server's borg (`[server] borg`).
    borg: PathBuf,
}

impl Fixture {
    fn new(borg: &Path) -> Fixture {
        let sshd = Sshd::start();
        let d = sshd.dir.path().to_owned();
        let bin = d.join("bin");
        fs::create_dir(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let relay = bin.join("borg-pull-relay");
        fs::copy(relay_bin(), &relay).unwrap();
        fs::set_permissions(&relay, fs::Permissions::from_mode(0o755)).unwrap();
        let data = d.join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("hello.txt"), b"hello\n").unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&data);
        let passphrase_file = d.join("passphrase");
        fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
        fs::set_permissions(&passphrase_file, fs::Permissions::from_mode(0o600)).unwrap();
        let server_base = d.join("server-base");
        fs::create_dir(&server_base).unwrap();
        Fixture {
            sshd,
            relay,
            passphrase_file,
            server_base,
            borg: borg.to_owned(),
        }
    }

    fn dir(&self) -> &Path {
        self.sshd.dir.path()
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.dir().join(format!("repo {name}"))
    }

    fn borg2(&self) -> bool {
        TestCommand::new(&self.borg)
            .arg("--version")
            .output()
            .stdout_text()
            .starts_with("borg 2.")
    }

    /// `borg init` (borg 2: `repo-create`) of `name`'s repository, encrypted with `passphrase`.
    fn init(&self, name: &str, passphrase: &str) {
        let repo = self.repo(name);
        let mut cmd = TestCommand::new(&self.borg);
        if self.borg2() {
            cmd.args(["repo-create", "-e", "aes256-ocb"]);
        } else {
            cmd.args(["init", "-e", "repokey"]);
        }
        cmd.env("BORG_REPO", &repo)
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PASSPHRASE", passphrase)
            .env_remove("BORG_PASSCOMMAND");
        assert_ok(&cmd.output(), "borg init");
    }

    /// The config: `[server]` with this borg, `[defaults]` for this sshd, then `clients`.
    fn config(&self, clients: &str) -> PathBuf {
        let data = self.dir().join("data");
        let text = format!(
            "[server]\nstate_dir = {state}\nborg = {borg}\n\n[defaults]\nuser = {user}\nidentity = {key}\n\
             known_hosts = {kh}\nrelay = {relay}\npassphrase_file = {pf}\n\
             args = [\"create\", \"::a-{{now}}\", {data}]\n\n{clients}",
            state = toml_str(self.dir().join("state")),
            borg = toml_str(&self.borg),
            user = toml_str(&self.sshd.user),
            key = toml_str(self.sshd.client_key()),
            kh = toml_str(&self.sshd.known_hosts),
            relay = toml_str(&self.relay),
            pf = toml_str(&self.passphrase_file),
            data = toml_str(&data),
        );
        let path = self.dir().join("fleet.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// A `[[client]]` on this sshd; the client's borg is the server's (same major version).
    fn client(&self, name: &str, extra: &str) -> String {
        let base = self.dir().join(format!("client-base-{name}"));
        if !base.exists() {
            fs::create_dir(&base).unwrap();
            borg_pull_testkit::sshd::chown_to_login_user(&base);
        }
        format!(
            "[[client]]\nname = {}\nhost = \"127.0.0.1\"\nport = {}\nrepo = {}\nremote_borg = {}\n\
             env = {{ BORG_BASE_DIR = {} }}\n{extra}\n",
            toml_str(name),
            self.sshd.port,
            toml_str(self.repo(name)),
            toml_str(&self.borg),
            toml_str(&base),
        )
    }

    fn server(&self, args: &[&str]) -> TestCommand {
        self.server_at(&server_bin(), args)
    }

    /// [`Fixture::server`] with the `borg-pull-server` at `program`.
    fn server_at(&self, program: &Path, args: &[&str]) -> TestCommand {
        let mut cmd = TestCommand::new(program);
        cmd.args(args)
            .env("HOME", self.dir().join("home"))
            .env("BORG_BASE_DIR", &self.server_base)
            .env("BORG_PULL_LOG", "info")
            .env_remove("BORG_PASSPHRASE")
            .env_remove("BORG_PASSCOMMAND")
            .env_remove("SSH_AUTH_SOCK")
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }

    /// `check-config --connect` of `config` (and `names`).
    fn check(&self, config: &Path, names: &[&str]) -> Outcome {
        self.check_at(&server_bin(), config, names)
    }

    /// [`Fixture::check`] with the `borg-pull-server` at `program`.
    fn check_at(&self, program: &Path, config: &Path, names: &[&str]) -> Outcome {
        let out = self
            .server_at(program, &["check-config", "--connect", "--config"])
            .arg(config)
            .args(names)
            .output();
        assert_clean(&out);
        // Shown with --nocapture: what a user reads.
        println!("{}", out.stdout_text());
        out
    }

    /// A script the login user can run, standing for a relay that prints `text` to `--version`.
    fn fake_relay(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\nprintf '%s' '{text}'\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

/// No output line with an escaped line end, no secret anywhere.
fn assert_clean(out: &Outcome) {
    let (stdout, stderr) = (out.stdout_text(), out.stderr_text());
    assert!(!stdout.contains("\\n"), "a literal \\n: {}", out.describe());
    assert!(
        !stdout.contains(PASSPHRASE) && !stderr.contains(PASSPHRASE),
        "{}",
        out.describe()
    );
}

/// The line of client `name` (its verdict: the first line starting `NAME: `).
fn line(out: &Outcome, name: &str) -> String {
    out.stdout_text()
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no line for {name}: {}", out.describe()))
        .to_owned()
}

/// The passphrase check with `borg` on this server: the right one opens, a wrong one fails with
/// 212 naming the passphrase file and the repository; no repository and a directory that is no
/// repository fail with 209.
fn passphrase_is_checked_with(borg: &Path) {
    let f = Fixture::new(borg);
    f.init("good", PASSPHRASE);
    f.init("wrong", OTHER_PASSPHRASE);
    fs::create_dir(f.repo("not-a-repo")).unwrap();
    let mut clients = f.client("good", "");
    clients.push_str(&f.client("wrong", ""));
    clients.push_str(&f.client("missing", ""));
    clients.push_str(&f.client("not-a-repo", ""));
    let config = f.config(&clients);

    let out = f.check(&config, &["good"]);
    out.assert_code(0);
    let good = line(&out, "good");
    assert!(
        good.starts_with("good: ok: relay ") && good.contains(&format!("(borg-pull-relay {VERSION})")),
        "{}",
        out.describe()
    );
    assert!(
        good.contains(&format!("repository {} opens", f.repo("good").display())),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.stdout_text().lines().count(),
        2,
        "only the named client: {}",
        out.describe()
    );

    let out = f.check(&config, &["wrong"]);
    out.assert_code(212);
    let wrong = line(&out, "wrong");
    assert!(wrong.starts_with("wrong: FAILED (212): "), "{}", out.describe());
    for needle in [
        format!("passphrase from passphrase_file {}", f.passphrase_file.display()),
        format!("does not open the repository {}", f.repo("wrong").display()),
        "incorrect".to_owned(),
    ] {
        assert!(wrong.contains(&needle), "{needle:?} in {}", out.describe());
    }

    let out = f.check(&config, &["missing", "not-a-repo"]);
    out.assert_code(209);
    assert!(
        line(&out, "missing").contains(&format!("FAILED (209): relay {}", f.relay.display()))
            && line(&out, "missing").contains("does not exist on this server"),
        "{}",
        out.describe()
    );
    assert!(
        line(&out, "not-a-repo").contains("is not a borg repository"),
        "{}",
        out.describe()
    );
    // All of them: the worst code.
    let out = f.check(&config, &[]);
    out.assert_code(212);
    borg_pull_testkit::assert_no_process_mentions(f.dir());
}

#[test]
fn passphrase_is_checked_borg12() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    passphrase_is_checked_with(&borg_pull_testkit::find_on_path("borg").unwrap());
}

#[test]
fn passphrase_is_checked_borg14() {
    if let Some(borg) = borg_pull_testkit::borg14() {
        passphrase_is_checked_with(&borg);
    }
}

#[test]
fn passphrase_is_checked_borg2() {
    if let Some(borg) = borg_pull_testkit::borg2() {
        passphrase_is_checked_with(&borg);
    }
}

/// Names select as for `run`: an unknown one is the same usage error (200) from both.
#[test]
fn names_select_as_for_run() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fixture::new(&borg_pull_testkit::find_on_path("borg").unwrap());
    let mut clients = f.client("web1", "");
    clients.push_str(&f.client("db1", ""));
    let config = f.config(&clients);
    // Without --connect the names are checked too.
    let out = f
        .server(&["check-config", "--config"])
        .arg(&config)
        .arg("web1")
        .output();
    out.assert_code(0);
    let check = f
        .server(&["check-config", "--config"])
        .arg(&config)
        .arg("nope")
        .output();
    check.assert_code(200);
    let run = f.server(&["run", "--config"]).arg(&config).arg("nope").output();
    run.assert_code(200);
    assert_eq!(check.stderr_text(), run.stderr_text());
    assert!(
        check.stderr_text().contains("no client \"nope\" in"),
        "{}",
        check.describe()
    );
}

/// `install_relay = true` with no relay on the client: ok, as `run` (which installs it) then
/// succeeds; afterwards the copy is found. A cache the login user cannot write fails.
#[test]
fn install_relay_is_judged_as_run_does() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fixture::new(&borg_pull_testkit::find_on_path("borg").unwrap());
    f.init("inst", PASSPHRASE);
    f.init("plain", PASSPHRASE);
    let mut clients = f.client(
        "inst",
        "relay = \"/nonexistent/borg-pull-relay\"\ninstall_relay = true",
    );
    clients.push_str(&f.client("plain", "relay = \"/nonexistent/borg-pull-relay\""));
    let config = f.config(&clients);
    // The relay to install is the one beside borg-pull-server: here a stripped copy of the
    // build's (the debug build's 90 MB would make the install the slowest part of the test).
    let sbin = f.dir().join("sbin");
    fs::create_dir(&sbin).unwrap();
    let server = sbin.join("borg-pull-server");
    if fs::hard_link(server_bin(), &server).is_err() {
        fs::copy(server_bin(), &server).unwrap();
    }
    let beside = sbin.join("borg-pull-relay");
    fs::copy(relay_bin(), &beside).unwrap();
    assert_ok(&TestCommand::new("strip").arg(&beside).output(), "strip");

    let out = f.check_at(&server, &config, &["inst"]);
    out.assert_code(0);
    let inst = line(&out, "inst");
    assert!(
        inst.starts_with(&format!(
            "inst: ok: relay to install {} (borg-pull-relay {VERSION}); run installs it into {}",
            beside.display(),
            f.dir().join("cache/borg-pull").display()
        )),
        "{}",
        out.describe()
    );
    // Without install_relay the same relay path fails, on one line, as run would.
    let out = f.check(&config, &["plain"]);
    out.assert_code(214);
    let plain = line(&out, "plain");
    assert!(
        plain.starts_with(
            "plain: FAILED (214): the relay program \"/nonexistent/borg-pull-relay\" cannot be run"
        ),
        "{}",
        out.describe()
    );
    assert!(plain.contains("install_relay = true"), "{}", out.describe());

    let run = f
        .server_at(&server, &["run", "--config"])
        .arg(&config)
        .arg("inst")
        .output();
    run.assert_code(0);
    let out = f.check_at(&server, &config, &["inst"]);
    out.assert_code(0);
    assert!(
        line(&out, "inst").contains(&format!(
            "its copy {}",
            f.dir().join("cache/borg-pull/relay-").display()
        )),
        "{}",
        out.describe()
    );

    // A cache directory the login user cannot write: check-config fails as run does.
    let cache = f.dir().join("cache");
    fs::remove_dir_all(&cache).unwrap();
    fs::create_dir(&cache).unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    let out = f.check_at(&server, &config, &["inst"]);
    out.assert_code(214);
    assert!(
        line(&out, "inst").contains(&format!(
            "run cannot install the relay on the client: it goes into {}",
            cache.join("borg-pull").display()
        )),
        "{}",
        out.describe()
    );
    // `run` is not tried here: its script exits at the mkdir while the server sends the relay,
    // and the server notices only at RELAY_INSTALL_TIMEOUT (10 minutes).
    borg_pull_testkit::assert_no_process_mentions(f.dir());
}

/// The relay's version: another version is a warning naming both; an older relay without
/// --version too; a program that is not the relay fails with 214.
#[test]
fn relay_version_is_compared() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fixture::new(&borg_pull_testkit::find_on_path("borg").unwrap());
    let other = f.fake_relay("other-relay", "borg-pull-relay 0.0.1\n");
    let older = f.fake_relay(
        "older-relay",
        "error: the following required arguments were not provided:\n  --socket <PATH>\n\nUsage: borg-pull-relay --socket <PATH> [SSH_ARGS]...\n",
    );
    let cat = f.fake_relay("not-a-relay", "cat (GNU coreutils) 9.1\n");
    let noexec = f.fake_relay("not-executable", "borg-pull-relay 0.0.1\n");
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).unwrap();
    let mut clients = String::new();
    for (name, relay) in [
        ("other", &other),
        ("older", &older),
        ("cat", &cat),
        ("noexec", &noexec),
    ] {
        f.init(name, PASSPHRASE);
        clients.push_str(&f.client(name, &format!("relay = {}", toml_str(relay))));
    }
    let config = f.config(&clients);
    let out = f.check(&config, &["other", "older"]);
    out.assert_code(0);
    let text = out.stdout_text();
    assert!(
        line(&out, "other").starts_with(&format!(
            "other: ok: relay {} (borg-pull-relay 0.0.1)",
            other.display()
        )),
        "{}",
        out.describe()
    );
    assert!(
        text.contains(&format!(
            "other: warning: the relay on the client, {}, is borg-pull-relay 0.0.1, this server is {VERSION}",
            other.display()
        )),
        "{}",
        out.describe()
    );
    assert!(
        text.contains("older: warning: the relay on the client") && text.contains("older than --version"),
        "{}",
        out.describe()
    );
    let out = f.check(&config, &["noexec"]);
    out.assert_code(214);
    assert!(
        line(&out, "noexec").starts_with(&format!(
            "noexec: FAILED (214): the relay program {:?} cannot be run on the client 127.0.0.1: it is not an executable file",
            noexec.display().to_string()
        )),
        "{}",
        out.describe()
    );
    let out = f.check(&config, &["cat"]);
    out.assert_code(214);
    assert!(
        line(&out, "cat").starts_with(&format!(
            "cat: FAILED (214): the relay {} on the client is not borg-pull-relay: its --version printed \"cat (GNU coreutils) 9.1\"",
            cat.display()
        )),
        "{}",
        out.describe()
    );
}

/// A repository locked by another borg (a backup running now) cannot show whether the passphrase
/// opens it: a warning saying so, not a failure.
#[test]
fn locked_repository_is_a_warning() {
    if !borg_pull_testkit::require_tool("borg") {
        return;
    }
    let f = Fixture::new(&borg_pull_testkit::find_on_path("borg").unwrap());
    f.init("busy", PASSPHRASE);
    let config = f.config(&f.client("busy", ""));
    let repo = f.repo("busy");
    let mut holder = TestCommand::new(&f.borg);
    holder
        .arg("with-lock")
        .arg(&repo)
        .args(["sleep", "600"])
        .env("BORG_BASE_DIR", &f.server_base)
        .env("BORG_PASSPHRASE", PASSPHRASE);
    let mut holder = borg_pull_testkit::Spawned::spawn(holder, f.dir().join("with-lock.log"));
    borg_pull_testkit::wait_until("borg with-lock holds the lock", || {
        repo.join("lock.exclusive").exists() && repo.join("lock.roster").exists()
    });
    holder.assert_running();
    let out = f.check(&config, &[]);
    out.assert_code(0);
    assert!(
        line(&out, "busy").contains(&format!("repository {} locked", repo.display())),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout_text().contains(&format!(
            "busy: warning: the repository {} is locked (",
            repo.display()
        )) && out.stdout_text().contains("passphrase was not checked"),
        "{}",
        out.describe()
    );
    drop(holder);
}
