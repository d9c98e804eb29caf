//! Every generation of the borg 2.0 betas (`borg_pull_core::version::Generation`) served with its
//! own flags, end to end with real borg on both ends of one version: Debian 12's `borgbackup2`
//! (2.0.0b5, borg 1's RPC and `serve --append-only`), PyPI's 2.0.0b17 (`BORG_REPO_PERMISSIONS`),
//! 2.0.0b21 (`serve --permissions`), 2.0.0b24 (REST, `serve --rest --backend`, client URL
//! `rest://`) and 2.0.0b25 (REST, client URL `ssh://` again), each through
//! `listen` + `borg-pull-relay` and through `pull` over a real sshd, with deletes refused; 2.0.0b16
//! (nothing there refuses deletes) refused to serve; clients of another generation named with
//! their real version. One `#[test]` per version, sharing the helpers below.
//!
//! The betas come from `scripts/install-deps`: `/usr/bin/borg2` (Debian) and
//! `/opt/borg-pull/venv-borg-2.0.0bN/bin/borg` (`BORG_PULL_BORG2_BN` overrides), 2.0.0b25 from
//! `BORG_PULL_BORG2`. Missing ones skip, or fail under `BORG_PULL_REQUIRE_DEPS=1`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use borg_pull_testkit::sshd::Sshd;
use borg_pull_testkit::{assert_ok, relay_bin, server_bin, Outcome, Spawned, TestCommand, TestDir};

const PASSPHRASE: &str = "gen 'pass' $(word)";

/// How a generation keeps what was written when a client tries to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `serve --append-only` (borg 1's segments): `delete` "succeeds" for the client, but no
    /// segment file goes away, and deleting the repository is refused.
    AppendOnly,
    /// `no-delete` permissions (borgstore): every delete fails with `PermissionDenied`.
    PermissionDenied,
}

/// One beta under test: where it is and what differs between generations on the command line.
struct Beta {
    /// The exact version `--version` prints, e.g. `2.0.0b5`.
    version: &'static str,
    /// The variable that overrides the program's path.
    var: &'static str,
    /// Its default path (what `scripts/install-deps` installs).
    default: &'static str,
    /// The command that creates a repository (`rcreate` before 2.0.0b10).
    create_repo: &'static str,
    /// The command that lists archives (`rlist` before 2.0.0b10).
    list_repo: &'static str,
    /// The command that deletes the repository (`rdelete` before 2.0.0b10).
    delete_repo: &'static str,
    /// An encryption mode this version knows.
    encryption: &'static str,
    /// `ssh://host//ABS` (borgstore, 2.0.0b10 and later) rather than `ssh://host/ABS`.
    double_slash: bool,
    /// The URL's scheme: `rest` for 2.0.0b22-b24.
    scheme: &'static str,
    /// What `borg-pull-server listen` logs of the serve argv.
    serve_argv: &'static str,
    refusal: Refusal,
}

const B5: Beta = Beta {
    version: "2.0.0b5",
    var: "BORG_PULL_BORG2_DEBIAN",
    default: "/usr/bin/borg2",
    create_repo: "rcreate",
    list_repo: "rlist",
    delete_repo: "rdelete",
    encryption: "repokey-aes-ocb",
    double_slash: false,
    scheme: "ssh",
    serve_argv: "serve --append-only --restrict-to-repository",
    refusal: Refusal::AppendOnly,
};

const B16: Beta = Beta {
    version: "2.0.0b16",
    var: "BORG_PULL_BORG2_B16",
    default: "/opt/borg-pull/venv-borg-2.0.0b16/bin/borg",
    create_repo: "repo-create",
    list_repo: "repo-list",
    delete_repo: "repo-delete",
    encryption: "repokey-aes-ocb",
    double_slash: true,
    scheme: "ssh",
    serve_argv: "serve --restrict-to-repository",
    refusal: Refusal::PermissionDenied,
};

