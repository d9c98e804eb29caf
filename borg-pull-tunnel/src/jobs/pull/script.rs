//! The one shell script a pull runs on the client, and how we read what it reports.
//!
//! One exec does everything on the client, so set-up and clean-up cost no round trips of their
//! own: the script enters `--remote-dir` (or reports why it cannot), checks that the relay and borg
//! can run, makes a private directory (`mktemp -d` with umask 077), starts a watcher that removes
//! the directory once borg has exited, reports the directory on stdout and waits for one line on
//! stdin. We request the socket forward into that directory and send `go` (with `BORG_RSH` and the
//! passphrase line) right behind the request; the script checks that sshd made the socket, exports
//! borg's environment and `exec`s borg, so borg is the session's process and our SIGINT reaches it
//! directly. EOF instead of `go` makes it exit (the watcher still cleans up). If the server dies,
//! sshd closes the session: borg loses its relay and exits, and the watcher removes the directory.
//!
//! If the link dies silently (no FIN or RST: the client's sshd never learns of it, and borg would
//! keep the cache lock), the run's [`Guard`] ends it: after `go` the server writes a heartbeat
//! line on stdin every [`HEARTBEAT_INTERVAL`](crate::limits::HEARTBEAT_INTERVAL); a reader in the
//! background stamps each into the private directory (borg itself gets /dev/null), and the
//! watcher, after [`CLIENT_SILENCE_LIMIT`](crate::limits::CLIENT_SILENCE_LIMIT) without a beat,
//! stops borg's process group and removes the directory. The directory records what the next
//! run needs to clear a dead run whose watcher is gone or late: the pid borg has, its start time,
//! process group and uid.
//!
//! The script is shell in `.sh` files beside this one (`start.sh`, `borg_version.sh`, `go.sh`, and
//! as a run needs them `remote_dir.sh`, `install_relay.sh`, `ssh_log.sh`), after the shared
//! `check.sh` and `guard.sh` of [`crate::jobs::runner`]; every value goes in the prelude of quoted
//! variable assignments ([`RemoteRun::script`]). It reports on lines that start with a per-run
//! marker, so whatever the login user's shell start-up files print cannot be mistaken for a report.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use russh::client::Msg;
use russh::Channel;

use crate::error::RemoteProgram;
use crate::jobs::runner::{self, Prelude, Reports, CHECK_SH, GUARD_SH};
use crate::limits::{BORG_STDERR_TAIL, CLIENT_SSH_LOG_KEPT};
use crate::ssh::exec::{escape_output, is_env_name, shell_quote};
use crate::{Error, Result};

pub use crate::jobs::runner::{is_private_dir_path, new_marker, Cleared, Guard, DIR_PREFIX};

/// `bp_check PROGRAM ROLE` ([`crate::jobs::runner::CHECK_SH`]), for scripts put together
/// elsewhere (`borg-pull-server check-config`).
pub const CHECK_FUNCTION: &str = CHECK_SH;

/// Checks what the prelude names (see `start.sh`), enters `--remote-dir`, installs the relay,
/// sends the ssh log back; then the client borg's version, the private directory and `exec borg`.
const START_SH: &str = include_str!("start.sh");
const REMOTE_DIR_SH: &str = include_str!("remote_dir.sh");
const INSTALL_RELAY_SH: &str = include_str!("install_relay.sh");
const SSH_LOG_SH: &str = include_str!("ssh_log.sh");
const BORG_VERSION_SH: &str = include_str!("borg_version.sh");
const GO_SH: &str = include_str!("go.sh");

/// What the script on the client needs to know: plain data, no options or sessions.
#[derive(Debug, Clone)]
pub struct RemoteRun<'a> {
    /// The relay program on the client.
    pub relay: &'a OsStr,
    /// The borg program on the client.
    pub borg: &'a OsStr,
    /// borg's arguments.
    pub borg_args: &'a [OsString],
    /// Extra variables for borg, already checked against the reserved names.
    pub env: &'a [(String, OsString)],
    /// `BORG_REPO` for borg.
    pub repo_url: &'a [u8],
    /// Also export `BORGSTORE_RSH` as `BORG_RSH` (borg 2 reaches a `rest://`/`ssh://` store
    /// through borgstore, which reads its own variable).
    pub borgstore_rsh: bool,
    /// Directory to run borg in.
    pub remote_dir: Option<&'a OsStr>,
    /// Whether a passphrase line follows the `BORG_RSH` line on stdin.
    pub passphrase: bool,
    /// `Some`: borg reaches the server with the client's own `ssh` and our forwarded agent (the
    /// docs' agent and TCP methods) instead of the relay and the forwarded socket.
    pub ssh_back: Option<SshBack<'a>>,
    /// `Some`: use the relay from the login user's cache, installing it first when it is not
    /// there ([`RelayInstall`]); `relay` is then ignored.
    pub install_relay: Option<RelayInstall<'a>>,
}

/// The server's relay binary, for `--install-relay`: the client keeps it as
/// `${XDG_CACHE_HOME:-$HOME/.cache}/borg-pull/NAME` (0700), where NAME carries the version and
/// checksum, so a cached file is current exactly when its name matches.
#[derive(Debug, Clone)]
pub struct RelayInstall<'a> {
    /// `relay-VERSION-SHA256PREFIX`.
    pub name: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex: checked on the client before the file is renamed into place.
    pub sha256: &'a str,
}

/// What the client's `ssh` needs to log in to the server's sshd (the agent and TCP methods).
#[derive(Debug, Clone)]
pub struct SshBack<'a> {
    /// The ssh program on the client.
    pub ssh: &'a OsStr,
    /// The server's host key as a known_hosts line for [`SERVER_HOST_ALIAS`].
    pub known_hosts_line: &'a str,
    /// The agent key's public half (one OpenSSH line): ssh offers only this agent key.
    pub identity_line: &'a str,
}

/// The name the client's ssh checks the server's host key under (`HostKeyAlias`), whatever
/// address and port it connects to; the temporary known_hosts file has this one entry.
pub const SERVER_HOST_ALIAS: &str = "borg-pull-server";

/// File names in the private directory for the agent and TCP methods (as `go.sh` and
/// `ssh_log.sh` write them).
const KNOWN_HOSTS_NAME: &str = "known_hosts";
const IDENTITY_NAME: &str = "agent_key.pub";
/// The client's ssh log (`ssh -E`) in the private directory (agent and TCP methods).
const SSH_LOG_NAME: &str = "ssh.log";

/// What starts each line of the client's ssh log when the watcher sends it back, after the run's
/// marker (as `ssh_log.sh` writes it).
const SSH_LOG_TAG: &str = "ssh ";
/// The line (after the marker) that ends the ssh log the watcher sends back, also when it is empty.
const SSH_LOG_END: &str = "ssh-end";

/// The lines the script reads once the forward listens: `go`, borg's `BORG_RSH` (the relay and
/// the socket, each quoted for borg's shlex splitting) and the passphrase, if any.
pub fn go_lines(relay: &OsStr, dir: &str, passphrase: Option<&str>) -> Result<Vec<u8>> {
    let mut rsh = shell_quote(relay.as_bytes())?;
    rsh.extend_from_slice(b" --socket ");
    rsh.extend(shell_quote(format!("{dir}/{SOCKET_NAME}").as_bytes())?);
    if rsh.contains(&b'\n') {
        return Err(Error::InvalidOption(format!(
            "the relay path {:?} contains a newline",
            relay.to_string_lossy()
        )));
    }
    Ok(go_lines_with(rsh, passphrase))
}

