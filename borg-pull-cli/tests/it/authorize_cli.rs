//! End-to-end tests of `borg-pull-server authorize`: the line it installs into a real OpenSSH
//! sshd's authorized_keys is what a real borg client on this machine then has to go through
//! (`BORG_RSH=ssh ...`), and the file handling (idempotence, conflicts, unsafe files) through the
//! binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, server_bin, Outcome, TestCommand, TestDir};

fn tools_present() -> bool {
    borg_pull_testkit::require_tool("borg")
        && borg_pull_testkit::require_tool("ssh")
        && borg_pull_testkit::require_tool("ssh-keygen")
}

/// A fresh ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path, comment: &str) {
    let mut cmd = TestCommand::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    assert_ok(&cmd.output(), "ssh-keygen");
}

/// `SHA256:...` of a public key file, as sshd logs it.
fn fingerprint(pubkey: &Path) -> String {
    let out = TestCommand::new("ssh-keygen").arg("-lf").arg(pubkey).output();
    assert_ok(&out, "ssh-keygen -lf");
    out.stdout_text().split_whitespace().nth(1).unwrap().to_owned()
}

/// `borg-pull-server authorize ARGS`.
fn authorize<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Outcome {
    let mut cmd = TestCommand::new(server_bin());
    cmd.arg("authorize").args(args);
    cmd.output()
}

/// A quote for `BORG_RSH` (borg splits it with shlex).
fn sh_quote(s: &Path) -> String {
    format!("'{}'", s.display().to_string().replace('\'', "'\\''"))
}

/// The server (a real sshd), a key only `authorize` authorises, and a borg client on this machine.
struct Server {
    sshd: Sshd,
    key: PathBuf,
    client: TestDir,
    /// A directory the login user owns, for repositories.
    repos: PathBuf,
}

impl Server {
    fn start() -> Server {
        let sshd = Sshd::start();
        let key = sshd.dir.path().join("borg_key");
        keygen(&key, "backup-client");
        let repos = sshd.dir.path().join("repos");
        fs::create_dir(&repos).unwrap();
        borg_pull_testkit::sshd::chown_to_login_user(&repos);
        Server {
            sshd,
            key,
            client: TestDir::new(),
            repos,
        }
    }

    fn authorized_keys(&self) -> PathBuf {
        self.sshd.dir.path().join("authorized_keys")
    }

    fn pubkey(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    /// `authorize --install` of our key for `repo` into the sshd's authorized_keys.
    fn install(&self, repo: &Path) -> Outcome {
        self.install_with(repo, &[])
    }

    fn install_with(&self, repo: &Path, extra: &[&str]) -> Outcome {
        let mut cmd = TestCommand::new(server_bin());
        cmd.arg("authorize")
            .arg("--repo")
            .arg(repo)
            .arg("--key")
            .arg(self.pubkey())
            .arg("--install")
            .arg("--authorized-keys")
            .arg(self.authorized_keys())
            .args(extra);
        cmd.output()
    }

    /// `ssh://USER@127.0.0.1:PORT/REPO` (borg takes the path as it is after the port).
    fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.sshd.user,
            self.sshd.port,
            repo.display()
        )
    }

    /// borg on this machine, reaching the sshd with our key and its host key checked.
    fn borg<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> TestCommand {
        let rsh = format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes",
            sh_quote(&self.key),
            sh_quote(&self.sshd.known_hosts),
        );
        let mut cmd = self.client.borg(args);
        cmd.env("BORG_RSH", rsh)
            .attach_log("sshd log", self.sshd.log_path());
        cmd
    }
}

