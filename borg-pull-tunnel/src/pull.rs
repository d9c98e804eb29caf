//! One whole pull: connect, private socket directory, forward, run borg, clean up.
//!
//! 1. Connect, verify the host key against known_hosts (refused before anything runs on the
//!    client), authenticate with the identity ([`crate::session`]).
//! 2. On the client: check that the relay and borg exist, then `mktemp -d` with umask 077 under
//!    `${TMPDIR:-/tmp}`; the socket is `DIR/borg.sock`, so runs never collide and a run killed
//!    with SIGKILL leaves at most a dead socket in its own directory.
//! 3. `streamlocal-forward@openssh.com` for that socket; a refusal is diagnosed on the client
//!    ([`crate::forward`]). Each forwarded connection is bridged to its own `borg serve` here.
//! 4. Run `borg BORG_ARGS` on the client ([`borg_command`]); the passphrase (if any) is its first
//!    stdin line, never an argv or a file. Its stdout/stderr stream to ours; we wait for the
//!    channel to close, not just for the exit status.
//! 5. Clean up on every path (success, failure, Ctrl-C): cancel the forward, let the bridges drain
//!    (or stop them, killing and reaping `borg serve`), `rm -rf` the directory, disconnect.
//!
//! What the client can do: talk borg's protocol to a `borg serve --append-only
//! --restrict-to-repo REPO` (flags fixed here), at most
//! [`MAX_FORWARDED_CONNECTIONS`](crate::limits::MAX_FORWARDED_CONNECTIONS) at once. It cannot open
//! other channels to us (refused), and nothing it prints is interpreted.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use borg_pull_core::serve::ServeConfig;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::exec::{self, capture_ok, is_env_name, shell_quote, RemoteExit};
use crate::forward::{self, ForwardStats, Forwarder};
use crate::limits::{CANCEL_GRACE, CLEANUP_TIMEOUT, FORWARD_DRAIN_TIMEOUT, REMOTE_HELPER_TIMEOUT};
use crate::session::{self, Session, SessionOptions};
use crate::{Error, Result};

/// The host part of the `BORG_REPO` URL given to borg on the client. borg needs an `ssh://` URL
/// to use `BORG_RSH`; the relay ignores the host, so this only shows up in borg's messages.
pub const REPO_URL_HOST: &str = "borg-pull-server";

/// The name of the socket inside the private directory on the client.
pub const SOCKET_NAME: &str = "borg.sock";

/// Environment variables `pull` sets itself on the client; `--env` may not override them.
pub const RESERVED_ENV: &[&str] = &["BORG_REPO", "BORG_RSH", "BORG_PASSPHRASE"];

/// The repository passphrase, handed to borg on the client through its channel's stdin.
///
/// Never put in an argv or a file on either host. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// Wraps a passphrase; it must be a single line (it is read with `read -r` on the client).
    pub fn new(passphrase: impl Into<String>) -> Result<Self> {
        let passphrase = passphrase.into();
        if passphrase.contains(['\n', '\0']) {
            return Err(Error::Passphrase(
                "it contains a newline or NUL byte, which cannot be passed on".into(),
            ));
        }
        Ok(Self(passphrase))
    }

    /// The passphrase from, in this order: `file` (trailing newline stripped), the server's
    /// `BORG_PASSPHRASE`, or the output of the server's `BORG_PASSCOMMAND` (run with `sh -c`).
    /// `None` if none is set (an unencrypted repository, or a client with its own
    /// `BORG_PASSCOMMAND`).
    pub async fn from_sources(file: Option<&Path>) -> Result<Option<Self>> {
        if let Some(path) = file {
            crate::identity::ensure_private(path, crate::error::SecretKind::RepoPassphrase)?;
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| Error::Passphrase(format!("cannot read passphrase file {path:?}: {e}")))?;
            return Self::new(strip_newline(text)).map(Some);
        }
        if let Some(p) = std::env::var_os("BORG_PASSPHRASE") {
            let p = p
                .into_string()
                .map_err(|_| Error::Passphrase("BORG_PASSPHRASE is not valid UTF-8".into()))?;
            return Self::new(p).map(Some);
        }
        if let Some(cmd) = std::env::var_os("BORG_PASSCOMMAND").filter(|c| !c.is_empty()) {
            let out = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .await
                .map_err(|e| Error::Passphrase(format!("cannot run BORG_PASSCOMMAND: {e}")))?;
            if !out.status.success() {
                return Err(Error::Passphrase(format!(
                    "BORG_PASSCOMMAND failed: {}",
                    out.status
                )));
            }
            let text = String::from_utf8(out.stdout)
                .map_err(|_| Error::Passphrase("BORG_PASSCOMMAND printed invalid UTF-8".into()))?;
            return Self::new(strip_newline(text)).map(Some);
        }
        Ok(None)
    }
}

fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Everything one pull needs.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// How to reach and log in to the client.
    pub session: SessionOptions,
    /// How `borg serve` runs on this server (repository, borg program, append-only).
    pub serve: ServeConfig,
    /// The `borg-pull-relay` program on the client (`borg-pull-relay`: looked up in its `PATH`).
    pub relay: OsString,
    /// The borg program on the client (`borg`).
    pub remote_borg: OsString,
    /// Arguments for borg on the client, e.g. `create --stats ::{hostname}-{now} /etc`.
    pub borg_args: Vec<OsString>,
    /// Extra environment variables for borg on the client.
    pub env: Vec<(String, OsString)>,
    /// Directory on the client to run borg in (`extract` restores into it); the login directory
    /// when `None`.
    pub remote_dir: Option<OsString>,
    /// The repository passphrase to hand to borg on the client.
    pub passphrase: Option<Passphrase>,
    /// Cancelling this (e.g. on Ctrl-C) stops borg on the client, cleans up and returns
    /// [`Error::Interrupted`].
    pub cancel: CancellationToken,
}

impl PullOptions {
    /// Options for pulling into `repo` from `destination` (`[user@]host`) with defaults: port 22,
    /// `~/.ssh/known_hosts`, default identities, `borg-pull-relay` and `borg` on the client's PATH.
    pub fn new(destination: &str, repo: impl Into<PathBuf>, borg_args: Vec<OsString>) -> Result<Self> {
        let (user, host) = match destination.rsplit_once('@') {
            Some((user, host)) => (user.to_owned(), host.to_owned()),
            None => (
                std::env::var("USER")
                    .or_else(|_| std::env::var("LOGNAME"))
                    .map_err(|_| Error::InvalidOption("no login user: write USER@HOST".into()))?,
                destination.to_owned(),
            ),
        };
        if host.is_empty() || user.is_empty() {
            return Err(Error::InvalidOption(format!(
                "{destination:?} is not [USER@]HOST"
            )));
        }
        // Checked at connect time, so a caller that sets its own file does not need HOME.
        let known_hosts = crate::known_hosts::default_path().unwrap_or_default();
        Ok(Self {
            session: SessionOptions {
                host,
                port: 22,
                user,
                identity: None,
                identity_passphrase: None,
                known_hosts,
                accept_new_host_key: false,
                keepalive_interval: crate::limits::KEEPALIVE_INTERVAL,
                channel_window: crate::limits::CHANNEL_WINDOW,
            },
            serve: ServeConfig::new(repo)?,
            relay: "borg-pull-relay".into(),
            remote_borg: "borg".into(),
            borg_args,
            env: Vec::new(),
            remote_dir: None,
            passphrase: None,
            cancel: CancellationToken::new(),
        })
    }
}

/// What a finished pull reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    /// How borg on the client ended.
    pub exit: RemoteExit,
    /// Totals of the forwarded connections.
    pub forwarded: ForwardStats,
}

/// Runs a pull with borg's output going to our stdout and stderr; returns borg's exit code
/// (0 success, 1 warning, 2 error, 128+N killed by signal N).
pub async fn pull(options: PullOptions) -> Result<i32> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let outcome = pull_with_output(options, &mut stdout, &mut stderr).await?;
    Ok(outcome.exit.code())
}

/// Runs a pull with borg's stdout and stderr written to the given writers.
pub async fn pull_with_output<O, E>(
    options: PullOptions,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<PullOutcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let span = tracing::info_span!("pull", client = %options.session.host, port = options.session.port);
    async move {
        // Check everything we can before touching the network.
        let command_for = |socket: &str| borg_command(&options, socket);
        command_for("/x")?;
        let cancel = options.cancel.clone();
        // Not a child of `cancel`: on Ctrl-C borg on the client first gets SIGINT and a grace
        // period to end its session with borg serve cleanly; clean-up stops the bridges after.
        let forwarder = Forwarder::new(options.serve.clone(), CancellationToken::new());
        let session = tokio::select! {
            s = session::connect(&options.session, Some(forwarder.clone())) => s?,
            () = cancel.cancelled() => return Err(Error::Interrupted),
        };
        let result = with_session(&session, &forwarder, &options, stdout, stderr).await;
        session.disconnect().await;
        result
    }
    .instrument(span)
    .await
}

