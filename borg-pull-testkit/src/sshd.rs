//! Starts a private OpenSSH sshd on 127.0.0.1 for one test: its own config, host key, client key,
//! authorized_keys, known_hosts, TMPDIR and log, all in a fresh temp dir; killed on drop.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Spawned, TestCommand};

/// The sshd binary; by absolute path, since sshd re-execs itself.
pub const SSHD: &str = "/usr/sbin/sshd";

/// How to configure the sshd.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// `AllowStreamLocalForwarding` (`yes`, `no`, `local`, `remote`, `all`).
    pub allow_streamlocal: &'static str,
    /// Host key type for `ssh-keygen -t` (ed25519, ecdsa, rsa); the one in `known_hosts`.
    pub host_key_type: &'static str,
    /// More host keys sshd also has (not in `known_hosts`).
    pub extra_host_key_types: Vec<&'static str>,
    /// Client key types to authorise; the first is [`Sshd::client_key`].
    pub client_key_types: Vec<&'static str>,
    /// Passphrase for the client keys ("" for none).
    pub client_key_passphrase: &'static str,
    /// Options in front of each authorized_keys line (e.g. `restrict,port-forwarding `).
    pub authorized_keys_options: &'static str,
    /// Make the sessions' TMPDIR so long that a socket path in it cannot be bound.
    pub long_tmpdir: bool,
    /// Run this OS tree's own sshd (the Debian 13 client, [`crate::trixie_root`]) chrooted
    /// in private mount and pid namespaces; see [`CHROOT_SCRIPT`].
    pub chroot: Option<PathBuf>,
    /// Lines appended to sshd_config (e.g. `RekeyLimit 1M\n`).
    pub extra_config: String,
}

impl Default for SshdOptions {
    fn default() -> Self {
        Self {
            allow_streamlocal: "yes",
            host_key_type: "ed25519",
            extra_host_key_types: Vec::new(),
            client_key_types: vec!["ed25519"],
            client_key_passphrase: "",
            long_tmpdir: false,
            authorized_keys_options: "",
            chroot: None,
            extra_config: String::new(),
        }
    }
}

/// A running sshd.
pub struct Sshd {
    /// First, so it is dropped (sshd killed) before its directory is removed.
    child: Spawned,
    /// Everything of this sshd (and the test's other files) lives here.
    pub dir: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The login user (the current user, or [`TEST_USER`] when running as root).
    pub user: String,
    /// Client private keys, in the order of [`SshdOptions::client_key_types`].
    pub client_keys: Vec<PathBuf>,
    /// A known_hosts file with this sshd's host key as `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    /// The host public key line (`TYPE BASE64 COMMENT`).
    pub host_key_pub: String,
    /// TMPDIR of sessions on this sshd (where `pull` makes its private socket directory).
    pub tmpdir: PathBuf,
    log: PathBuf,
    /// The chrooted sshd's pid and mount namespaces (`pid:[N]`, `mnt:[N]`), to see them gone.
    namespaces: Option<(String, String)>,
}

fn keygen(kind: &str, path: &Path, passphrase: &str) {
    let mut cmd = TestCommand::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "borg-pull-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    crate::assert_ok(&cmd.output(), &format!("ssh-keygen -t {kind}"));
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The unprivileged user tests log in as when they run as root.
pub const TEST_USER: &str = "borg-pull-test";

/// The login user: the current user, or [`TEST_USER`] (created if missing) when running as root:
/// backups normally log in unprivileged, and root would hide permission mistakes.
fn login_user() -> String {
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !is_root() {
        return current_user();
    }
    let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .arg("-u")
        .arg(TEST_USER)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        // `-p '*'`: not locked (with UsePAM no, sshd refuses locked accounts, pitfall P3).
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", "-p", "*", TEST_USER])
            .output()
            .expect("run useradd");
        assert!(out.status.success(), "useradd {TEST_USER}: {out:?}");
    }
    TEST_USER.to_owned()
}

/// Gives the login user `path` (when tests run as root).
pub fn chown_to_login_user(path: &Path) {
    if is_root() {
        let out = Command::new("chown")
            .arg("-R")
            .arg(TEST_USER)
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown {}: {out:?}", path.display());
    }
}