const B17: Beta = Beta {
    version: "2.0.0b17",
    var: "BORG_PULL_BORG2_B17",
    default: "/opt/borg-pull/venv-borg-2.0.0b17/bin/borg",
    create_repo: "repo-create",
    list_repo: "repo-list",
    delete_repo: "repo-delete",
    encryption: "repokey-aes-ocb",
    double_slash: true,
    scheme: "ssh",
    serve_argv: "serve --restrict-to-repository",
    refusal: Refusal::PermissionDenied,
};

const B21: Beta = Beta {
    version: "2.0.0b21",
    var: "BORG_PULL_BORG2_B21",
    default: "/opt/borg-pull/venv-borg-2.0.0b21/bin/borg",
    create_repo: "repo-create",
    list_repo: "repo-list",
    delete_repo: "repo-delete",
    encryption: "repokey-aes-ocb",
    double_slash: true,
    scheme: "ssh",
    serve_argv: "--permissions no-delete",
    refusal: Refusal::PermissionDenied,
};

const B24: Beta = Beta {
    version: "2.0.0b24",
    var: "BORG_PULL_BORG2_B24",
    default: "/opt/borg-pull/venv-borg-2.0.0b24/bin/borg",
    create_repo: "repo-create",
    list_repo: "repo-list",
    delete_repo: "repo-delete",
    encryption: "aes256-ocb",
    double_slash: true,
    scheme: "rest",
    serve_argv: "serve --rest --backend FILE:",
    refusal: Refusal::PermissionDenied,
};

const B25: Beta = Beta {
    version: "2.0.0b25",
    var: "BORG_PULL_BORG2",
    default: borg_pull_testkit::BORG2_DEFAULT,
    create_repo: "repo-create",
    list_repo: "repo-list",
    delete_repo: "repo-delete",
    encryption: "aes256-ocb",
    double_slash: true,
    scheme: "ssh",
    serve_argv: "serve --rest --backend FILE:",
    refusal: Refusal::PermissionDenied,
};

impl Beta {
    /// The program, if it is installed, runnable by others (the sshd login user runs it) and of
    /// exactly this version.
    fn program(&self) -> Option<PathBuf> {
        let path = std::env::var_os(self.var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(self.default));
        let printed = if fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0) {
            TestCommand::new(&path).arg("--version").output().stdout_text()
        } else {
            String::new()
        };
        // Debian's program calls itself borg2.
        if printed.split_whitespace().nth(1) == Some(self.version) {
            Some(path)
        } else {
            borg_pull_testkit::missing(&format!(
                "borg {} at {} ({}; it printed {printed:?})",
                self.version,
                path.display(),
                self.var
            ));
            None
        }
    }

    /// The client's URL of `repo` through the relay.
    fn url(&self, repo: &Path) -> String {
        // `repo` is absolute: its own leading slash is the path's in `ssh://host/ABS` and the
        // second one of `ssh://host//ABS`.
        let separator = if self.double_slash { "/" } else { "" };
        format!("{}://borg-pull-server{separator}{}", self.scheme, repo.display())
    }
}

/// The relay as BORG_RSH (and BORGSTORE_RSH) for a client of `socket`.
fn rsh(socket: &Path) -> String {
    format!("'{}' --socket '{}'", relay_bin().display(), socket.display())
}

/// `borg ARGS` in this test's environment, through the listener at `socket`.
fn client(t: &TestDir, borg: &Path, socket: &Path, args: &[&str]) -> TestCommand {
    let mut cmd = TestCommand::new(borg);
    t.env(&mut cmd)
        .args(args)
        .env("BORG_RSH", rsh(socket))
        .env("BORGSTORE_RSH", rsh(socket))
        .env("BORG_PASSPHRASE", PASSPHRASE);
    cmd
}