async fn with_session<O, E>(
    session: &Session,
    forwarder: &Forwarder,
    options: &PullOptions,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<PullOutcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let cancel = &options.cancel;
    let dir = tokio::select! {
        d = make_private_dir(session, options) => d?,
        () = cancel.cancelled() => return Err(Error::Interrupted),
    };
    let socket = format!("{dir}/{SOCKET_NAME}");
    debug!(socket, "private socket directory created on the client");
    let result = forward_and_run(session, forwarder, options, &socket, stdout, stderr).await;
    // Clean up on every path: forward, borg serve children, directory.
    let cleanup = async {
        forward::unlisten(session, &socket).await;
        let stats = if cancel.is_cancelled() || result.is_err() {
            forwarder.stop().await
        } else {
            forwarder.drain(FORWARD_DRAIN_TIMEOUT).await
        };
        remove_dir(session, &dir).await;
        stats
    };
    let stats = match tokio::time::timeout(CLEANUP_TIMEOUT + FORWARD_DRAIN_TIMEOUT, cleanup).await {
        Ok(stats) => stats,
        Err(_) => {
            warn!(
                dir,
                "clean-up on the client timed out; its private socket directory may remain"
            );
            forwarder.stop().await
        }
    };
    let _ = stderr.flush().await;
    let exit = result?;
    info!(
        connections = stats.connections,
        to_serve = stats.to_serve,
        from_serve = stats.from_serve,
        ?exit,
        "pull finished"
    );
    Ok(PullOutcome {
        exit,
        forwarded: stats,
    })
}

async fn forward_and_run<O, E>(
    session: &Session,
    forwarder: &Forwarder,
    options: &PullOptions,
    socket: &str,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<RemoteExit>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let cancel = &options.cancel;
    tokio::select! {
        r = forward::listen(session, forwarder, socket) => r?,
        () = cancel.cancelled() => return Err(Error::Interrupted),
    }
    let command = borg_command(options, socket)?;
    let mut channel = session
        .handle
        .channel_open_session()
        .await
        .map_err(|source| lost_or(session, "opening borg's session channel", source))?;
    let stdin = options
        .passphrase
        .as_ref()
        .map(|p| format!("{}\n", p.0).into_bytes());
    exec::start(&channel, &command, stdin.as_deref()).await?;
    debug!("borg started on the client");
    let relayed = exec::relay_output(&mut channel, stdout, stderr, cancel, CANCEL_GRACE).await?;
    if relayed.cancelled {
        return Err(Error::Interrupted);
    }
    match relayed.exit {
        Some(exit) => Ok(exit),
        None if session.is_closed() => Err(Error::ConnectionLost {
            host: session.host.clone(),
            port: session.port,
            context: "borg was running",
        }),
        None => Err(Error::NoExitStatus {
            host: session.host.clone(),
        }),
    }
}

fn lost_or(session: &Session, context: &'static str, source: russh::Error) -> Error {
    if session.is_closed() {
        Error::ConnectionLost {
            host: session.host.clone(),
            port: session.port,
            context,
        }
    } else {
        Error::Ssh { context, source }
    }
}