/// Everything a key installed by `authorize` may do through a real sshd, and nothing else: borg
/// creates and reads back an archive in the one repository (whose path has spaces, both quotes,
/// `$` and a backslash), the forced command is what sshd ran, and another repository is refused.
#[test]
fn an_installed_key_serves_exactly_its_repository() {
    if !tools_present() {
        return;
    }
    let server = Server::start();
    let repo = server.repos.join("web 1 'single' \"double\" $HOME \\back");
    let out = server.install(&repo);
    assert_ok(&out, "authorize --install");
    assert!(out.stderr_text().contains("added to"), "{}", out.describe());
    let line = out.stdout_text();
    assert!(
        line.starts_with("command=\"borg serve --append-only --restrict-to-repository '"),
        "{line}"
    );
    assert!(line.trim_end().ends_with(" backup-client"), "{line}");

    // borg init through the forced, append-only `borg serve` works (borg 1.2): --append-only
    // forbids deleting, not creating the repository it is restricted to.
    let out = server
        .borg(&["init", "-e", "none"])
        .arg(server.url(&repo))
        .output();
    assert_ok(&out, "borg init through the forced command");

    let data = server.client.join("data");
    fs::create_dir(&data).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(data.join("file"), &content).unwrap();
    let out = server
        .borg(&["create"])
        .arg(format!("{}::first", server.url(&repo)))
        .arg("data")
        .current_dir(server.client.path())
        .output();
    assert_ok(&out, "borg create");
    let out = server
        .borg(&["extract", "--stdout"])
        .arg(format!("{}::first", server.url(&repo)))
        .arg("data/file")
        .output();
    assert_ok(&out, "borg extract --stdout");
    assert!(
        out.stdout == content,
        "the archive's file differs from the original"
    );

    // sshd accepted our key (by fingerprint) and ran the forced command, not borg's own.
    let log = server.sshd.log();
    let accepted = format!("Accepted publickey for {} from 127.0.0.1", server.sshd.user);
    let fp = fingerprint(&server.pubkey());
    assert!(
        log.lines().any(|l| l.contains(&accepted) && l.contains(&fp)),
        "no `{accepted} ... {fp}` in the sshd log:\n{log}"
    );
    // sshd logs the command it ran in place of borg's own `borg serve` (backslashes doubled):
    // `Starting session: forced-command (key-option) 'COMMAND' for USER from ...`.
    let command = format!(
        "borg serve --append-only --restrict-to-repository '{}'",
        repo.display().to_string().replace('\'', "'\\''")
    );
    let started = format!(
        "Starting session: forced-command (key-option) '{}' for {} from 127.0.0.1",
        command.replace('\\', "\\\\"),
        server.sshd.user
    );
    assert!(log.contains(&started), "no `{started}` in the sshd log:\n{log}");
    assert!(
        !log.contains("Starting session: command"),
        "sshd ran a command other than the forced one:\n{log}"
    );

    // Another repository, even a fresh one the login user could create, is refused by borg serve.
    let other = server.repos.join("other");
    let out = server
        .borg(&["init", "-e", "none"])
        .arg(server.url(&other))
        .output();
    assert!(!out.status.success(), "{}", out.describe());
    // borg 1.2's PathNotAllowed: "Repository path not allowed: PATH".
    assert!(
        out.stderr_text()
            .contains(&format!("Repository path not allowed: {}", other.display())),
        "{}",
        out.describe()
    );
    assert!(!other.exists(), "the other repository was created");

    // Append-only: destroying the repository is refused by the forced borg serve.
    let out = server.borg(&["delete"]).arg(server.url(&repo)).output();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stderr_text().contains("append-only"), "{}", out.describe());
    assert!(repo.join("config").exists(), "the repository was deleted");
}

/// With `--allow-delete` the forced `borg serve` runs without `--append-only`: the key may delete.
#[test]
fn allow_delete_drops_append_only() {
    if !tools_present() {
        return;
    }
    let server = Server::start();
    let repo = server.repos.join("deletable");
    let out = server.install_with(&repo, &["--allow-delete"]);
    assert_ok(&out, "authorize --install --allow-delete");
    assert!(!out.stdout_text().contains("--append-only"), "{}", out.describe());
    let url = server.url(&repo);
    assert_ok(
        &server.borg(&["init", "-e", "none"]).arg(&url).output(),
        "borg init",
    );
    assert_ok(&server.borg(&["delete"]).arg(&url).output(), "borg delete");
    assert!(!repo.join("config").exists(), "the repository is still there");
    let log = server.sshd.log();
    assert!(
        log.contains("Starting session: forced-command (key-option) 'borg serve --restrict-to-repository "),
        "{log}"
    );
}