/// Where the client's ssh connects (agent and TCP methods). It is handed to ssh as `-o` options,
/// not put in the repository URL: borg remembers a repository's URL and asks before it uses one
/// it knew under another, so every method gives borg the same `ssh://borg-pull-server/REPO`.
#[derive(Debug, Clone, Copy)]
pub struct SshTarget<'a> {
    /// The server's sshd: a name or an address (IPv6 without brackets).
    pub host: &'a str,
    /// Its TCP port.
    pub port: u16,
    /// The login user on the server.
    pub user: &'a str,
}

/// Like [`go_lines`] for the agent and TCP methods: `BORG_RSH` is the client's `ssh` with the
/// server's host key pinned (only the temporary known_hosts file, `StrictHostKeyChecking=yes`),
/// only the agent key offered, the address, port and user of `target`, and its log going to
/// `ssh.log` in the private directory (the script's watcher sends it back once borg has exited).
pub fn go_lines_ssh(
    ssh: &OsStr,
    dir: &str,
    target: SshTarget<'_>,
    passphrase: Option<&str>,
) -> Result<Vec<u8>> {
    if ssh.as_bytes().contains(&b'\n') || dir.contains(['"', '\n']) {
        return Err(Error::InvalidOption(format!(
            "the ssh program {:?} or the client's directory {dir:?} contains a newline or a double quote",
            ssh.to_string_lossy()
        )));
    }
    // ssh's config parser splits option values at spaces and reads quotes; newer OpenSSH expands
    // %-tokens and ${VAR} in User, older ones do not: such a value means different things to
    // different clients, so it is refused rather than guessed at.
    let odd = |v: &str| {
        v.is_empty() || v.contains(|c: char| c.is_whitespace() || c.is_control() || "\"'\\".contains(c))
    };
    if odd(target.host) || odd(target.user) || target.user.contains(['%', '$']) {
        return Err(Error::InvalidOption(format!(
            "the server login {:?}@{:?} cannot be handed to the client's ssh: the user and host may \
             not be empty or contain spaces, quotes or backslashes, and the user no % or $",
            target.user, target.host
        )));
    }
    // ssh expands %-tokens in these options and splits UserKnownHostsFile at spaces: escape `%`
    // and quote the value for ssh's own config parser.
    let file = |name: &str| format!("\"{}/{name}\"", dir.replace('%', "%%"));
    let words: Vec<String> = vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", file(KNOWN_HOSTS_NAME)),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("HostKeyAlias={SERVER_HOST_ALIAS}"),
        "-o".into(),
        "UpdateHostKeys=no".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("IdentityFile={}", file(IDENTITY_NAME)),
        "-o".into(),
        "ClearAllForwardings=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", crate::limits::CONNECT_TIMEOUT.as_secs()),
        "-o".into(),
        format!(
            "ServerAliveInterval={}",
            crate::limits::KEEPALIVE_INTERVAL.as_secs()
        ),
        "-o".into(),
        format!("HostName={}", target.host.replace('%', "%%")),
        "-o".into(),
        format!("Port={}", target.port),
        "-o".into(),
        format!("User={}", target.user),
        // Not an option with tokens: the path as it is. ssh creates it 0600 in our 0700 directory.
        "-E".into(),
        format!("{dir}/{SSH_LOG_NAME}"),
    ];
    let mut rsh = shell_quote(ssh.as_bytes())?;
    for word in words {
        rsh.push(b' ');
        rsh.extend(shell_quote(word.as_bytes())?);
    }
    Ok(go_lines_with(rsh, passphrase))
}

fn go_lines_with(rsh: Vec<u8>, passphrase: Option<&str>) -> Vec<u8> {
    // Sized once, so growing it leaves no copy of the passphrase behind in freed memory.
    let mut lines = Vec::with_capacity(3 + rsh.len() + 1 + passphrase.map_or(0, |p| p.len() + 1));
    lines.extend_from_slice(b"go\n");
    lines.extend(rsh);
    lines.push(b'\n');
    if let Some(p) = passphrase {
        lines.extend_from_slice(p.as_bytes());
        lines.push(b'\n');
    }
    lines
}

/// Environment variables the script sets itself; extra variables may not override them.
pub const RESERVED_ENV: &[&str] = &["BORG_REPO", "BORG_RSH", "BORGSTORE_RSH", "BORG_PASSPHRASE"];

/// The file name of the socket inside the private directory.
pub const SOCKET_NAME: &str = "borg.sock";

impl RemoteRun<'_> {
    /// The script, with `marker` starting each report line. Fails on a NUL byte or a bad or
    /// reserved variable name, before anything touches the network.
    pub fn script(&self, marker: &str) -> Result<Vec<u8>> {
        self.script_guarded(marker, &Guard::default())
    }

    /// [`RemoteRun::script`] with the guard's bounds given.
    pub(crate) fn script_guarded(&self, marker: &str, guard: &Guard) -> Result<Vec<u8>> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut p = Prelude::new();
        p.set("bp_m", marker)?;
        guard.set(&mut p)?;
        let mut parts = vec![CHECK_SH, GUARD_SH];
        let (mut transport, role, via) = match &self.ssh_back {
            None => (self.relay, "relay", "socket"),
            Some(back) => (back.ssh, "ssh", "ssh"),
        };
        if let Some(back) = &self.ssh_back {
            p.set("bp_known_hosts", back.known_hosts_line)?
                .set("bp_identity", back.identity_line)?
                .set("bp_log_kept", CLIENT_SSH_LOG_KEPT.to_string())?;
            parts.push(SSH_LOG_SH);
        }
        if let Some(dir) = self.remote_dir {
            // `cd -` would go to OLDPWD, even after `--`.
            let dir: &[u8] = match dir.as_bytes() {
                b"-" => b"./-",
                other => other,
            };
            p.set("bp_remote_dir", dir)?;
            parts.push(REMOTE_DIR_SH);
        }
        if let (Some(install), None) = (&self.install_relay, &self.ssh_back) {
            install.set(&mut p)?;
            parts.push(INSTALL_RELAY_SH);
            // install_relay.sh checks the relay it installed.
            transport = OsStr::new("");
        }
        p.set("bp_transport", transport.as_bytes())?
            .set("bp_transport_role", role)?
            .set("bp_via", via)?
            .set("bp_borg", self.borg.as_bytes())?
            .set(
                "bp_version_secs",
                crate::limits::BORG_VERSION_TIMEOUT.as_secs().to_string(),
            )?
            .set("bp_store_rsh", yes(self.borgstore_rsh))?
            .set("bp_passphrase", yes(self.passphrase))?;
        // Exported right before borg starts (`go.sh`), not here: the checks, `borg --version` and
        // mktemp see the login environment, as borg's variables are borg's alone.
        let mut exports = Vec::with_capacity(self.env.len() + 1);
        for (name, value) in self.env {
            check_env_name(name)?;
            exports.push([name.as_bytes(), b"=", value.as_bytes()].concat());
        }
        exports.push([&b"BORG_REPO="[..], self.repo_url].concat());
        p.set("bp_nenv", exports.len().to_string())?;
        p.words(
            exports
                .iter()
                .map(Vec::as_slice)
                .chain(self.borg_args.iter().map(|a| a.as_bytes())),
        )?;
        parts.extend([START_SH, BORG_VERSION_SH, GO_SH]);
        Ok(runner::compose(p, &parts))
    }
}