/// `borg -r REPO ARGS`, locally (the server's own view of the repository).
fn local(t: &TestDir, borg: &Path, repo: &Path, args: &[&str]) -> Outcome {
    let mut cmd = TestCommand::new(borg);
    t.env(&mut cmd)
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .arg("-r")
        .arg(repo)
        .args(args);
    cmd.output()
}

/// Archive names in `repo`, read locally.
fn archives(t: &TestDir, beta: &Beta, borg: &Path, repo: &Path) -> Vec<String> {
    let out = local(t, borg, repo, &[beta.list_repo, "--format", "{archive}{NL}"]);
    assert_ok(&out, "local archive list");
    out.stdout_text().lines().map(str::to_owned).collect()
}

/// Every file under `repo` with its size: what append-only must never shrink.
fn files(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path().strip_prefix(root).unwrap().to_owned(), meta.len());
            }
        }
    }
    out
}

/// A few files with awkward names and some incompressible bytes.
fn make_data(dir: &Path) {
    fs::create_dir_all(dir.join("sub dir")).unwrap();
    for (i, name) in [
        &b"plain.txt"[..],
        b"it's $(x)",
        b"non-utf8-\xff",
        b"sub dir/-dash",
    ]
    .into_iter()
    .enumerate()
    {
        fs::write(dir.join(OsStr::from_bytes(name)), format!("file {i}\n")).unwrap();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..200 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(dir.join("noise.bin"), noise).unwrap();
    // The sshd's login user reads it in the pull tests.
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
    }
}

/// Starts `borg-pull-server listen` with `borg` serving `repo`; waits until it listens.
fn listen(t: &TestDir, borg: &Path, repo: &Path, socket: &Path) -> Spawned {
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(socket)
        .arg("--repo")
        .arg(repo)
        .arg("--borg")
        .arg(borg)
        .env("BORG_PULL_LOG", "info");
    let mut server = Spawned::spawn(cmd, t.join("server.log"));
    server.wait_for_log("listening");
    server
}

/// Asserts that a client's delete of archive `first` and of the whole repository are refused
/// the way `beta`'s generation refuses them, and that nothing of the repository is gone.
fn assert_deletes_refused(
    beta: &Beta,
    t: &TestDir,
    borg: &Path,
    repo: &Path,
    mut attempt: impl FnMut(&[&str]) -> Outcome,
) {
    let before = files(repo);
    let out = attempt(&["delete", "-a", "first"]);
    match beta.refusal {
        Refusal::AppendOnly => {
            // The client sees its delete done; append-only keeps every segment, and compact (the
            // only thing that would free them) can do nothing through this serve.
            let _ = attempt(&["compact"]);
            let after = files(repo);
            let lost: Vec<_> = before
                .iter()
                .filter(|(path, size)| path.starts_with("data") && after.get(*path) != Some(size))
                .collect();
            assert!(
                before.keys().any(|p| p.starts_with("data")) && lost.is_empty(),
                "borg {}: append-only lost or changed segments {lost:?}",
                beta.version
            );
        }
        Refusal::PermissionDenied => {
            assert_ne!(out.status.code(), Some(0), "delete allowed: {}", out.describe());
            assert!(
                out.stderr_text().contains("PermissionDenied"),
                "{}",
                out.describe()
            );
            assert_eq!(archives(t, beta, borg, repo), ["first"], "borg {}", beta.version);
        }
    }
    let out = attempt(&[beta.delete_repo]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "repository delete allowed: {}",
        out.describe()
    );
    assert!(
        repo.join("config").exists(),
        "borg {}: the repository is gone",
        beta.version
    );
    // What holds the archives: segments (data/), or borgstore's objects (data/ or packs/) and
    // archive entries; caches and locks come and go by design.
    let kept = files(repo);
    let gone: Vec<_> = before
        .keys()
        .filter(|p| ["data", "packs", "archives"].iter().any(|d| p.starts_with(d)))
        .filter(|p| !kept.contains_key(*p))
        .collect();
    assert!(gone.is_empty(), "borg {}: files gone: {gone:?}", beta.version);
}