/// Checks that the relay and borg exist on the client, then `mktemp -d` there with umask 077: a
/// fresh directory only the login user can enter.
async fn make_private_dir(session: &Session, options: &PullOptions) -> Result<String> {
    let quote = |p: &OsStr| shell_quote(p.as_bytes()).map(|q| String::from_utf8_lossy(&q).into_owned());
    let (relay, borg) = (quote(&options.relay)?, quote(&options.remote_borg)?);
    let command = format!(
        "command -v {relay} >/dev/null 2>&1 || {{ echo missing-relay; exit 127; }}; \
         command -v {borg} >/dev/null 2>&1 || {{ echo missing-borg; exit 127; }}; \
         umask 077 && mktemp -d \"${{TMPDIR:-/tmp}}/{DIR_PREFIX}XXXXXXXX\""
    );
    let out = exec::capture(&session.handle, &command, REMOTE_HELPER_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.strip_suffix('\n').unwrap_or(&text);
    let missing = |program: &OsStr, option| Error::RemoteProgramMissing {
        program: program.to_string_lossy().into_owned(),
        host: session.host.clone(),
        option,
    };
    match (out.status, dir) {
        (Some(127), "missing-relay") => return Err(missing(&options.relay, "--relay")),
        (Some(127), "missing-borg") => return Err(missing(&options.remote_borg, "--remote-borg")),
        (Some(0), dir) if is_private_dir_path(dir) => return Ok(dir.to_owned()),
        _ => {}
    }
    Err(Error::RemoteHelper {
        command: format!("umask 077 && mktemp -d \"${{TMPDIR:-/tmp}}/{DIR_PREFIX}XXXXXXXX\""),
        status: out.status,
        output: format!(
            "{} (expected the new directory's absolute path)",
            out.output_text()
        ),
    })
}

/// The private directories' name prefix on the client.
const DIR_PREFIX: &str = "borg-pull.";

/// Whether `dir` is what our mktemp makes: absolute, one line, `.../borg-pull.XXXXXXXX`. Checked
/// before it is used, and before `rm -rf` ever runs on it.
fn is_private_dir_path(dir: &str) -> bool {
    let Some((parent, name)) = dir.rsplit_once('/') else {
        return false;
    };
    dir.starts_with('/')
        && !dir.contains(['\n', '\0'])
        && !parent.split('/').any(|c| c == "..")
        && name
            .strip_prefix(DIR_PREFIX)
            .is_some_and(|rand| rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_alphanumeric()))
}

async fn remove_dir(session: &Session, dir: &str) {
    let Ok(quoted) = shell_quote(dir.as_bytes()) else {
        return;
    };
    let command = format!("rm -rf -- {}", String::from_utf8_lossy(&quoted));
    match capture_ok(&session.handle, &command, REMOTE_HELPER_TIMEOUT).await {
        Ok(_) => debug!(dir, "removed the private socket directory"),
        Err(e) => warn!("could not remove {dir} on the client: {e}"),
    }
}