fn check_env_name(name: &str) -> Result<()> {
    if !is_env_name(name) {
        return Err(Error::InvalidOption(format!(
            "{name:?} is not a valid environment variable name"
        )));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(Error::InvalidOption(format!("{name} is set by borg-pull itself")));
    }
    // The script's own variables: one of them set by the caller would change what it does.
    if name.starts_with("bp_") {
        return Err(Error::InvalidOption(format!(
            "{name}: names that start with bp_ are the client script's own"
        )));
    }
    Ok(())
}

impl RelayInstall<'_> {
    /// What `install_relay.sh` reads from the prelude: the cached relay's name, size and SHA-256.
    fn set(&self, prelude: &mut Prelude) -> Result<()> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !valid(self.name) || !valid(self.sha256) {
            return Err(Error::InvalidOption(format!(
                "bad relay name {:?} or checksum",
                self.name
            )));
        }
        prelude
            .set("bp_relay_name", self.name)?
            .set("bp_relay_size", self.size.to_string())?
            .set("bp_relay_sha", self.sha256)?;
        Ok(())
    }
}

/// What the script reported before borg could start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The private directory it made (checked with [`is_private_dir_path`]), and the first line
    /// `borg --version` printed on the client just before (`None` if no version line came).
    Dir {
        /// The directory.
        dir: String,
        /// What `borg --version` printed (escaped).
        borg_version: Option<String>,
        /// The installed relay's path (`--install-relay`).
        relay: Option<String>,
        /// Dead runs the script cleared before it started this one ([`Cleared`]).
        cleared: Vec<Cleared>,
    },
    /// `--install-relay`: the cached relay is missing or another version; send `relay` and it.
    NeedRelay,
    /// `--install-relay`: the received relay's checksum did not match (what the client computed).
    BadRelay(String),
    /// A program cannot run, and why.
    Missing(RemoteProgram, String),
    /// The client's sshd did not forward our agent (no `SSH_AUTH_SOCK` in the session).
    NoAgent,
    /// The directory borg is to run in (`--remote-dir`) cannot be entered, and why.
    NoDir(String),
}

/// Reads the channel until the script's first report; anything else it printed before (bounded by
/// [`HELPER_OUTPUT_KEPT`](crate::limits::HELPER_OUTPUT_KEPT)) only shows up in errors. Bytes after
/// the report line are returned too.
pub async fn read_report(channel: &mut Channel<Msg>, marker: &str) -> Result<(Report, Vec<u8>)> {
    runner::read_report::<PullReports>(channel, marker).await
}

/// The pull's reading of its report lines: `version`, `relay` and `cleared` lines come before
/// the one [`Report`] that ends the wait.
#[derive(Debug, Default)]
pub(crate) struct PullReports {
    borg_version: Option<String>,
    relay: Option<String>,
    cleared: Vec<Cleared>,
}

impl Reports for PullReports {
    type Report = Report;
    const STEP: &'static str = "the start of the run (mktemp -d, umask 077)";
    const EXPECTED: &'static str = "expected the new directory's absolute path";

    fn line(&mut self, rest: &[u8]) -> Result<Option<Report>> {
        if let Some(version) = rest.strip_prefix(b"version ") {
            self.borg_version = Some(escape_output(version));
        } else if let Some(path) = rest.strip_prefix(b"relay ") {
            self.relay = Some(String::from_utf8_lossy(path).into_owned());
        } else if let Some(what) = rest.strip_prefix(b"cleared ") {
            self.cleared.push(Cleared::parse(what));
        } else {
            let mut report = parse_report(rest)?;
            if let Report::Dir {
                borg_version,
                relay,
                cleared,
                ..
            } = &mut report
            {
                *borg_version = self.borg_version.take();
                *relay = self.relay.take();
                *cleared = std::mem::take(&mut self.cleared);
            }
            return Ok(Some(report));
        }
        Ok(None)
    }
}

#[cfg(test)]
fn find_report(stdout: &[u8], marker: &str) -> Result<Option<(Report, Vec<u8>)>> {
    runner::find_report::<PullReports>(stdout, marker)
}

fn parse_report(line: &[u8]) -> Result<Report> {
    let text = String::from_utf8_lossy(line);
    let bad = || Error::RemoteHelper {
        command: PullReports::STEP.into(),
        status: None,
        output: format!("unexpected report {:?}", escape_output(line)),
    };
    if let Some(dir) = text.strip_prefix("dir ") {
        return if is_private_dir_path(dir) {
            Ok(Report::Dir {
                dir: dir.to_owned(),
                borg_version: None,
                relay: None,
                cleared: Vec::new(),
            })
        } else {
            Err(bad())
        };
    }
    if let Some(why) = text.strip_prefix("nodir ") {
        return Ok(Report::NoDir(escape_output(why.as_bytes())));
    }
    if text == "noagent" {
        return Ok(Report::NoAgent);
    }
    if text == "needrelay" {
        return Ok(Report::NeedRelay);
    }
    if let Some(got) = text.strip_prefix("badrelay ") {
        return Ok(Report::BadRelay(escape_output(got.as_bytes())));
    }
    let rest = text.strip_prefix("missing ").ok_or_else(bad)?;
    let (role, why) = rest.split_once(' ').ok_or_else(bad)?;
    let role = match role {
        "relay" => RemoteProgram::Relay,
        "borg" => RemoteProgram::Borg,
        "ssh" => RemoteProgram::Ssh,
        _ => return Err(bad()),
    };
    Ok(Report::Missing(role, escape_output(why.as_bytes())))
}

/// Borg's standard error on its way to ours (agent and TCP methods), with the lines the script's
/// watcher sends back after borg has exited (the client ssh's log, each line after the run's
/// marker) taken out. Both are bounded: the log to [`CLIENT_SSH_LOG_KEPT`], what we look at of
/// borg's own output to its last [`BORG_STDERR_TAIL`] bytes; the rest passes through unchanged.
pub struct StderrSplit<'a, E> {
    inner: &'a mut E,
    marker: Vec<u8>,
    /// At the start of a line (after `\n` or `\r`, or at the start).
    line_start: bool,
    /// How much of the marker the bytes since the line start matched (held back until known).
    held: usize,
    /// Inside a marker line: its bytes go to `marked`, not to `inner`.
    in_marked: bool,
    marked: Vec<u8>,
    tail: Vec<u8>,
    pending: Vec<u8>,
    written: usize,
    /// Our stderr failed: what borg prints is dropped from then on, the log still collected.
    broken: bool,
}

/// What [`StderrSplit::finish`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSshLog {
    /// The lines of the client ssh's log as sent back (raw; escape before showing them).
    pub lines: Vec<Vec<u8>>,
    /// Whether the end line came: the log is complete (possibly empty).
    pub complete: bool,
    /// The end of what borg printed on stderr.
    pub borg_tail: Vec<u8>,
}