/// listen + relay: create, list, extract, and refused deletes, with `beta` on both ends.
fn listen_case(beta: &Beta) {
    let Some(borg) = beta.program() else {
        return;
    };
    let t = TestDir::new();
    let repo = t.join("repo");
    let out = local(&t, &borg, &repo, &[beta.create_repo, "-e", beta.encryption]);
    assert_ok(&out, "local repository create");
    let socket = t.join("run/borg.sock");
    let server = listen(&t, &borg, &repo, &socket);
    let log = server.log();
    assert!(log.contains(beta.serve_argv), "borg {}: {log}", beta.version);
    make_data(&t.join("data"));
    let url = beta.url(&repo);

    let out = client(&t, &borg, &socket, &["-r", &url, "create", "first", "data"])
        .current_dir(t.path())
        .output();
    assert_ok(&out, "create through listen");
    let out = client(
        &t,
        &borg,
        &socket,
        &["-r", &url, beta.list_repo, "--format", "{archive}{NL}"],
    )
    .output();
    assert_ok(&out, "archive list through listen");
    assert_eq!(out.stdout_text().trim(), "first");
    let dest = t.join("restore");
    fs::create_dir(&dest).unwrap();
    let out = client(&t, &borg, &socket, &["-r", &url, "extract", "first"])
        .current_dir(&dest)
        .output();
    assert_ok(&out, "extract through listen");
    assert_eq!(files(&dest.join("data")), files(&t.join("data")));
    assert_eq!(
        fs::read(dest.join("data/noise.bin")).unwrap(),
        fs::read(t.join("data/noise.bin")).unwrap()
    );

    assert_deletes_refused(beta, &t, &borg, &repo, |args| {
        let mut full = vec!["-r", url.as_str()];
        full.extend_from_slice(args);
        client(&t, &borg, &socket, &full).output()
    });
    drop(server);
}

/// The relay in `dir/bin` (0755), where the sshd's login user can run it wherever cargo's target
/// directory is.
fn client_relay(dir: &Path) -> PathBuf {
    borg_pull_testkit::reachable_relay(dir)
}

/// `borg-pull-server pull` over a real sshd: `--init` creates the repository with `beta` on the
/// server, `beta` on the client backs up and lists; its deletes are refused.
fn pull_case(beta: &Beta) {
    let Some(borg) = beta.program() else {
        return;
    };
    let sshd = Sshd::start();
    let d = sshd.dir.path().to_owned();
    let t = TestDir::new();
    let repo = d.join("repo");
    let client_base = d.join("client base");
    fs::create_dir(&client_base).unwrap();
    borg_pull_testkit::sshd::chown_to_login_user(&client_base);
    let relay = client_relay(&d);
    let data = d.join("data");
    make_data(&data);
    let port = sshd.port.to_string();
    let pull = |extra: &[&OsStr], borg_args: &[&OsStr]| {
        let mut cmd = TestCommand::new(server_bin());
        t.env(&mut cmd)
            .arg("pull")
            .args(["-p", &port])
            .arg("-i")
            .arg(sshd.client_key())
            .arg("--known-hosts")
            .arg(&sshd.known_hosts)
            .arg("--relay")
            .arg(&relay)
            .arg("--repo")
            .arg(&repo)
            .arg("--borg")
            .arg(&borg)
            .arg("--remote-borg")
            .arg(&borg)
            .arg("--env")
            .arg(format!("BORG_BASE_DIR={}", client_base.display()))
            .arg("--env")
            .arg("BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES")
            .args(extra)
            .arg(sshd.destination())
            .arg("--")
            .args(borg_args)
            .env("BORG_PASSPHRASE", PASSPHRASE)
            .env("BORG_PULL_LOG", "info")
            .attach_log("sshd log", sshd.log_path());
        cmd.output()
    };
    let os = OsStr::new;
    let out = pull(
        &[os("--init"), os("--encryption"), os(beta.encryption)],
        &[os("create"), os("first"), data.as_os_str()],
    );
    assert_ok(&out, "pull --init create");
    assert!(
        out.stderr_text().contains("repository created"),
        "{}",
        out.describe()
    );
    let out = pull(&[], &[os(beta.list_repo), os("--format"), os("{archive}{NL}")]);
    assert_ok(&out, "pull archive list");
    assert_eq!(out.stdout_text().trim(), "first");
    assert_eq!(archives(&t, beta, &borg, &repo), ["first"]);

    assert_deletes_refused(beta, &t, &borg, &repo, |args| {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        pull(&[], &args)
    });
    borg_pull_testkit::assert_no_process_mentions(&d);
}