/// `--install` twice adds one line; an entry for the key with other options is an error naming its
/// line (and the file is unchanged); other lines stay byte for byte.
#[test]
fn install_is_idempotent_and_never_changes_an_entry() {
    if !borg_pull_testkit::require_tool("ssh-keygen") {
        return;
    }
    let dir = TestDir::new();
    let key = dir.join("k");
    keygen(&key, "me@host");
    let pubkey = dir.join("k.pub");
    let file = dir.join("ssh/authorized_keys");
    let args = |repo: &str, extra: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--repo".into(),
            repo.into(),
            "--key".into(),
            pubkey.clone().into(),
            "--install".into(),
            "--authorized-keys".into(),
            file.clone().into(),
        ];
        a.extend(extra.iter().map(Into::into));
        a
    };
    let first = authorize(&args("/srv/r", &[]));
    assert_ok(&first, "first install");
    assert!(first.stderr_text().contains("added to"), "{}", first.describe());
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        fs::metadata(dir.join("ssh")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let mut before = fs::read(&file).unwrap();
    before.extend_from_slice(b"# someone's comment\n\nssh-ed25519 AAAAC3 other@key\n");
    fs::write(&file, &before).unwrap();
    let second = authorize(&args("/srv/r", &[]));
    assert_ok(&second, "second install");
    assert!(
        second.stderr_text().contains("already present"),
        "{}",
        second.describe()
    );
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(fs::read(&file).unwrap(), before);

    for (repo, extra) in [("/srv/other", &[][..]), ("/srv/r", &["--allow-delete"][..])] {
        let out = authorize(&args(repo, extra));
        out.assert_code(207);
        assert!(out.stderr_text().contains("line 1"), "{}", out.describe());
        assert_eq!(fs::read(&file).unwrap(), before, "file changed on a conflict");
    }
    let text = String::from_utf8(before).unwrap();
    assert_eq!(text.matches("me@host").count(), 1, "{text}");

    // The default file is $HOME/.ssh/authorized_keys.
    let home = dir.join("home");
    let mut cmd = TestCommand::new(server_bin());
    cmd.args(["authorize", "--repo", "/srv/r", "--key"])
        .arg(&pubkey)
        .arg("--install")
        .env("HOME", &home);
    assert_ok(&cmd.output(), "install into HOME");
    let default = fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
    assert_eq!(default.as_bytes(), first.stdout.as_slice());
}

/// A world-writable file, a symbolic link, a private key, a relative repository: refused with
/// the exit code of the table, and nothing written.
#[test]
fn unsafe_files_and_bad_arguments_are_refused() {
    if !borg_pull_testkit::require_tool("ssh-keygen") {
        return;
    }
    let dir = TestDir::new();
    let key = dir.join("k");
    keygen(&key, "me@host");
    let pubkey = dir.join("k.pub");
    let install = |file: &Path| {
        authorize(&[
            "--repo".as_ref(),
            "/srv/r".as_ref(),
            "--key".as_ref(),
            pubkey.as_os_str(),
            "--install".as_ref(),
            "--authorized-keys".as_ref(),
            file.as_os_str(),
        ])
    };
    let open = dir.join("open");
    fs::write(&open, b"").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
    let out = install(&open);
    out.assert_code(204);
    assert!(out.stderr_text().contains("chmod 600"), "{}", out.describe());
    assert_eq!(fs::read(&open).unwrap(), b"");

    let real = dir.join("real");
    fs::write(&real, b"").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = install(&link);
    out.assert_code(204);
    assert!(out.stderr_text().contains("symbolic link"), "{}", out.describe());
    assert_eq!(fs::read(&real).unwrap(), b"");

    let out = authorize(&[
        "--repo".as_ref(),
        "/srv/r".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
    ]);
    out.assert_code(200);
    assert!(out.stderr_text().contains("private key"), "{}", out.describe());

    let out = authorize(&[
        "--repo".as_ref(),
        "srv/r".as_ref(),
        "--key".as_ref(),
        pubkey.as_os_str(),
    ]);
    out.assert_code(200);
    assert!(out.stderr_text().contains("absolute"), "{}", out.describe());

    let out = authorize(&[
        "--repo".as_ref(),
        "/srv/a\nb".as_ref(),
        "--key".as_ref(),
        pubkey.as_os_str(),
    ]);
    out.assert_code(200);
    assert!(out.stderr_text().contains("line break"), "{}", out.describe());
}

/// Installing for another user (as root, e.g. with sudo) gives what is created to the owner of
/// the directory it is created in: sshd reads authorized_keys as that user, and the user's own
/// later runs must open the lock file. Run as another user, everything is simply ours.
#[test]
fn new_files_belong_to_the_owner_of_their_directory() {
    use std::os::unix::fs::MetadataExt as _;
    if !borg_pull_testkit::require_tool("ssh-keygen") {
        return;
    }
    borg_pull_testkit::sshd::ensure_login_user();
    let dir = TestDir::new();
    keygen(&dir.join("k"), "me@host");
    let home = dir.join("user-home");
    fs::create_dir(&home).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&home);
    let file = home.join(".ssh/authorized_keys");
    let out = authorize(&[
        "--repo".as_ref(),
        "/srv/r".as_ref(),
        "--key".as_ref(),
        dir.join("k.pub").as_os_str(),
        "--install".as_ref(),
        "--authorized-keys".as_ref(),
        file.as_os_str(),
    ]);
    assert_ok(&out, "authorize --install");
    let owner = fs::metadata(&home).unwrap().uid();
    for made in [
        home.join(".ssh"),
        file.clone(),
        home.join(".ssh/.authorized_keys.borg-pull.lock"),
    ] {
        let meta = fs::symlink_metadata(&made).unwrap();
        assert_eq!(meta.uid(), owner, "owner of {}", made.display());
    }
    assert_eq!(fs::metadata(home.join(".ssh")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o600);
}