impl Sshd {
    /// Starts an sshd with default options.
    pub fn start() -> Sshd {
        Self::start_with(SshdOptions::default())
    }

    /// Starts an sshd; panics with its log if it does not come up.
    pub fn start_with(options: SshdOptions) -> Sshd {
        if is_root() {
            // sshd's privilege separation directory (normally made by systemd).
            let _ = fs::create_dir_all("/run/sshd");
        }
        let user = login_user();
        let dir = tempfile::Builder::new()
            .prefix("bpt-")
            .tempdir_in(reachable_temp_base())
            .expect("temp dir");
        let d = dir.path();
        // The login user must reach the test's files (data, relay, its TMPDIR).
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        assert_searchable_by_others(d);
        let host_key = d.join("host_key");
        keygen(options.host_key_type, &host_key, "");
        let host_key_pub = fs::read_to_string(d.join("host_key.pub"))
            .unwrap()
            .trim()
            .to_owned();
        let mut host_key_lines = format!("HostKey {}\n", host_key.display());
        for (i, kind) in options.extra_host_key_types.iter().enumerate() {
            let extra = d.join(format!("host_key_extra_{i}"));
            keygen(kind, &extra, "");
            host_key_lines.push_str(&format!("HostKey {}\n", extra.display()));
        }
        let mut authorized = String::new();
        let mut client_keys = Vec::new();
        for (i, kind) in options.client_key_types.iter().enumerate() {
            let key = d.join(format!("client_{i}_{kind}"));
            keygen(kind, &key, options.client_key_passphrase);
            authorized.push_str(options.authorized_keys_options);
            authorized.push_str(&fs::read_to_string(format!("{}.pub", key.display())).unwrap());
            client_keys.push(key);
        }
        fs::write(d.join("authorized_keys"), authorized).unwrap();
        let mut tmpdir = d.join("tmp");
        if options.long_tmpdir {
            tmpdir = tmpdir.join("x".repeat(100));
        }
        fs::create_dir_all(&tmpdir).unwrap();
        chown_to_login_user(&tmpdir);
        // The sessions' cache (`pull --install-relay`), so tests never write to a real home.
        let cache = d.join("cache");
        fs::create_dir_all(&cache).unwrap();
        chown_to_login_user(&cache);
        let log = d.join("sshd.log");
        if let Some(tree) = &options.chroot {
            prepare_chroot(d, tree, &user);
        }

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = d.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\n{hk}AuthorizedKeysFile {ak}\n\
                     PidFile {pid}\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     AllowStreamLocalForwarding {fwd}\nStreamLocalBindUnlink no\n\
                     X11Forwarding no\nPrintMotd no\nLogLevel DEBUG1\nMaxStartups 50\nMaxSessions 20\n\
                     SetEnv TMPDIR={tmp} XDG_CACHE_HOME={cache}\n",
                    hk = host_key_lines,
                    ak = d.join("authorized_keys").display(),
                    pid = d.join("sshd.pid").display(),
                    fwd = options.allow_streamlocal,
                    tmp = tmpdir.display(),
                    cache = cache.display(),
                ),
            )
            .unwrap();
            append_config(&config, &options);
            let _ = fs::remove_file(&log);
            let mut child = match &options.chroot {
                None => TestCommand::new(SSHD)
                    .arg("-f")
                    .arg(&config)
                    .args(["-D", "-e"])
                    .spawn(log.clone()),
                Some(tree) => chrooted_sshd(d, tree, &config).spawn(log.clone()),
            };
            if wait_ready(port, &mut child) {
                let namespaces = options.chroot.as_ref().map(|_| namespaces_of(&child));
                let known_hosts = d.join("known_hosts");
                fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key_pub}\n")).unwrap();
                return Sshd {
                    dir,
                    port,
                    user,
                    client_keys,
                    known_hosts,
                    host_key_pub,
                    tmpdir,
                    log,
                    child,
                    namespaces,
                };
            }
            drop(child);
            last_log = fs::read_to_string(&log).unwrap_or_default();
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// The first client key.
    pub fn client_key(&self) -> &Path {
        &self.client_keys[0]
    }

    /// `USER@127.0.0.1`.
    pub fn destination(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    /// PID of the listening sshd (its sessions are its descendants).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The path of sshd's log (for [`TestCommand::attach_log`]).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Entries left in the sessions' TMPDIR (private socket directories not cleaned up).
    pub fn tmpdir_entries(&self) -> Vec<String> {
        fs::read_dir(&self.tmpdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Where the test's files go: TMPDIR, unless the login user cannot pass through it (a private
/// TMPDIR), then `/tmp`. Everything the client side runs or reads lives below it.
fn reachable_temp_base() -> PathBuf {
    let tmp = std::env::temp_dir();
    match blocked_ancestor(&tmp.join("x")) {
        None => tmp,
        Some(_) => PathBuf::from("/tmp"),
    }
}

/// Panics, naming the culprit, unless every directory above `dir` lets others through: otherwise
/// the login user cannot reach what the tests put there, and pull reports it "not found".
fn assert_searchable_by_others(dir: &Path) {
    if let Some(culprit) = blocked_ancestor(dir) {
        panic!(
            "{culprit} keeps the login user {TEST_USER} out of the test's files in {}",
            dir.display()
        );
    }
}

/// The first directory above `dir` that others cannot pass through (when running as root; as
/// another user the login user is ourselves).
fn blocked_ancestor(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        return None;
    }
    dir.ancestors().skip(1).find_map(|ancestor| {
        let mode = fs::metadata(ancestor).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| format!("{} (mode {:04o})", ancestor.display(), mode & 0o7777))
    })
}

fn is_root() -> bool {
    current_user() == "root"
}

/// A port the OS just gave us; sshd binds it a moment later (callers retry on a race).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Polls until sshd answers with its SSH banner, it exits, or 15 s pass.
fn wait_ready(port: u16, child: &mut Spawned) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if !child.is_running() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && &buf[..4] == b"SSH-" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The login user tests use (created when running as root and missing), without starting an sshd.
pub fn ensure_login_user() -> String {
    login_user()
}

/// Run by `unshare --mount --propagation private --pid --fork --kill-child` as the new pid
/// namespace's first process, so no mount reaches the host and every process and mount goes with
/// the fixture: its SIGKILL of the process group kills unshare and this process (then sshd), and
/// the kernel kills everything else in a pid namespace whose first process dies. The tree is the
/// lower layer of a per-test overlay (parallel tests never write to the shared cache); the test's
/// directory is bound at its own path, so config, keys, TMPDIR, relay and data paths are the same
/// inside. Paths come in the environment, not argv: the tests look for leftovers of a test by its
/// directory in every process's argv.
pub const CHROOT_SCRIPT: &str = r#"set -eu
m="$BP_DIR/chroot/root"
mount -t overlay overlay -o "lowerdir=$BP_TREE,upperdir=$BP_DIR/chroot/upper,workdir=$BP_DIR/chroot/work" "$m"
mkdir -p "$m$BP_DIR"
mount --bind "$BP_DIR" "$m$BP_DIR"
mount --rbind /dev "$m/dev"
mount -t proc proc "$m/proc"
exec chroot "$m" /usr/sbin/sshd -f "$BP_CONFIG" -D -e
"#;

/// The chrooted sshd of [`SshdOptions::chroot`], not yet started.
fn chrooted_sshd(d: &Path, tree: &Path, config: &Path) -> TestCommand {
    let mut cmd = TestCommand::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
    ])
    .args(["--", "/bin/sh", "-c", CHROOT_SCRIPT])
    .env("BP_TREE", tree)
    .env("BP_DIR", d)
    .env("BP_CONFIG", config);
    cmd
}