#[test]
fn debian_2_0_0b5_listen_relay_append_only() {
    listen_case(&B5);
}

#[test]
fn debian_2_0_0b5_pull_append_only() {
    pull_case(&B5);
}

#[test]
fn pypi_2_0_0b17_listen_relay_permissions_from_the_environment() {
    listen_case(&B17);
}

#[test]
fn pypi_2_0_0b17_pull_permissions_from_the_environment() {
    pull_case(&B17);
}

#[test]
fn pypi_2_0_0b21_listen_relay_permissions_flag() {
    listen_case(&B21);
}

#[test]
fn pypi_2_0_0b21_pull_permissions_flag() {
    pull_case(&B21);
}

#[test]
fn pypi_2_0_0b24_listen_relay_rest_scheme() {
    listen_case(&B24);
}

#[test]
fn pypi_2_0_0b24_pull_rest_scheme() {
    pull_case(&B24);
}

#[test]
fn pypi_2_0_0b25_listen_relay_rest() {
    listen_case(&B25);
}

#[test]
fn pypi_2_0_0b25_pull_rest() {
    pull_case(&B25);
}

/// 2.0.0b16 cannot refuse deletes: `listen` and `pull` refuse to serve it (exit 200, naming the
/// version and the fix) unless deletes are allowed explicitly.
#[test]
fn pypi_2_0_0b16_is_refused_unless_deletes_are_allowed() {
    let Some(borg) = B16.program() else {
        return;
    };
    let t = TestDir::new();
    let repo = t.join("repo");
    let out = local(&t, &borg, &repo, &[B16.create_repo, "-e", B16.encryption]);
    assert_ok(&out, "local repository create");
    let socket = t.join("run/borg.sock");
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(&socket)
        .arg("--repo")
        .arg(&repo)
        .arg("--borg")
        .arg(&borg);
    let out = cmd.output();
    assert_eq!(out.status.code(), Some(200), "{}", out.describe());
    let err = out.stderr_text();
    assert!(
        err.contains("borg 2.0.0b16 serve cannot refuse deletes") && err.contains("--allow-delete"),
        "{}",
        out.describe()
    );
    assert!(!socket.exists());
    let out = TestCommand::new(server_bin())
        .args(["pull", "--repo"])
        .arg(&repo)
        .arg("--borg")
        .arg(&borg)
        .args(["u@127.0.0.1", "--", "repo-list"])
        .output();
    assert_eq!(out.status.code(), Some(200), "{}", out.describe());
    assert!(
        out.stderr_text().contains("cannot refuse deletes"),
        "{}",
        out.describe()
    );

    // With --allow-delete the operator chose it: it serves (without any delete refusal).
    let mut cmd = TestCommand::new(server_bin());
    t.env(&mut cmd)
        .arg("listen")
        .arg("--socket")
        .arg(&socket)
        .arg("--repo")
        .arg(&repo)
        .arg("--borg")
        .arg(&borg)
        .arg("--allow-delete");
    let mut server = Spawned::spawn(cmd, t.join("allowed.log"));
    server.wait_for_log("listening");
    let out = client(&t, &borg, &socket, &["-r", &B16.url(&repo), "repo-list"]).output();
    assert_ok(&out, "repo-list through an --allow-delete listen of 2.0.0b16");
}