impl<'a, E: tokio::io::AsyncWrite + Unpin> StderrSplit<'a, E> {
    /// Splits what is written to it for `inner`, for the run with this `marker`.
    pub fn new(inner: &'a mut E, marker: &str) -> Self {
        Self {
            inner,
            marker: marker.as_bytes().to_vec(),
            line_start: true,
            held: 0,
            in_marked: false,
            marked: Vec::new(),
            tail: Vec::new(),
            pending: Vec::new(),
            written: 0,
            broken: false,
        }
    }

    fn pass(&mut self, bytes: &[u8]) {
        if !self.broken {
            self.pending.extend_from_slice(bytes);
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * BORG_STDERR_TAIL {
            self.tail.drain(..self.tail.len() - BORG_STDERR_TAIL);
        }
    }

    fn feed(&mut self, buf: &[u8]) {
        for &b in buf {
            if self.in_marked {
                if self.marked.len() < CLIENT_SSH_LOG_KEPT + 64 {
                    self.marked.push(b);
                }
                if b == b'\n' {
                    self.in_marked = false;
                    self.line_start = true;
                }
                continue;
            }
            if self.line_start && self.held < self.marker.len() && self.marker[self.held] == b {
                self.held += 1;
                if self.held == self.marker.len() {
                    self.held = 0;
                    self.in_marked = true;
                    self.line_start = false;
                }
                continue;
            }
            if self.held > 0 {
                let held = self.marker[..self.held].to_vec();
                self.held = 0;
                self.pass(&held);
            }
            self.pass(&[b]);
            self.line_start = b == b'\n' || b == b'\r';
        }
    }

    fn poll_pending(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        while self.written < self.pending.len() && !self.broken {
            match std::pin::Pin::new(&mut *self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.written += n,
                Poll::Ready(_) => self.broken = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(())
    }

    /// Writes what was held back and returns what was taken out.
    pub async fn finish(mut self) -> ClientSshLog {
        use tokio::io::AsyncWriteExt as _;
        if self.held > 0 {
            let held = self.marker[..self.held].to_vec();
            self.pass(&held);
        }
        let _ = self.flush().await;
        let mut log = ClientSshLog {
            borg_tail: self
                .tail
                .split_off(self.tail.len().saturating_sub(BORG_STDERR_TAIL)),
            ..ClientSshLog::default()
        };
        let mut kept = 0;
        for line in self.marked.split(|&b| b == b'\n') {
            if let Some(text) = line.strip_prefix(SSH_LOG_TAG.as_bytes()) {
                if kept + text.len() <= CLIENT_SSH_LOG_KEPT {
                    kept += text.len() + 1;
                    log.lines.push(text.to_vec());
                }
            } else if line == SSH_LOG_END.as_bytes() {
                log.complete = true;
            }
        }
        log
    }
}

impl<E: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StderrSplit<'_, E> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pending(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        this.feed(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        if this.broken {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    const MARKER: &str = "borg-pull-test:";

    struct Fixture {
        relay: OsString,
        borg: OsString,
        args: Vec<OsString>,
        env: Vec<(String, OsString)>,
        remote_dir: Option<OsString>,
        passphrase: Option<&'static str>,
        borgstore_rsh: bool,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                relay: "/bin/sh".into(),
                borg: "/bin/sh".into(),
                args: vec![],
                env: vec![("BORG_BASE_DIR".into(), "/tmp/b b".into())],
                remote_dir: None,
                passphrase: None,
                borgstore_rsh: false,
            }
        }

        fn script(&self) -> Result<Vec<u8>> {
            RemoteRun {
                relay: &self.relay,
                borg: &self.borg,
                borg_args: &self.args,
                env: &self.env,
                repo_url: b"ssh://borg-pull-server/srv/repo dir",
                borgstore_rsh: self.borgstore_rsh,
                remote_dir: self.remote_dir.as_deref(),
                passphrase: self.passphrase.is_some(),
                ssh_back: None,
                install_relay: None,
            }
            .script(MARKER)
        }

        /// Runs the script in `sh` as sshd would, answering its report with `go` lines (or EOF when
        /// `go` is false); returns the report, what followed on stdout, and the exit status.
        fn run(&self, tmpdir: &Path, go: bool) -> (Report, Vec<u8>, Option<i32>) {
            self.run_with_socket(tmpdir, go, true)
        }

        /// Like `run`; `socket` says whether "sshd" (here: we) made the forward's socket.
        fn run_with_socket(&self, tmpdir: &Path, go: bool, socket: bool) -> (Report, Vec<u8>, Option<i32>) {
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(OsStr::from_bytes(&self.script().unwrap()))
                .env("TMPDIR", tmpdir)
                // The remembered borg version goes here, not into the user's own cache.
                .env("XDG_CACHE_HOME", tmpdir.join("cache"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let mut stdout = child.stdout.take().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let report = loop {
                let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
                if let Some(found) = find_report(&seen, MARKER).unwrap() {
                    break found.0;
                }
                if n == 0 {
                    let status = child.wait().unwrap();
                    panic!("no report: {:?} {status}", String::from_utf8_lossy(&seen));
                }
            };
            let mut _listener = None;
            if let (true, Report::Dir { dir, .. }) = (go, &report) {
                if socket {
                    _listener =
                        Some(std::os::unix::net::UnixListener::bind(format!("{dir}/{SOCKET_NAME}")).unwrap());
                }
                stdin
                    .write_all(&go_lines(&self.relay, dir, self.passphrase).unwrap())
                    .unwrap();
            }
            drop(stdin);
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
            (report, rest, child.wait().unwrap().code())
        }
    }

    /// `--install-relay`'s part of the script: a transfer whose SHA-256 differs is reported and
    /// removed, never renamed into place; a matching one lands 0700 under its name.
    #[test]
    fn an_installed_relay_is_checked_before_it_is_used() {
        for (sha, ok) in [
            (
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                true,
            ), // "hello"
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                false,
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let mut f = Fixture::new();
            f.borg = "/bin/true".into();
            let script = RemoteRun {
                relay: &f.relay,
                borg: &f.borg,
                borg_args: &f.args,
                env: &f.env,
                repo_url: b"ssh://borg-pull-server/r",
                borgstore_rsh: false,
                remote_dir: None,
                passphrase: false,
                ssh_back: None,
                install_relay: Some(RelayInstall {
                    name: "relay-test-1",
                    size: 5,
                    sha256: sha,
                }),
            }
            .script(MARKER)
            .unwrap();
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(OsStr::from_bytes(&script))
                .env("TMPDIR", tmp.path())
                .env("XDG_CACHE_HOME", tmp.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            // The script asks before anything else it reports (it waits for the answer).
            stdin.write_all(b"relay\nhello").unwrap();
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let installed = tmp.path().join("borg-pull/relay-test-1");
            assert!(text.contains(&format!("{MARKER}needrelay")), "{text}");
            let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("borg-pull")).unwrap().collect();
            if ok {
                assert!(
                    text.contains(&format!("{MARKER}relay {}", installed.display())),
                    "{text}"
                );
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o700);
                assert_eq!(std::fs::read(&installed).unwrap(), b"hello");
                assert_eq!(leftovers.len(), 1);
            } else {
                assert!(text.contains(&format!("{MARKER}badrelay 2cf24dba")), "{text}");
                assert_eq!(out.status.code(), Some(2));
                assert!(leftovers.is_empty(), "{leftovers:?}");
            }
        }
    }

    /// The guard's bounds for the tests: seconds, not minutes.
    const QUICK: Guard = Guard {
        silence: 3,
        start: 30,
        grace: 2,
    };

    /// Polls (every 100 ms, at most `secs`) until `cond` holds.
    fn within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        cond()
    }