/// The overlay's directories, and in its upper layer what the test adds to the tree: the login
/// user with its host uid and gid (files it writes in the bound test directory are the test's
/// to read), its home, and sshd's privilege separation directory.
fn prepare_chroot(d: &Path, tree: &Path, user: &str) {
    use std::os::unix::fs::PermissionsExt;
    assert!(is_root(), "a chrooted sshd needs root (mount, chroot)");
    for sub in ["root", "work", "upper/etc", "upper/run/sshd"] {
        fs::create_dir_all(d.join("chroot").join(sub)).unwrap();
    }
    let upper = d.join("chroot/upper");
    let id = |flag: &str| -> String {
        let out = TestCommand::new("id").arg(flag).arg(user).output();
        crate::assert_ok(&out, "id");
        out.stdout_text().trim().to_owned()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    let home = format!("/home/{user}");
    for (file, line) in [
        ("passwd", format!("{user}:x:{uid}:{gid}::{home}:/bin/sh\n")),
        ("group", format!("{user}:x:{gid}:\n")),
        // `*`, not `!`: with UsePAM no, sshd refuses locked accounts.
        ("shadow", format!("{user}:*:20000:0:99999:7:::\n")),
    ] {
        let original = tree.join("etc").join(file);
        let mut text =
            fs::read_to_string(&original).unwrap_or_else(|e| panic!("{}: {e}", original.display()));
        text.push_str(&line);
        let copy = upper.join("etc").join(file);
        fs::write(&copy, text).unwrap();
        let mode = fs::metadata(&original).unwrap().permissions().mode();
        fs::set_permissions(&copy, fs::Permissions::from_mode(mode)).unwrap();
    }
    let home_dir = upper.join(home.trim_start_matches('/'));
    fs::create_dir_all(&home_dir).unwrap();
    let out = TestCommand::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(&home_dir)
        .output();
    crate::assert_ok(&out, "chown home");
}

/// Appends [`SshdOptions::extra_config`], and for a chrooted sshd (OpenSSH 10) what only it knows.
fn append_config(config: &Path, options: &SshdOptions) {
    use std::io::Write;
    // The test's own lines first: sshd keeps the first value it reads, so a test can turn
    // penalties back on.
    let mut extra = options.extra_config.clone();
    if options.chroot.is_some() {
        // OpenSSH >= 9.8 shuns an address for a while after failed logins or early disconnects;
        // every test client is 127.0.0.1 and some fail on purpose.
        extra.push_str("PerSourcePenalties no\n");
    }
    let mut file = fs::OpenOptions::new().append(true).open(config).unwrap();
    file.write_all(extra.as_bytes()).unwrap();
}

/// The pid and mount namespaces of the chrooted sshd (the only child of unshare).
fn namespaces_of(child: &Spawned) -> (String, String) {
    let inner = crate::children_of(child.pid());
    assert_eq!(inner.len(), 1, "unshare's children: {inner:?}");
    let ns = |kind: &str| -> String {
        fs::read_link(format!("/proc/{}/ns/{kind}", inner[0]))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    (ns("pid"), ns("mnt"))
}

/// Pids of the processes in the namespace `ns` (`pid:[N]` or `mnt:[N]`).
fn processes_in_namespace(ns: &str) -> Vec<u32> {
    let kind = ns.split(':').next().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/{kind}")).is_ok_and(|link| link.to_string_lossy() == ns)
        })
        .collect()
}

impl Sshd {
    /// Stops a chrooted sshd and waits (bounded) until no process is left in its pid or mount
    /// namespace (so its mounts are gone with it), and checks that no mount of the test's
    /// directory ever reached the host.
    pub fn stop_and_assert_gone(self) {
        let Sshd {
            child,
            dir,
            namespaces,
            ..
        } = self;
        let (pid_ns, mnt_ns) = namespaces.expect("stop_and_assert_gone is for a chrooted sshd");
        // The check below sees the namespaces' processes at all (it is not vacuous).
        assert!(
            !processes_in_namespace(&pid_ns).is_empty(),
            "no process in {pid_ns}"
        );
        assert!(
            !processes_in_namespace(&mnt_ns).is_empty(),
            "no process in {mnt_ns}"
        );
        drop(child);
        for ns in [&pid_ns, &mnt_ns] {
            crate::wait_until(&format!("every process of {ns} to end"), || {
                processes_in_namespace(ns).is_empty()
            });
        }
        let needle = dir.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&needle),
            "a mount of the test reached the host:\n{mounts}"
        );
        drop(dir);
    }
}