/// The issue's misdiagnosis: a client of another generation is named with its real version and
/// generation (not "borg 1.x"), before any byte reaches borg serve.
fn cross_generation_case(server_beta: &Beta, client_beta: &Beta, want: &str) {
    let (Some(server_borg), Some(client_borg)) = (server_beta.program(), client_beta.program()) else {
        return;
    };
    let t = TestDir::new();
    let repo = t.join("repo");
    let out = local(
        &t,
        &server_borg,
        &repo,
        &[server_beta.create_repo, "-e", server_beta.encryption],
    );
    assert_ok(&out, "local repository create");
    let socket = t.join("run/borg.sock");
    let server = listen(&t, &server_borg, &repo, &socket);
    let out = client(
        &t,
        &client_borg,
        &socket,
        &["-r", &client_beta.url(&repo), client_beta.list_repo],
    )
    .output();
    assert_ne!(out.status.code(), Some(0), "{}", out.describe());
    let log = server.log();
    assert!(
        log.contains(want)
            && log.contains(&format!(
                "this server's borg serve is borg {}",
                server_beta.version
            )),
        "{log}"
    );
    assert!(!log.contains("the client runs borg 1.x"), "{log}");
}

#[test]
fn listen_names_a_2_0_0b5_client_of_a_2_0_0b25_server() {
    cross_generation_case(&B25, &B5, "the client runs borg 2.0.0b5 (borg 2.0.0b1-b9)");
}

#[test]
fn listen_names_a_2_0_0b25_client_of_a_2_0_0b5_server() {
    cross_generation_case(
        &B5,
        &B25,
        "the client runs borg 2.0.0b22 and later (it speaks HTTP)",
    );
}

#[test]
fn listen_names_a_2_0_0b21_client_of_a_2_0_0b24_server() {
    cross_generation_case(&B24, &B21, "the client runs borg 2.0.0b21 (borg 2.0.0b18-b21)");
}

#[test]
fn listen_names_a_2_0_0b17_client_of_a_2_0_0b21_server() {
    cross_generation_case(&B21, &B17, "the client runs borg 2.0.0b17 (borg 2.0.0b17)");
}

/// `pull` checks the client's borg before anything moves: another generation is refused with
/// exit 214 (client setup), naming both versions and generations.
#[test]
fn pull_refuses_a_client_of_another_generation() {
    let (Some(server_borg), Some(client_borg)) = (B25.program(), B5.program()) else {
        return;
    };
    let sshd = Sshd::start();
    let t = TestDir::new();
    let repo = t.join("repo");
    let out = local(&t, &server_borg, &repo, &[B25.create_repo, "-e", B25.encryption]);
    assert_ok(&out, "local repository create");
    let out = TestCommand::new(server_bin())
        .env("BORG_PASSPHRASE", PASSPHRASE)
        .arg("pull")
        .args(["-p", &sshd.port.to_string()])
        .arg("-i")
        .arg(sshd.client_key())
        .arg("--known-hosts")
        .arg(&sshd.known_hosts)
        .arg("--relay")
        .arg(client_relay(sshd.dir.path()))
        .arg("--repo")
        .arg(&repo)
        .arg("--borg")
        .arg(&server_borg)
        .arg("--remote-borg")
        .arg(&client_borg)
        .arg(sshd.destination())
        .args(["--", "repo-list"])
        .attach_log("sshd log", sshd.log_path())
        .output();
    assert_eq!(out.status.code(), Some(214), "{}", out.describe());
    let err = out.stderr_text();
    assert!(
        err.contains("has borg 2.0.0b5")
            && err.contains("borg 2.0.0b1-b9")
            && err.contains("runs borg 2.0.0b25 (borg 2.0.0b25 and later)"),
        "{}",
        out.describe()
    );
}