/// The command line run on the client (through the login user's POSIX shell).
///
/// With a passphrase it first reads one line from stdin into `BORG_PASSPHRASE`; then it exports
/// `BORG_REPO=ssh://borg-pull-server/REPO`, `BORG_RSH='RELAY --socket SOCKET'` (quoted once more
/// for borg's own shlex splitting) and the extra variables, and `exec`s borg with every argument
/// single-quoted.
pub fn borg_command(options: &PullOptions, socket: &str) -> Result<Vec<u8>> {
    let mut cmd = Vec::new();
    if options.passphrase.is_some() {
        cmd.extend_from_slice(b"IFS= read -r BORG_PASSPHRASE || exit 2; export BORG_PASSPHRASE; ");
    }
    let mut assign = |name: &str, value: &[u8]| -> Result<()> {
        cmd.extend_from_slice(b"export ");
        cmd.extend_from_slice(name.as_bytes());
        cmd.push(b'=');
        cmd.extend(shell_quote(value)?);
        cmd.extend_from_slice(b"; ");
        Ok(())
    };
    for (name, value) in &options.env {
        if !is_env_name(name) {
            return Err(Error::InvalidOption(format!(
                "{name:?} is not a valid environment variable name"
            )));
        }
        if RESERVED_ENV.contains(&name.as_str()) {
            return Err(Error::InvalidOption(format!("{name} is set by borg-pull itself")));
        }
        assign(name, value.as_bytes())?;
    }
    let mut repo_url = format!("ssh://{REPO_URL_HOST}").into_bytes();
    repo_url.extend_from_slice(options.serve.repo.as_os_str().as_bytes());
    assign("BORG_REPO", &repo_url)?;
    let mut rsh = shell_quote(options.relay.as_bytes())?;
    rsh.extend_from_slice(b" --socket ");
    rsh.extend(shell_quote(socket.as_bytes())?);
    assign("BORG_RSH", &rsh)?;
    if let Some(dir) = &options.remote_dir {
        // A missing directory must stop the restore, not extract into the login directory.
        cmd.extend_from_slice(b"cd -- ");
        cmd.extend(shell_quote(dir.as_bytes())?);
        cmd.extend_from_slice(b" || exit 2; ");
    }
    cmd.extend_from_slice(b"exec ");
    let program: &OsStr = &options.remote_borg;
    cmd.extend(exec::shell_join(
        std::iter::once(program).chain(options.borg_args.iter().map(|a| a.as_os_str())),
    )?);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PullOptions {
        let mut o = PullOptions::new(
            "u@h",
            "/srv/repo dir",
            vec!["create".into(), "::it's {now}".into(), "/etc".into()],
        )
        .unwrap();
        o.relay = "/opt/relay's bin/borg-pull-relay".into();
        o.env.push(("BORG_BASE_DIR".into(), "/tmp/b b".into()));
        o
    }

    #[test]
    fn command_shape() {
        let o = options();
        let cmd = String::from_utf8(borg_command(&o, "/tmp/borg-pull.X/borg.sock").unwrap()).unwrap();
        assert_eq!(
            cmd,
            "export BORG_BASE_DIR='/tmp/b b'; export BORG_REPO='ssh://borg-pull-server/srv/repo dir'; \
             export BORG_RSH=''\\''/opt/relay'\\''\\'\\'''\\''s bin/borg-pull-relay'\\'' --socket \
             '\\''/tmp/borg-pull.X/borg.sock'\\'''; exec 'borg' 'create' '::it'\\''s {now}' '/etc'"
        );
    }

    #[test]
    fn command_runs_in_sh() {
        // Replace borg by a printer and check what it sees, including BORG_RSH after shlex-style
        // splitting by sh (same rules as Python's shlex.split in POSIX mode).
        let mut o = options();
        o.remote_borg = "/bin/sh".into();
        o.borg_args = vec![
            "-c".into(),
            r#"printf '<%s>' "$@" "$BORG_REPO" "$BORG_BASE_DIR" "$BORG_PASSPHRASE"; eval "set -- $BORG_RSH"; printf '[%s]' "$@""#.into(),
            "sh".into(),
            "a b".into(),
            "$(x)`y`;\n".into(),
        ];
        o.passphrase = Some(Passphrase::new("p w'd").unwrap());
        let cmd = borg_command(&o, "/tmp/d/borg.sock").unwrap();
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&cmd))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"p w'd\nrest\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "<a b><$(x)`y`;\n><ssh://borg-pull-server/srv/repo dir></tmp/b b><p w'd>\
             [/opt/relay's bin/borg-pull-relay][--socket][/tmp/d/borg.sock]"
        );
    }

    #[test]
    fn remote_dir_is_entered_before_borg_and_a_missing_one_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("re'store $(x)");
        std::fs::create_dir(&target).unwrap();
        let mut o = options();
        o.remote_borg = "/bin/sh".into();
        o.borg_args = vec!["-c".into(), "pwd".into()];
        o.remote_dir = Some(target.clone().into());
        let cmd = borg_command(&o, "/s").unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&cmd))
            .output()
            .unwrap();
        assert_eq!(out.stdout, [target.as_os_str().as_bytes(), b"\n"].concat());
        o.remote_dir = Some(dir.path().join("missing").into());
        let cmd = borg_command(&o, "/s").unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&cmd))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty(), "borg must not run: {:?}", out.stdout);
    }

    #[test]
    fn env_checks() {
        let mut o = options();
        o.env.push(("BORG_RSH".into(), "x".into()));
        assert!(borg_command(&o, "/s").is_err());
        let mut o = options();
        o.env.push(("A-B".into(), "x".into()));
        assert!(borg_command(&o, "/s").is_err());
        let mut o = options();
        o.borg_args.push(std::ffi::OsString::from_vec(b"a\0b".to_vec()));
        assert!(borg_command(&o, "/s").is_err());
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

    #[test]
    fn passphrase_rules() {
        assert!(Passphrase::new("a\nb").is_err());
        assert_eq!(
            format!("{:?}", Passphrase::new("secret").unwrap()),
            "Passphrase(<redacted>)"
        );
        assert_eq!(strip_newline("x\r\n".into()), "x");
        assert!(PullOptions::new("u@", "/r", vec![]).is_err());
        assert!(PullOptions::new("h", "relative", vec![]).is_err());
    }

    use std::os::unix::ffi::OsStringExt;
}