    /// The script started as sshd starts a session (its own process group), answered with `go`
    /// and the socket; stdin is kept open (the heartbeat channel). A stand-in borg that starts
    /// a child of its own (like borg's relay) and waits.
    fn started_run(tmp: &Path) -> (std::process::Child, std::process::ChildStdin, String) {
        use std::os::unix::process::CommandExt as _;
        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "sleep 60 & wait".into()];
        let script = RemoteRun {
            relay: &f.relay,
            borg: &f.borg,
            borg_args: &f.args,
            env: &f.env,
            repo_url: b"ssh://borg-pull-server/r",
            borgstore_rsh: false,
            remote_dir: None,
            passphrase: false,
            ssh_back: None,
            install_relay: None,
        }
        .script_guarded(MARKER, &QUICK)
        .unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .env("TMPDIR", tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let dir = loop {
            let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
            assert!(n > 0, "no report: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
            if let Some((Report::Dir { dir, .. }, _)) = find_report(&seen, MARKER).unwrap() {
                break dir;
            }
        };
        let listener = std::os::unix::net::UnixListener::bind(format!("{dir}/{SOCKET_NAME}")).unwrap();
        stdin.write_all(&go_lines(&f.relay, &dir, None).unwrap()).unwrap();
        drop(listener);
        assert!(
            within(10, || Path::new(&format!("{dir}/run")).exists()),
            "the run was not marked started"
        );
        (child, stdin, dir)
    }

    /// Whether any process of process group `pgid` is left (from /proc).
    fn group_alive(pgid: u32) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            // state, ppid, pgrp; a zombie waiting for us to reap it is gone.
            fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
        })
    }

    #[test]
    fn heartbeats_keep_a_run_alive_and_silence_stops_its_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut child, mut stdin, dir) = started_run(tmp.path());
        let pgid = child.id();
        // Twice the silence bound, beating every second: nothing is stopped.
        for _ in 0..2 * QUICK.silence {
            stdin.write_all(b"\n").unwrap();
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        assert!(child.try_wait().unwrap().is_none(), "a beating run was stopped");
        assert!(Path::new(&dir).exists());
        // Silence, stdin still open (a dead link sends no EOF): borg's whole group goes, and
        // the directory with it.
        let bound = QUICK.silence + QUICK.grace + 10;
        assert!(within(bound, || !Path::new(&dir).exists()), "{dir} left");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(15), "borg gets SIGTERM: {status}");
        assert!(
            within(bound, || !group_alive(pgid)),
            "borg's process group is left"
        );
        drop(stdin);
    }

    #[test]
    fn a_run_whose_borg_ignores_sigterm_is_killed() {
        use std::os::unix::process::CommandExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "trap '' TERM; sleep 60 & wait; wait".into()];
        let script = RemoteRun {
            relay: &f.relay,
            borg: &f.borg,
            borg_args: &f.args,
            env: &f.env,
            repo_url: b"ssh://borg-pull-server/r",
            borgstore_rsh: false,
            remote_dir: None,
            passphrase: false,
            ssh_back: None,
            install_relay: None,
        }
        .script_guarded(MARKER, &QUICK)
        .unwrap();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // No socket, no `go`: the start bound applies; here the run is started by hand.
        let dir = within(10, || std::fs::read_dir(tmp.path()).unwrap().count() == 1)
            .then(|| {
                std::fs::read_dir(tmp.path())
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path()
            })
            .unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(dir.join(SOCKET_NAME)).unwrap();
        stdin
            .write_all(&go_lines(&f.relay, dir.to_str().unwrap(), None).unwrap())
            .unwrap();
        let pgid = child.id();
        let bound = QUICK.silence + QUICK.grace + 10;
        assert!(within(bound, || !dir.exists()), "{} left", dir.display());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(within(bound, || !group_alive(pgid)));
    }

    /// A process in a process group of its own, as the dead run's borg was; killed on drop.
    struct Proc(std::process::Child);

    impl Proc {
        fn start(as_nobody: bool) -> Proc {
            use std::os::unix::process::CommandExt as _;
            let mut cmd = if as_nobody {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "120"]);
                c
            } else {
                let mut c = Command::new("sleep");
                c.arg("120");
                c
            };
            let child = cmd.process_group(0).spawn().unwrap();
            // setpriv execs sleep: wait until the uid changed.
            let pid = child.id();
            assert!(within(10, || std::fs::read_to_string(format!(
                "/proc/{pid}/cmdline"
            ))
            .is_ok_and(|c| c.starts_with("sleep"))));
            Proc(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }

        fn start_time(&self) -> String {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
            let after = stat.rsplit_once(") ").unwrap().1;
            after.split_whitespace().nth(19).unwrap().to_owned()
        }

        fn running(&mut self) -> bool {
            self.0.try_wait().unwrap().is_none()
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A run's directory as the guard leaves it: `beat` stamped `age` seconds ago, `run`
    /// naming `pid start pgid uid`.
    fn left_dir(tmp: &Path, name: &str, age: u64, run: Option<String>) -> std::path::PathBuf {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = tmp.join(format!("{DIR_PREFIX}{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        std::fs::write(dir.join("beat"), format!("{}\n", now - age)).unwrap();
        if let Some(run) = run {
            std::fs::write(dir.join("run"), format!("{run}\n")).unwrap();
            std::fs::write(dir.join("beats"), "").unwrap();
        }
        dir
    }

    #[test]
    fn the_next_run_clears_a_dead_run_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = rustix::process::getuid().as_raw();
        let stale = Guard::default().silence + 30;
        let record = |p: &Proc, start: &str, uid: u32| format!("{} {start} {} {uid}", p.pid(), p.pid());
        // Dead: stale beat, its borg still running as recorded.
        let mut dead_borg = Proc::start(false);
        let dead = left_dir(
            tmp.path(),
            "dead0001",
            stale,
            Some(record(&dead_borg, &dead_borg.start_time(), uid)),
        );
        // Dead, but the pid is now another process (its start time differs): not signalled.
        let mut recycled = Proc::start(false);
        let wrong_start = left_dir(tmp.path(), "recycl01", stale, Some(record(&recycled, "1", uid)));
        // Live: a fresh beat.
        let mut live_borg = Proc::start(false);
        let live = left_dir(
            tmp.path(),
            "live0001",
            1,
            Some(record(&live_borg, &live_borg.start_time(), uid)),
        );
        // Dead, never started (no `run`), stale beyond the start bound.
        let unstarted = left_dir(tmp.path(), "nostart1", Guard::default().start + 30, None);
        // Unstarted, within the start bound: left alone.
        let starting = left_dir(tmp.path(), "starting", stale, None);
        // As root: a process of another user recorded with our uid, and another user's directory.
        let mut other = (uid == 0).then(|| Proc::start(true));
        let other_dirs = other.as_ref().map(|o| {
            let foreign_proc = left_dir(
                tmp.path(),
                "foreign1",
                stale,
                Some(record(o, &o.start_time(), uid)),
            );
            let foreign_dir = left_dir(
                tmp.path(),
                "foreign2",
                stale,
                Some(record(&live_borg, &live_borg.start_time(), uid)),
            );
            let out = Command::new("chown")
                .arg("-R")
                .arg("65534")
                .arg(&foreign_dir)
                .output()
                .unwrap();
            assert!(out.status.success());
            (foreign_proc, foreign_dir)
        });

        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "true".into()];
        let (report, _, _) = f.run(tmp.path(), false);
        let Report::Dir { cleared, .. } = report else {
            panic!("{report:?}")
        };
        let mut cleared: Vec<(Option<u32>, String)> = cleared.into_iter().map(|c| (c.pid, c.dir)).collect();
        cleared.sort_by(|a, b| a.1.cmp(&b.1));
        let mut expected = vec![
            (Some(dead_borg.pid()), dead.display().to_string()),
            (None, wrong_start.display().to_string()),
            (None, unstarted.display().to_string()),
        ];
        if let Some((foreign_proc, _)) = &other_dirs {
            expected.push((None, foreign_proc.display().to_string()));
        }
        expected.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(cleared, expected);
        assert_eq!(
            format!(
                "{}",
                Cleared {
                    pid: Some(7),
                    dir: "/t/x".into()
                }
            ),
            "cleared a dead run on the client: borg pid 7 stopped, /t/x removed"
        );
        assert!(
            within(5, || !dead_borg.running()),
            "the dead run's borg still runs"
        );
        assert!(
            recycled.running(),
            "a process with another start time was signalled"
        );
        assert!(live_borg.running() && live.exists(), "a live run was touched");
        assert!(starting.exists(), "a starting run was cleared");
        for gone in [&dead, &wrong_start, &unstarted] {
            assert!(!gone.exists(), "{} left", gone.display());
        }
        if let (Some(other), Some((_, foreign_dir))) = (other.as_mut(), &other_dirs) {
            assert!(other.running(), "another user's process was signalled");
            assert!(foreign_dir.exists(), "another user's directory was touched");
        }
    }

    fn gone_soon(dir: &str) -> bool {
        // The watcher polls once a second.
        (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            !Path::new(dir).exists()
        })
    }

    #[test]
    fn borg_sees_its_arguments_environment_and_passphrase_and_the_directory_goes_away() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        f.relay = "/bin/sh".into();
        f.args = vec![
            "-c".into(),
            r#"printf '<%s>' "$@" "$BORG_REPO" "$BORG_BASE_DIR" "$BORG_PASSPHRASE"; eval "set -- $BORG_RSH"; printf '[%s]' "$@""#.into(),
            "sh".into(),
            "a b".into(),
            "$(x)`y`;\n".into(),
        ];
        f.passphrase = Some("p w'd");
        let (report, out, code) = f.run(tmp.path(), true);
        let Report::Dir { dir, .. } = report else {
            panic!("{report:?}")
        };
        assert!(dir.starts_with(tmp.path().to_str().unwrap()), "{dir}");
        assert_eq!(code, Some(0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "<a b><$(x)`y`;\n><ssh://borg-pull-server/srv/repo dir></tmp/b b><p w'd>\
                 [/bin/sh][--socket][{dir}/borg.sock]"
            )
        );
        assert!(gone_soon(&dir), "{dir} was not removed after borg exited");
    }

    #[test]
    fn borg_version_is_reported_and_borgstore_rsh_follows_borg_rsh() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        // A stand-in borg: prints a borg 2 version for --version, else its BORGSTORE_RSH.
        let borg = tmp.path().join("borg");
        std::fs::write(
            &borg,
            "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'borg 2.0.0b25'; echo more; exit 0; }\n\
             printf '%s|%s' \"$BORGSTORE_RSH\" \"$BORG_RSH\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&borg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        f.borg = borg.into_os_string();
        f.borgstore_rsh = true;
        let (report, out, code) = f.run(tmp.path(), true);
        let Report::Dir {
            dir, borg_version, ..
        } = report
        else {
            panic!("{report:?}")
        };
        assert_eq!(borg_version.as_deref(), Some("borg 2.0.0b25"));
        assert_eq!(code, Some(0));
        let out = String::from_utf8(out).unwrap();
        let (store, rsh) = out.split_once('|').unwrap();
        assert_eq!(store, rsh);
        assert!(rsh.contains(&format!("{dir}/borg.sock")), "{out}");
        f.borgstore_rsh = false;
        let (_, out, _) = f.run(tmp.path(), true);
        assert!(String::from_utf8(out).unwrap().starts_with('|'));
    }

    /// The client borg's version is asked once and remembered under the binary's identity: the
    /// next run reports it without starting borg; a replaced binary (another inode, size, times)
    /// is asked again; a cache entry for another identity is not believed.
    #[test]
    fn the_client_borg_version_is_remembered_until_the_binary_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        let borg = tmp.path().join("borg");
        let asked = tmp.path().join("asked");
        let install = |version: &str| {
            // A new file renamed into place, as apt and pip do.
            let new = tmp.path().join("borg.new");
            std::fs::write(
                &new,
                format!(
                    "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo x >>'{}'; echo '{version}'; exit 0; }}\nexit 0\n",
                    asked.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            std::fs::rename(&new, &borg).unwrap();
        };
        let times_asked = || std::fs::read_to_string(&asked).map_or(0, |s| s.lines().count());
        let reported = |f: &Fixture| match f.run(tmp.path(), false).0 {
            Report::Dir { borg_version, .. } => borg_version,
            other => panic!("{other:?}"),
        };
        install("borg 1.2.4");
        f.borg = borg.clone().into_os_string();
        assert_eq!(reported(&f).as_deref(), Some("borg 1.2.4"));
        assert_eq!(times_asked(), 1);
        assert_eq!(reported(&f).as_deref(), Some("borg 1.2.4"));
        assert_eq!(times_asked(), 1, "the second run used the remembered version");
        let cache: Vec<_> = std::fs::read_dir(tmp.path().join("cache/borg-pull"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(cache.len(), 1, "{cache:?}");
        install("borg 2.0.0b25");
        assert_eq!(reported(&f).as_deref(), Some("borg 2.0.0b25"));
        assert_eq!(times_asked(), 2, "a replaced binary is asked again");
        // An entry whose identity line does not match this binary is not believed.
        let entry = std::fs::read_to_string(&cache[0]).unwrap();
        let (_, path) = entry.lines().next().unwrap().split_once(' ').unwrap();
        std::fs::write(&cache[0], format!("0:0:0:0:0 {path}\nborg 9.9.9\n")).unwrap();
        assert_eq!(reported(&f).as_deref(), Some("borg 2.0.0b25"));
        assert_eq!(times_asked(), 3);
        assert_eq!(reported(&f).as_deref(), Some("borg 2.0.0b25"));
        assert_eq!(times_asked(), 3);
    }

    #[test]
    fn a_borg_that_floods_on_version_cannot_hold_up_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        let borg = tmp.path().join("borg");
        std::fs::write(&borg, "#!/bin/sh\ncat /dev/zero & exec cat /dev/zero >&2\n").unwrap();
        std::fs::set_permissions(&borg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        f.borg = borg.into_os_string();
        let started = std::time::Instant::now();
        let (report, _, _) = f.run(tmp.path(), false);
        let Report::Dir { borg_version, .. } = report else {
            panic!("{report:?}")
        };
        assert!(
            borg_version.is_some_and(|v| v.len() <= 4 * 256),
            "cut to one read"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn without_the_forward_socket_borg_does_not_start_and_the_directory_waits_for_eof() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "echo borg ran".into()];
        let (report, out, code) = f.run_with_socket(tmp.path(), true, false);
        let Report::Dir { dir, .. } = report else {
            panic!("{report:?}")
        };
        assert_eq!((out, code), (vec![], Some(125)));
        assert!(gone_soon(&dir));
    }

    #[test]
    fn eof_instead_of_go_runs_nothing_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "echo borg ran".into()];
        let (report, out, code) = f.run(tmp.path(), false);
        let Report::Dir { dir, .. } = report else {
            panic!("{report:?}")
        };
        assert_eq!((out, code), (vec![], Some(0)));
        assert!(gone_soon(&dir));
    }

    #[test]
    fn missing_programs_are_reported_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("relay");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let cases: [(&str, OsString, RemoteProgram, &str); 4] = [
            (
                "relay",
                "/nonexistent/dir/borg-pull-relay".into(),
                RemoteProgram::Relay,
                "no such file",
            ),
            (
                "relay",
                plain.into(),
                RemoteProgram::Relay,
                "not an executable file",
            ),
            (
                "relay",
                "/".into(),
                RemoteProgram::Relay,
                "not an executable file",
            ),
            (
                "borg",
                "no-such-borg-xyz".into(),
                RemoteProgram::Borg,
                "not found in PATH",
            ),
        ];
        for (which, program, role, why) in cases {
            let mut f = Fixture::new();
            if which == "relay" {
                f.relay = program.clone();
            } else {
                f.borg = program.clone();
            }
            let (report, _, code) = f.run(tmp.path(), true);
            match report {
                Report::Missing(r, w) => {
                    assert_eq!(r, role, "{program:?}");
                    assert!(w.contains(why), "{program:?}: {w}");
                }
                other => panic!("{program:?}: {other:?}"),
            }
            assert_eq!(code, Some(127));
        }
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no directory made"
        );
    }

    #[test]
    fn a_missing_remote_dir_stops_borg() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("re'store $(x)");
        std::fs::create_dir(&target).unwrap();
        let mut f = Fixture::new();
        f.args = vec!["-c".into(), "pwd".into()];
        f.remote_dir = Some(target.clone().into());
        let (_, out, _) = f.run(tmp.path(), true);
        assert_eq!(out, [target.as_os_str().as_bytes(), b"\n"].concat());
        // A relative program path is the directory's, for the check as for `exec`.
        std::fs::copy("/bin/sh", target.join("sh")).unwrap();
        f.borg = "./sh".into();
        let (report, out, code) = f.run(tmp.path(), true);
        assert!(matches!(report, Report::Dir { .. }), "{report:?}");
        assert_eq!(code, Some(0));
        assert_eq!(out, [target.as_os_str().as_bytes(), b"\n"].concat());
        f.borg = "/bin/sh".into();
        let file = tmp.path().join("a file");
        std::fs::write(&file, b"").unwrap();
        let made_before = std::fs::read_dir(tmp.path()).unwrap().count();
        for (dir, why) in [
            (tmp.path().join("missing"), "no such directory"),
            (tmp.path().join("missing/below"), "no such directory"),
            (file.clone(), "it is not a directory"),
            (file.join("below"), "no such directory"),
        ] {
            f.remote_dir = Some(dir.clone().into());
            let (report, out, code) = f.run(tmp.path(), true);
            assert_eq!(report, Report::NoDir(why.into()), "{dir:?}");
            assert_eq!(code, Some(2), "{dir:?}");
            assert!(out.is_empty(), "borg must not run: {out:?}");
        }
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            made_before,
            "no private directory made"
        );
    }

    #[test]
    fn env_checks() {
        let mut f = Fixture::new();
        f.env.push(("BORG_RSH".into(), "x".into()));
        assert!(f.script().is_err());
        let mut f = Fixture::new();
        f.env.push(("A-B".into(), "x".into()));
        assert!(f.script().is_err());
        // The script's own variables (go.sh counts its exports in bp_nenv).
        let mut f = Fixture::new();
        f.env.push(("bp_nenv".into(), "0".into()));
        assert!(f.script().is_err());
        let mut f = Fixture::new();
        f.args
            .push(std::os::unix::ffi::OsStringExt::from_vec(b"a\0b".to_vec()));
        assert!(f.script().is_err());
        assert!(go_lines(OsStr::new("/a\nb"), "/tmp/borg-pull.AbC123xy", None).is_err());
    }

    #[test]
    fn reports_are_found_after_noise_and_checked() {
        let noise = b"motd\nborg-pull-test:dir /tmp/borg-pull.AbC123xy\nrest";
        let (report, rest) = find_report(noise, MARKER).unwrap().unwrap();
        let dir = || "/tmp/borg-pull.AbC123xy".to_owned();
        assert_eq!(
            report,
            Report::Dir {
                dir: dir(),
                borg_version: None,
                relay: None,
                cleared: Vec::new(),
            }
        );
        assert_eq!(rest, b"rest");
        let noise =
            b"motd\nborg-pull-test:version borg 2.0.0b25\nborg-pull-test:dir /tmp/borg-pull.AbC123xy\n";
        let (report, _) = find_report(noise, MARKER).unwrap().unwrap();
        assert_eq!(
            report,
            Report::Dir {
                dir: dir(),
                borg_version: Some("borg 2.0.0b25".into()),
                relay: None,
                cleared: Vec::new(),
            }
        );
        // A version line alone is not yet a report.
        assert!(find_report(b"borg-pull-test:version borg 1.4.5\n", MARKER)
            .unwrap()
            .is_none());
        assert!(find_report(b"borg-pull-test:dir /etc\n", MARKER).is_err());
        assert!(find_report(b"borg-pull-test:dir /tmp/borg-pull.AbC123xy", MARKER)
            .unwrap()
            .is_none());
        assert_ne!(new_marker(), new_marker());
    }

    #[test]
    fn private_dir_paths() {
        assert!(is_private_dir_path("/tmp/borg-pull.AbC123xy"));
        assert!(is_private_dir_path("/var/tmp/x y/borg-pull.AbC123xy"));
        for bad in [
            "/",
            "",
            "tmp/borg-pull.AbC123xy",
            "/tmp/borg-pull.AbC123x",
            "/tmp/borg-pull.AbC123xy/",
            "/tmp/../borg-pull.AbC123xy",
            "/tmp/borg-pull.AbC1.3xy",
            "/tmp\n/borg-pull.AbC123xy",
        ] {
            assert!(!is_private_dir_path(bad), "{bad:?}");
        }
    }

    /// What the splitter passes on and takes out, fed `input` in pieces of `chunk` bytes.
    fn split(input: &[u8], chunk: usize) -> (Vec<u8>, ClientSshLog) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            use tokio::io::AsyncWriteExt as _;
            let mut out = Vec::new();
            let mut split = StderrSplit::new(&mut out, MARKER);
            for piece in input.chunks(chunk.max(1)) {
                split.write_all(piece).await.unwrap();
                split.flush().await.unwrap();
            }
            let log = split.finish().await;
            (out, log)
        })
    }

    #[test]
    fn the_ssh_log_is_taken_out_of_borgs_stderr_whatever_the_pieces() {
        let borg = b"Connection closed by remote host. Is borg working on the server?\n\
                     borg-pull-te not ours\nprogress\r";
        let mut input = borg.to_vec();
        input.extend_from_slice(b"borg-pull-test:ssh Host key verification failed.\n");
        input.extend_from_slice(b"borg-pull-test:ssh \xff\x1b[31m odd\n");
        input.extend_from_slice(b"borg-pull-test:ssh-end\n");
        input.extend_from_slice(b"borg-pull-tes");
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (out, log) = split(&input, chunk);
            assert_eq!(out, [&borg[..], b"borg-pull-tes"].concat(), "chunk {chunk}");
            assert_eq!(
                log.lines,
                [
                    b"Host key verification failed.".to_vec(),
                    b"\xff\x1b[31m odd".to_vec()
                ]
            );
            assert!(log.complete);
            assert!(log.borg_tail.ends_with(b"progress\rborg-pull-tes"));
        }
        // Not at a line start: not ours.
        let (out, log) = split(b"x borg-pull-test:ssh-end\n", 5);
        assert_eq!(out, b"x borg-pull-test:ssh-end\n");
        assert!(!log.complete && log.lines.is_empty());
    }

    #[test]
    fn a_client_that_floods_marker_lines_is_cut_off() {
        let mut input = Vec::new();
        for _ in 0..10_000 {
            input.extend_from_slice(b"borg-pull-test:ssh 0123456789abcdef0123456789abcdef\n");
        }
        input.extend_from_slice(&vec![b'x'; 100_000]);
        let (out, log) = split(&input, 32 * 1024);
        assert_eq!(out.len(), 100_000);
        let kept: usize = log.lines.iter().map(|l| l.len() + 1).sum();
        assert!(kept <= CLIENT_SSH_LOG_KEPT, "{kept}");
        assert!(log.borg_tail.len() <= BORG_STDERR_TAIL);
    }

    #[test]
    fn borg_rsh_hands_the_address_to_ssh_and_logs_into_the_private_directory() {
        let target = SshTarget {
            host: "fe80::1%eth0",
            port: 2222,
            user: "backup",
        };
        let dir = "/tmp/x y/borg-pull.AbC123xy";
        let lines = go_lines_ssh(OsStr::new("/usr/bin/ssh"), dir, target, None).unwrap();
        let rsh = std::str::from_utf8(&lines[3..lines.len() - 1]).unwrap();
        // Split as borg does (shlex, POSIX rules), here by the shell.
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("for a in {rsh}; do printf '%s\\n' \"$a\"; done"))
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        for expected in [
            "HostName=fe80::1%%eth0",
            "Port=2222",
            "User=backup",
            "HostKeyAlias=borg-pull-server",
            "StrictHostKeyChecking=yes",
        ] {
            let at = words
                .iter()
                .position(|w| w == expected)
                .unwrap_or_else(|| panic!("{expected}: {words:?}"));
            assert_eq!(words[at - 1], "-o");
        }
        let e = words.iter().position(|w| w == "-E").unwrap();
        assert_eq!(words[e + 1], format!("{dir}/ssh.log"));
        assert!(!words.iter().any(|w| w == "-p"), "{words:?}");
        for (user, host) in [
            ("a b", "h"),
            ("u%r", "h"),
            ("u${X}", "h"),
            ("u", "h\"x"),
            ("", "h"),
            ("u", ""),
        ] {
            let bad = SshTarget { host, port: 22, user };
            assert!(
                go_lines_ssh(OsStr::new("ssh"), dir, bad, None).is_err(),
                "{user:?} {host:?}"
            );
        }
    }

    /// The agent and TCP methods' watcher, run by the real `sh`: once "borg" has exited, the end
    /// of the ssh log comes back on the session's stderr, each line after the marker, then the
    /// end line; without a log only the end line.
    #[test]
    fn the_watcher_sends_the_ssh_log_back_on_stderr_then_removes_the_directory() {
        // The last case: the server is gone (the session's stderr closed) when the watcher writes.
        for (log, server_gone) in [
            (&b"line one\nHost key verification failed."[..], false),
            (b"", false),
            (b"Host key verification failed.", true),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let mut f = Fixture::new();
            // "borg" writes the log where BORG_RSH's -E points, as ssh would.
            let args: Vec<OsString> = vec![
                "-c".into(),
                r#"eval "set -- $BORG_RSH"; for a; do [ "$p" = -E ] && l=$a; p=$a; done; printf %s "$BP_TEST_LOG" >>"$l""#.into(),
            ];
            f.env
                .push(("BP_TEST_LOG".into(), OsStr::from_bytes(log).to_owned()));
            let script = RemoteRun {
                relay: &f.relay,
                borg: &f.borg,
                borg_args: &args,
                env: &f.env,
                repo_url: b"ssh://borg-pull-server/r",
                borgstore_rsh: false,
                remote_dir: None,
                passphrase: false,
                ssh_back: Some(SshBack {
                    ssh: OsStr::new("/bin/sh"),
                    known_hosts_line: "borg-pull-server ssh-ed25519 AAAA",
                    identity_line: "ssh-ed25519 AAAA",
                }),
                install_relay: None,
            }
            .script(MARKER)
            .unwrap();
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(OsStr::from_bytes(&script))
                .env("TMPDIR", tmp.path())
                .env("SSH_AUTH_SOCK", "/nonexistent/agent")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let mut stdout = child.stdout.take().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let dir = loop {
                let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
                assert!(n > 0, "no report: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
                if let Some((Report::Dir { dir, .. }, _)) = find_report(&seen, MARKER).unwrap() {
                    break dir;
                }
            };
            let target = SshTarget {
                host: "127.0.0.1",
                port: 22,
                user: "u",
            };
            stdin
                .write_all(&go_lines_ssh(OsStr::new("/bin/sh"), &dir, target, None).unwrap())
                .unwrap();
            let mut stderr = child.stderr.take().unwrap();
            if server_gone {
                drop(stderr);
                drop(stdin);
                child.wait().unwrap();
                assert!(gone_soon(&dir), "{dir} was not removed");
                continue;
            }
            drop(stdin);
            // stderr ends when the watcher, which holds it, is done; the watcher waits for the
            // script to be gone, so it is reaped first, as sshd does.
            let reader = std::thread::spawn(move || {
                let mut all = Vec::new();
                std::io::Read::read_to_end(&mut stderr, &mut all).unwrap();
                all
            });
            child.wait().unwrap();
            let err = reader.join().unwrap();
            let (passed, got) = split(&err, 4096);
            assert!(passed.is_empty(), "{}", String::from_utf8_lossy(&passed));
            assert!(got.complete, "{}", String::from_utf8_lossy(&err));
            let expected: Vec<Vec<u8>> = if log.is_empty() {
                vec![]
            } else {
                log.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
            };
            assert_eq!(got.lines, expected, "{}", String::from_utf8_lossy(&err));
            assert!(!Path::new(&dir).exists(), "{dir} was not removed");
        }
    }
}
