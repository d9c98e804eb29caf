//! One whole pull: a validated plan carried out on one SSH session.
//!
//! 1. Connect, verify the host key against known_hosts (refused before anything runs on the
//!    client), authenticate ([`crate::ssh::session`]). With [`ServerVersion::Learn`] the server borg's
//!    `--version` runs meanwhile; it is waited for before anything runs on the client.
//! 2. One exec runs the script of [`crate::jobs::pull::script`]: it checks the relay and borg, makes a private
//!    directory with `mktemp -d` (umask 077) and reports it.
//! 3. `streamlocal-forward@openssh.com` for `DIR/borg.sock`; a refusal is diagnosed on the client
//!    (`UnixForward`, channels/unix.rs). Each forwarded connection is bridged to its own `borg serve`.
//! 4. We send `go`, borg's `BORG_RSH` and the passphrase (if any) on stdin and the script `exec`s
//!    borg; its output streams to ours; we wait for the channel to close. Right after `go` the
//!    first `borg serve` starts (socket method), so its Python start-up overlaps the client
//!    borg's; the first connection takes it (one per run: a client cannot make us start more).
//! 5. On every path: the forwards drain (or are stopped, killing and reaping `borg serve`), and we
//!    disconnect. The script's watcher removes the directory on the client once borg has exited.
//!
//! Every wait on the client has a deadline: each request [`REQUEST_TIMEOUT`], the start of the
//! run [`REMOTE_HELPER_TIMEOUT`], borg itself [`PullOptions::max_runtime`].
//!
//! What the client can do: talk borg's protocol to a `borg serve` whose flags the server fixed, at
//! most [`MAX_FORWARDED_CONNECTIONS`](crate::limits::MAX_FORWARDED_CONNECTIONS) at once. It cannot
//! open other channels to us (refused), and nothing it prints is interpreted.

pub mod script;
pub mod via;
mod via_sftp;

use std::ffi::OsString;
use std::future::Future as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::serve::ServeConfig;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use zeroize::Zeroizing;

use crate::channels::agent::AgentForward;
use crate::channels::tcp::TcpForward;
use crate::channels::unix::UnixForward;
use crate::channels::{Forward, ForwardStats};
use crate::error::RemoteProgram;
use crate::jobs::pull::script::{ClientSshLog, RemoteRun, Report, SshBack, SshTarget, StderrSplit};
use crate::limits::{
    CANCEL_GRACE, CLEANUP_TIMEOUT, DEFAULT_MAX_RUNTIME, FORWARD_DRAIN_TIMEOUT, REMOTE_HELPER_TIMEOUT,
    REQUEST_TIMEOUT,
};
use crate::local::passphrase::{Passphrase, SecretSources};
use crate::ssh::exec::{self, RemoteExit, Stop};
use crate::ssh::incoming::ByKind;
use crate::ssh::session::{self, Session, SessionOptions, SshEnv};
use crate::{Error, Result};

pub use crate::jobs::pull::script::RESERVED_ENV;
use crate::jobs::pull::script::SOCKET_NAME;
use crate::jobs::pull::via::RunAgent;
pub use crate::jobs::pull::via::{AgentKey, ServerLogin, Via};

/// The host part of the `BORG_REPO` URL given to borg on the client, in every method. borg needs
/// an `ssh://` URL to use `BORG_RSH`; the relay ignores the host, and the agent and TCP methods
/// give the client's ssh the real address as options, so this only names the repository to borg
/// (which remembers it) and shows up in its messages.
pub(crate) const REPO_URL_HOST: &str = "borg-pull-server";

/// The environment a pull may use, read in one place ([`PullEnv::from_process`]) so that nothing
/// deeper in the library reads variables behind the caller's back: OpenSSH's ([`SshEnv`]) and
/// borg's passphrase variables.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct PullEnv {
    /// HOME, USER, the identity passphrase and SSH_AUTH_SOCK ([`SessionOptions::with_env`]).
    pub ssh: SshEnv,
    /// `BORG_PASSPHRASE`.
    pub borg_passphrase: Option<OsString>,
    /// `BORG_PASSCOMMAND`.
    pub borg_passcommand: Option<OsString>,
}

impl std::fmt::Debug for PullEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullEnv")
            .field("ssh", &self.ssh)
            .field(
                "borg_passphrase",
                &self.borg_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("borg_passcommand", &self.borg_passcommand)
            .finish()
    }
}

impl PullEnv {
    /// Reads [`SshEnv::from_process`], BORG_PASSPHRASE and BORG_PASSCOMMAND from this process's
    /// environment.
    pub fn from_process() -> Self {
        Self {
            ssh: SshEnv::from_process(),
            borg_passphrase: std::env::var_os("BORG_PASSPHRASE"),
            borg_passcommand: std::env::var_os("BORG_PASSCOMMAND").filter(|v| !v.is_empty()),
        }
    }

    /// Where the repository passphrase may come from, with an optional file first.
    pub fn secret_sources(&self, file: Option<PathBuf>) -> SecretSources {
        SecretSources {
            file,
            passphrase: self.borg_passphrase.clone(),
            passcommand: self.borg_passcommand.clone(),
        }
    }
}

/// Everything one pull needs: made by [`PullOptions::new`], [`PullOptions::with_env`] or
/// [`PullOptions::from_env`], then changed field by field.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// The longest borg may run ([`DEFAULT_MAX_RUNTIME`]); then it is stopped like on
    /// cancellation and the pull ends with [`Error::MaxRuntime`].
    pub max_runtime: Duration,
    /// Cancelling this (e.g. on Ctrl-C) stops borg on the client, cleans up and returns
    /// [`Error::Interrupted`].
    pub cancel: CancellationToken,
    /// How borg on the client reaches `borg serve` ([`Via::Socket`] unless set).
    pub via: Via,
    /// Install this relay binary (this server's, statically linked) into the login user's cache
    /// on the client when it is not there yet, and use it instead of [`PullOptions::relay`].
    pub install_relay: Option<PathBuf>,
    /// How the server borg's version becomes known ([`ServerVersion::AsConfigured`] unless set).
    pub server_version: ServerVersion,
}

/// How a pull knows the server borg's version, which decides `borg serve`'s flags, the
/// repository URL given to the client and what the client's borg must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerVersion {
    /// [`ServeConfig::version`] as it is (`None`: borg 1.x's flags).
    #[default]
    AsConfigured,
    /// Learn it with `borg --version` (about 0.2 s of Python start-up) while the session
    /// connects and logs in, and wait for it only before anything runs on the client. Then
    /// `serve.args()` is checked (a `--storage-quota` this borg has no flag for). Either failure
    /// fails the pull with [`Error::Serve`], also when the connection failed too.
    Learn,
}

/// A relay binary to install on clients (`--install-relay`): read once, named by version and
/// checksum so a client's cached copy is current exactly when its name matches.
#[derive(Debug, Clone)]
pub struct RelayBinary {
    bytes: Vec<u8>,
    name: String,
    sha256: String,
}

impl RelayBinary {
    /// Reads the binary at `path`.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        use sha2::Digest as _;
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: format!("cannot read the relay to install, {}", path.display()),
            source,
        })?;
        let sha256: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("relay-{}-{}", env!("CARGO_PKG_VERSION"), &sha256[..16]);
        Ok(Self { bytes, name, sha256 })
    }

    /// The `borg-pull-relay` next to this program: what `--install-relay` copies by default (the
    /// package's is statically linked).
    pub fn beside_this_program() -> Result<PathBuf> {
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            context: "cannot find this program's path to locate borg-pull-relay beside it".into(),
            source,
        })?;
        Ok(exe.with_file_name("borg-pull-relay"))
    }

    /// The name of the cached copy on clients (`relay-VERSION-SHA256PREFIX`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn install(&self) -> script::RelayInstall<'_> {
        script::RelayInstall {
            name: &self.name,
            size: self.bytes.len() as u64,
            sha256: &self.sha256,
        }
    }
}

impl PullOptions {
    /// Options for pulling into `repo` from `destination` (`USER@HOST`) with defaults: port 22,
    /// `borg-pull-relay` and `borg` on the client's PATH; no known_hosts file and no default
    /// identities (see [`PullOptions::from_env`]). Reads no environment variable.
    pub fn new(destination: &str, repo: impl Into<PathBuf>, borg_args: Vec<OsString>) -> Result<Self> {
        Self::with_env(destination, repo, borg_args, &PullEnv::default())
    }

    /// Like [`PullOptions::new`], with the defaults OpenSSH takes from the environment `env`:
    /// the login user when `destination` names none, `~/.ssh/known_hosts`, `~/.ssh/id_*`, the
    /// identity passphrase and the ssh-agent.
    pub fn with_env(
        destination: &str,
        repo: impl Into<PathBuf>,
        borg_args: Vec<OsString>,
        env: &PullEnv,
    ) -> Result<Self> {
        Ok(Self {
            session: SessionOptions::with_env(destination, &env.ssh)?,
            serve: ServeConfig::new(repo)?,
            relay: "borg-pull-relay".into(),
            remote_borg: "borg".into(),
            borg_args,
            env: Vec::new(),
            remote_dir: None,
            passphrase: None,
            max_runtime: DEFAULT_MAX_RUNTIME,
            cancel: CancellationToken::new(),
            via: Via::Socket,
            install_relay: None,
            server_version: ServerVersion::AsConfigured,
        })
    }

    /// [`PullOptions::with_env`] with this process's environment ([`PullEnv::from_process`]).
    pub fn from_env(destination: &str, repo: impl Into<PathBuf>, borg_args: Vec<OsString>) -> Result<Self> {
        Self::with_env(destination, repo, borg_args, &PullEnv::from_process())
    }

    /// The server borg's major version (1 until [`ServeConfig::learn_version`] ran).
    fn server_major(&self) -> u32 {
        self.serve.version.as_ref().map_or(1, |v| v.major)
    }

    /// The server borg's generation (borg 1.x until [`ServeConfig::learn_version`] ran).
    fn server_generation(&self) -> borg_pull_core::version::Generation {
        self.serve.generation()
    }

    /// `BORG_REPO` for borg on the client: `ssh://borg-pull-server/REPO` whatever the method, so
    /// borg's record of where it last saw the repository matches on every run and switching
    /// methods (or server addresses) needs no answer to its "previously located at" question. The
    /// relay ignores the host; the client's ssh gets the real address as options in `BORG_RSH`.
    fn repo_url(&self) -> Vec<u8> {
        // `rest://` for borg 2.0.0b22-b24, whose `ssh://` is for borg 1.x repositories only.
        let scheme = self.server_generation().url_scheme();
        let mut url = format!("{scheme}://{REPO_URL_HOST}").into_bytes();
        // borgstore's URLs (2.0.0b10 and later): `ssh://host/path` is relative to the login
        // directory, `ssh://host//path` absolute; borg 1.x and 2.0.0b1-b9 read `/path` as absolute.
        if self.server_generation().url_path_relative() {
            url.push(b'/');
        }
        url.extend_from_slice(self.serve.repo.as_os_str().as_bytes());
        url
    }

    /// The script for the client ([`crate::jobs::pull::script`]), checked before anything touches the network.
    /// `identity_line` is the agent key's public half (agent and TCP methods); `relay` the relay
    /// to install (`install_relay`).
    pub(crate) fn remote_script(
        &self,
        marker: &str,
        identity_line: Option<&str>,
        relay: Option<&RelayBinary>,
    ) -> Result<Vec<u8>> {
        if self.server_major() >= 2 && self.via.server_login().is_some() {
            return Err(Error::InvalidOption(
                "--via agent and --via tcp run the forced command of the server's authorized_keys, \
                 which borg-pull-server authorize writes for borg 1.x; with borg 2 on the server use \
                 --via socket"
                    .into(),
            ));
        }
        let url = self.repo_url();
        let known_hosts_line = match self.via.server_login() {
            Some(login) => Some(login.known_hosts_line()?),
            None => None,
        };
        let ssh_back = match (self.via.server_login(), &known_hosts_line, identity_line) {
            (Some(login), Some(known_hosts_line), Some(identity_line)) => Some(SshBack {
                ssh: &login.ssh,
                known_hosts_line,
                identity_line,
            }),
            (None, _, _) => None,
            _ => return Err(Error::InvalidOption("the agent key is not known yet".into())),
        };
        RemoteRun {
            relay: &self.relay,
            borg: &self.remote_borg,
            borg_args: &self.borg_args,
            env: &self.env,
            repo_url: &url,
            borgstore_rsh: self.server_generation().uses_borgstore_rsh(),
            remote_dir: self.remote_dir.as_deref(),
            passphrase: self.passphrase.is_some(),
            ssh_back,
            install_relay: relay.map(RelayBinary::install),
        }
        .script(marker)
    }
}

/// What a finished pull reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullOutcome {
    /// How borg on the client ended.
    pub exit: RemoteExit,
    /// Totals of the forwarded connections (the crate-private `ForwardStats` is core's
    /// `SupervisorStats`).
    pub forwarded: borg_pull_core::supervise::SupervisorStats,
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
    mut options: PullOptions,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<PullOutcome>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    if let Via::Sftp(via) = &options.via {
        return via_sftp::pull(&options, via, stdout, stderr).await;
    }
    let span = tracing::info_span!("pull", client = %options.session.host, port = options.session.port);
    async move {
        let marker = script::new_marker();
        // Everything that can be checked is, before anything touches the network or a file.
        let mut agent = match options.via.server_login() {
            Some(login) => Some(RunAgent::prepare(login)?),
            None => None,
        };
        let relay = match (&options.install_relay, &options.via) {
            (Some(path), Via::Socket) => {
                // A few MB read and hashed: not on the runtime's threads.
                let path = path.clone();
                Some(
                    tokio::task::spawn_blocking(move || RelayBinary::read(&path))
                        .await
                        .map_err(|source| Error::BackgroundTask { task: "reading the relay to install", source })??,
                )
            }
            _ => None,
        };
        let mut script =
            options.remote_script(&marker, agent.as_ref().map(RunAgent::public_line), relay.as_ref())?;
        // Owned by this pull: a probe still running when the pull ends early finishes on its own
        // (borg --version exits) and its result is dropped.
        let learning = match options.server_version {
            ServerVersion::Learn => {
                let mut serve = options.serve.clone();
                Some(tokio::task::spawn_blocking(
                    move || -> borg_pull_core::Result<ServeConfig> {
                        serve.learn_version()?;
                        serve.args()?;
                        Ok(serve)
                    },
                ))
            }
            ServerVersion::AsConfigured => None,
        };
        let cancel = options.cancel.clone();
        // Not stopped by `cancel` directly: on Ctrl-C borg on the client first gets SIGINT and a
        // grace period to end its session with borg serve cleanly; clean-up stops the forwards after.
        let forwards = Forwards::new(&options, agent.as_ref());
        let connected = tokio::select! {
            s = session::connect(&options.session, forwards.incoming()) => s,
            () = cancel.cancelled() => return Err(Error::Interrupted),
        };
        if let Some(learning) = learning {
            let learned = tokio::select! {
                l = learning => l.map_err(|source| Error::BackgroundTask { task: "asking the server's borg for its version", source }),
                () = cancel.cancelled() => Err(Error::Interrupted),
            };
            // The version's failure first, as when it was asked before connecting.
            let learned = learned.and_then(|l| l.map_err(Error::Serve));
            match (learned, &connected) {
                (Ok(serve), _) => options.serve = serve,
                (Err(e), Ok(session)) => {
                    session.disconnect().await;
                    return Err(e);
                }
                (Err(e), Err(_)) => return Err(e),
            }
            debug!(version = ?options.serve.version, "the server's borg version, learned while connecting");
            match options.remote_script(&marker, agent.as_ref().map(RunAgent::public_line), relay.as_ref()) {
                Ok(s) => script = s,
                Err(e) => {
                    if let Ok(session) = &connected {
                        session.disconnect().await;
                    }
                    return Err(e);
                }
            }
        }
        let session = connected?;
        forwards.set_serve(&options);
        if let Some(agent) = agent.as_mut() {
            if let Err(e) = agent.authorize(&options.serve).await {
                session.disconnect().await;
                return Err(e);
            }
        }
        let run = Run {
            session: &session,
            forwards: &forwards,
            options: &options,
            marker: &marker,
            relay: relay.as_ref(),
        };
        let result = run.carry_out(&script, stdout, stderr).await;
        let stats = run.clean_up(result.is_ok()).await;
        if let Some(agent) = agent {
            agent.finish().await;
        }
        let _ = stderr.flush().await;
        let exit = result?;
        info!(
            connections = stats.accepted,
            refused = stats.refused,
            to_serve = stats.to_serve,
            from_serve = stats.from_serve,
            rc = exit.code(),
            "pull finished"
        );
        Ok(PullOutcome {
            exit,
            forwarded: stats,
        })
    }
    .instrument(span)
    .await
}

/// What answers the channels the client's sshd opens during one run: the UNIX socket forward
/// (socket method) or the TCP forward (TCP method), and the agent (agent and TCP methods).
struct Forwards {
    unix: Option<Arc<UnixSlot>>,
    tcp: Option<Arc<TcpForward>>,
    agent: Option<Arc<AgentForward>>,
}

/// The socket method's forwarder, made once the server borg's version is known (it decides
/// borg serve's flags), which may be after the session connected ([`ServerVersion::Learn`]).
/// Until then every forwarded connection is refused: none is expected before we ask for the
/// forward, which comes later.
#[derive(Default)]
struct UnixSlot(std::sync::OnceLock<Arc<UnixForward>>);

impl crate::ssh::incoming::Incoming for UnixSlot {
    fn forwarded_streamlocal(&self, socket_path: &str) -> crate::ssh::incoming::Decision {
        match self.0.get() {
            Some(forwarder) => forwarder.forwarded_streamlocal(socket_path),
            None => crate::ssh::incoming::Decision::prohibited(),
        }
    }
}

impl Forwards {
    fn new(options: &PullOptions, agent: Option<&RunAgent>) -> Self {
        Self {
            unix: matches!(options.via, Via::Socket).then(|| Arc::new(UnixSlot::default())),
            tcp: match &options.via {
                Via::Tcp(login) => Some(TcpForward::new(login.host.clone(), login.port)),
                _ => None,
            },
            agent: agent.map(|a| a.forward.clone()),
        }
    }

    fn incoming(&self) -> Arc<dyn crate::ssh::incoming::Incoming> {
        fn dyn_incoming<T: crate::ssh::incoming::Incoming>(
            i: &Option<Arc<T>>,
        ) -> Option<Arc<dyn crate::ssh::incoming::Incoming>> {
            i.clone().map(|i| i as Arc<dyn crate::ssh::incoming::Incoming>)
        }
        Arc::new(ByKind {
            streamlocal: dyn_incoming(&self.unix),
            tcpip: dyn_incoming(&self.tcp),
            agent: dyn_incoming(&self.agent),
        })
    }

    /// Makes the socket method's forwarder with `options.serve` (once; later calls keep it).
    fn set_serve(&self, options: &PullOptions) {
        if let Some(slot) = &self.unix {
            let _ = slot.0.set(UnixForward::new(options.serve.clone()));
        }
    }

    /// The socket method's forwarder, once [`Forwards::set_serve`] made it.
    fn unix(&self) -> Option<&Arc<UnixForward>> {
        self.unix.as_ref().and_then(|slot| slot.0.get())
    }

    async fn drain(&self, grace: Duration) -> ForwardStats {
        match (self.unix(), &self.tcp) {
            (Some(unix), _) => unix.drain(grace).await,
            (_, Some(tcp)) => tcp.drain(grace).await,
            _ => ForwardStats::default(),
        }
    }

    async fn stop(&self) -> ForwardStats {
        match (self.unix(), &self.tcp) {
            (Some(unix), _) => unix.stop().await,
            (_, Some(tcp)) => tcp.stop().await,
            _ => ForwardStats::default(),
        }
    }
}

/// One pull on a connected session.
struct Run<'a> {
    session: &'a Session,
    forwards: &'a Forwards,
    options: &'a PullOptions,
    marker: &'a str,
    /// The relay to install when the client asks for it.
    relay: Option<&'a RelayBinary>,
}

impl Run<'_> {
    /// Waits for `step`, at most `limit`; cancellation ends it with [`Error::Interrupted`].
    async fn step<T>(
        &self,
        what: &'static str,
        limit: Duration,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            r = tokio::time::timeout(limit, step) => r.map_err(|_| Error::NoAnswer {
                peer: self.session.peer(),
                what,
                secs: limit.as_secs(),
            })?,
            () = self.options.cancel.cancelled() => Err(Error::Interrupted),
        }
    }

    async fn carry_out<O, E>(&self, script: &[u8], stdout: &mut O, stderr: &mut E) -> Result<RemoteExit>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let exec = async {
            match self.options.via {
                Via::Socket | Via::Sftp(_) => self.session.exec(script).await,
                Via::Agent(_) | Via::Tcp(_) => self.session.exec_forwarding_agent(script).await,
            }
        };
        let mut channel = self
            .step("opening the run's channel", REQUEST_TIMEOUT, exec)
            .await?;
        let report = script::read_report(&mut channel, self.marker);
        let (mut report, mut early_output) = self
            .step("the start of the run", REMOTE_HELPER_TIMEOUT, report)
            .await?;
        if report == Report::NeedRelay {
            (report, early_output) = self.install_relay(&mut channel).await?;
        }
        let (dir, client_borg, installed_relay) = self.private_dir(report)?;
        debug!(dir, "private directory created on the client");
        // Before `go`: nothing has been forwarded or relayed yet.
        self.check_client_borg(client_borg.as_deref())?;
        self.start_borg(&mut channel, &dir, installed_relay.as_deref())
            .await?;
        // On failure we return before the heartbeats and disconnect: sshd ends the session, the
        // script reads EOF, exits, and its watcher removes the directory. Otherwise stdin stays
        // open for the heartbeats: the client's watcher stops borg when they stop coming.
        debug!("borg started on the client");
        if !early_output.is_empty() {
            let _ = stdout.write_all(&early_output).await;
        }
        let deadline = Instant::now() + self.options.max_runtime;
        let beats = heartbeat(channel.make_writer());
        let relayed = async {
            match self.options.via.server_login() {
                None => {
                    let relayed = exec::relay_output(
                        &mut channel,
                        "borg",
                        stdout,
                        stderr,
                        &self.options.cancel,
                        deadline,
                        CANCEL_GRACE,
                    )
                    .await?;
                    Ok::<_, Error>((relayed, None))
                }
                // The client's ssh log comes back on stderr after borg's exit status, before the
                // channel closes.
                Some(_) => {
                    let mut split = StderrSplit::new(stderr, self.marker);
                    let relayed = exec::relay_output(
                        &mut channel,
                        "borg",
                        stdout,
                        &mut split,
                        &self.options.cancel,
                        deadline,
                        CANCEL_GRACE,
                    )
                    .await;
                    Ok((relayed?, Some(split.finish().await)))
                }
            }
        };
        let (relayed, ssh_log) = tokio::select! {
            r = relayed => r?,
            never = beats => match never {},
        };
        match relayed.stopped {
            Some(Stop::Cancelled) => return Err(Error::Interrupted),
            Some(Stop::Deadline) => {
                return Err(Error::MaxRuntime {
                    peer: self.session.peer(),
                    secs: self.options.max_runtime.as_secs(),
                })
            }
            None => {}
        }
        if let (Some(log), Some(exit)) = (&ssh_log, &relayed.exit) {
            self.check_client_ssh(log, exit)?;
        }
        match relayed.exit {
            Some(exit) => Ok(exit),
            None if self.session.is_closed() => {
                Err(self.session.failure("borg was running", russh::Error::Disconnect))
            }
            None => Err(Error::NoExitStatus {
                peer: self.session.peer(),
            }),
        }
    }

    /// Agent and TCP methods: when borg failed, names the cause the client's ssh logged instead of
    /// borg's guess; the log is shown (escaped) in any case, since ssh's stderr went to it.
    fn check_client_ssh(&self, log: &ClientSshLog, exit: &RemoteExit) -> Result<()> {
        let said = log
            .lines
            .iter()
            .map(|line| exec::escape_output(line).trim().to_owned())
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if exit.code() == 0 {
            if !said.is_empty() {
                info!(said, "the client's ssh to the server logged");
            }
            return Ok(());
        }
        let bridge_failed = self
            .forwards
            .tcp
            .as_ref()
            .is_some_and(|tcp| tcp.stats().failed > 0);
        let Some(login) = self.options.via.server_login() else {
            return Ok(());
        };
        match crate::jobs::pull::via::client_ssh_cause(log, bridge_failed) {
            Some(cause) => Err(Error::ClientSsh {
                peer: self.session.peer(),
                server: match self.options.via {
                    Via::Tcp(_) => format!(
                        "{}@{} port {} (through the TCP forward on the client's loopback)",
                        login.user, login.host, login.port
                    ),
                    _ => format!("{}@{} port {}", login.user, login.host, login.port),
                },
                cause,
                said,
            }),
            None => {
                if !said.is_empty() {
                    warn!(said, "the client's ssh to the server logged");
                } else if !log.complete {
                    warn!("the client's ssh log did not come back before the run's channel closed");
                }
                Ok(())
            }
        }
    }

    /// Refuses a client borg whose major version or borg 2 generation differs from the server's.
    /// A version the check cannot read (a wrapper script, a future format) is logged and let
    /// through: borg serve's own protocol check then fails the first connection.
    fn check_client_borg(&self, reported: Option<&str>) -> Result<()> {
        let server = self.options.serve.version.as_ref();
        let client = reported.and_then(borg_pull_core::BorgVersion::parse);
        match (client, server) {
            (Some(client), Some(server))
                if client.major == server.major && client.generation() != server.generation() =>
            {
                Err(Error::BorgGenerationMismatch {
                    peer: self.session.peer(),
                    program: self.options.remote_borg.to_string_lossy().into_owned(),
                    client: client.to_string(),
                    client_generation: client.generation(),
                    server: server.to_string(),
                    server_generation: server.generation(),
                })
            }
            (Some(client), Some(server)) if client.major != server.major => Err(Error::BorgVersionMismatch {
                peer: self.session.peer(),
                program: self.options.remote_borg.to_string_lossy().into_owned(),
                client: client.to_string(),
                client_major: client.major,
                server: server.to_string(),
                server_major: server.major,
            }),
            (Some(client), _) => {
                let server = server.map_or_else(|| "unknown".to_owned(), ToString::to_string);
                info!(client_borg = %client, server_borg = %server, "borg versions");
                Ok(())
            }
            (None, _) => {
                let reported = reported.unwrap_or("nothing");
                warn!(reported, "cannot tell the client borg's version; not checked");
                Ok(())
            }
        }
    }

    /// The private directory the script reported (and the client borg's `--version` line), or
    /// why it could not start.
    fn private_dir(&self, report: Report) -> Result<(String, Option<String>, Option<String>)> {
        let (role, why) = match report {
            Report::Dir {
                dir,
                borg_version,
                relay,
                cleared,
            } => {
                for dead in cleared {
                    warn!("{dead}");
                }
                return Ok((dir, borg_version, relay));
            }
            Report::NeedRelay | Report::BadRelay(_) => {
                let why = match report {
                    Report::BadRelay(got) => format!("its SHA-256 on the client was {got}"),
                    _ => "the client asked for it twice".into(),
                };
                return Err(Error::RelayInstall {
                    peer: self.session.peer(),
                    why,
                });
            }
            Report::NoAgent => {
                return Err(Error::AgentNotForwarded {
                    peer: self.session.peer(),
                })
            }
            // Before the private directory was made: nothing is left on the client to clear.
            Report::NoDir(why) => {
                return Err(Error::RemoteDirUnusable {
                    dir: self
                        .options
                        .remote_dir
                        .as_deref()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    peer: self.session.peer(),
                    why,
                    purpose: crate::error::RemoteDirUse::RunBorg,
                })
            }
            Report::Missing(role, why) => (role, why),
        };
        let program = match (role, self.options.via.server_login()) {
            (RemoteProgram::Relay, _) => &self.options.relay,
            (RemoteProgram::Borg, _) => &self.options.remote_borg,
            (RemoteProgram::Ssh, Some(login)) => &login.ssh,
            // pull runs no tar: never reported.
            (RemoteProgram::Ssh, None) | (RemoteProgram::Tar, _) => &self.options.relay,
        };
        Err(Error::RemoteProgramMissing {
            program: program.to_string_lossy().into_owned(),
            role,
            peer: self.session.peer(),
            why,
        })
    }

    /// Sets up the way back to the server (socket or TCP forward) and sends `go`, `BORG_RSH`
    /// and the passphrase: the script `exec`s borg.
    /// `--install-relay`: the client has no current copy; send `relay` and the binary (at the
    /// pace of its window), then read the start of the run on.
    async fn install_relay(
        &self,
        channel: &mut russh::Channel<russh::client::Msg>,
    ) -> Result<(Report, Vec<u8>)> {
        let relay = self.relay.ok_or_else(|| Error::RelayInstall {
            peer: self.session.peer(),
            why: "the client asked for a relay we did not offer".into(),
        })?;
        info!(
            name = relay.name(),
            bytes = relay.bytes.len(),
            "installing the relay on the client"
        );
        // The client's answer is read while the bytes go: a client whose install stops half-way
        // (a full disk, a cache it cannot write) closes the channel with its report, and the
        // window it will never open again must not hold the run until the step's deadline.
        let mut writer = channel.make_writer();
        let bytes = &relay.bytes;
        let send = async move {
            writer.write_all(b"relay\n").await?;
            writer.write_all(bytes).await?;
            writer.flush().await
        };
        let send = async {
            let read = script::read_report(channel, self.marker);
            tokio::pin!(read);
            tokio::select! {
                biased;
                report = &mut read => report,
                sent = send => match sent {
                    Ok(()) => read.await,
                    // A write that fails means the channel went; its report, if any, says why.
                    Err(e) => read
                        .await
                        .map_err(|_| self.session.failure("sending the relay", russh::Error::IO(e))),
                },
            }
        };
        self.step("installing the relay", crate::limits::RELAY_INSTALL_TIMEOUT, send)
            .await
            .map_err(|e| match e {
                // The report reader names the run's start; this failure is the install's.
                Error::RemoteHelper { status, output, .. } => Error::RemoteHelper {
                    command: "installing the relay into the login user's cache".into(),
                    status,
                    output,
                },
                other => other,
            })
    }

    async fn start_borg(
        &self,
        channel: &mut russh::Channel<russh::client::Msg>,
        dir: &str,
        installed_relay: Option<&str>,
    ) -> Result<()> {
        let passphrase = self.options.passphrase.as_ref().map(Passphrase::expose);
        let login = self.options.via.server_login();
        let lines = match (&self.options.via, login) {
            (Via::Tcp(_), Some(login)) => {
                let tcp = self
                    .forwards
                    .tcp
                    .as_ref()
                    .expect("the TCP method has a TCP bridge");
                let port = match self
                    .step(
                        "the TCP forward request",
                        REQUEST_TIMEOUT * 2,
                        tcp.listen(self.session),
                    )
                    .await
                {
                    Err(Error::RequestDenied { peer, .. }) => return Err(Error::TcpForwardDenied { peer }),
                    other => other?,
                };
                let target = SshTarget {
                    host: crate::channels::tcp::LISTEN_ADDRESS,
                    port,
                    user: &login.user,
                };
                script::go_lines_ssh(&login.ssh, dir, target, passphrase)?
            }
            (_, Some(login)) => {
                let target = SshTarget {
                    host: &login.host,
                    port: login.port,
                    user: &login.user,
                };
                script::go_lines_ssh(&login.ssh, dir, target, passphrase)?
            }
            (_, None) => {
                return self
                    .start_borg_on_socket(channel, dir, installed_relay, passphrase)
                    .await
            }
        };
        let lines = Zeroizing::new(lines);
        channel
            .data_bytes(lines.to_vec())
            .await
            .map_err(|e| self.session.failure("writing to the run's stdin", e))
    }

    /// The socket method: the forward request goes out first and `go` right behind it, without
    /// waiting for the reply: sshd sets the forward up before it passes our data on to the
    /// script, which checks that the socket exists before it starts borg (and otherwise waits
    /// for EOF, so the directory is still there for the diagnosis). That saves a round trip.
    async fn start_borg_on_socket(
        &self,
        channel: &mut russh::Channel<russh::client::Msg>,
        dir: &str,
        installed_relay: Option<&str>,
        passphrase: Option<&str>,
    ) -> Result<()> {
        let forwarder = self
            .forwards
            .unix()
            .expect("the socket method has a forwarder once the server borg's version is known");
        let socket = format!("{dir}/{SOCKET_NAME}");
        let relay = installed_relay.map_or(self.options.relay.as_os_str(), std::ffi::OsStr::new);
        let lines = Zeroizing::new(script::go_lines(relay, dir, passphrase)?);
        let mut listening = std::pin::pin!(forwarder.listen(self.session, &socket));
        let queued = std::future::poll_fn(|cx| std::task::Poll::Ready(listening.as_mut().poll(cx))).await;
        channel
            .data_bytes(lines.to_vec())
            .await
            .map_err(|e| self.session.failure("writing to the run's stdin", e))?;
        // borg on the client is on its way (a Python start-up): start its borg serve now, so
        // the two start-ups overlap. Same flags; stopped with the forwards if no connection comes.
        forwarder.prestart();
        match queued {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => {
                self.step("the UNIX socket forward request", REQUEST_TIMEOUT * 2, listening)
                    .await
            }
        }
    }

    /// Drains (after success) or stops the forwards, cancels a TCP forward, then disconnects;
    /// bounded in time.
    async fn clean_up(&self, succeeded: bool) -> ForwardStats {
        let stats = if succeeded && !self.options.cancel.is_cancelled() {
            match tokio::time::timeout(
                CLEANUP_TIMEOUT + FORWARD_DRAIN_TIMEOUT,
                self.forwards.drain(FORWARD_DRAIN_TIMEOUT),
            )
            .await
            {
                Ok(stats) => stats,
                Err(_) => self.forwards.stop().await,
            }
        } else {
            self.forwards.stop().await
        };
        let bye = async {
            if let Some(tcp) = &self.forwards.tcp {
                tcp.unlisten(self.session).await;
            }
            self.session.disconnect().await;
        };
        if tokio::time::timeout(CLEANUP_TIMEOUT, bye).await.is_err() {
            warn!("the client did not take our disconnect in time");
        }
        stats
    }
}

/// Writes a heartbeat line to the run's stdin every [`HEARTBEAT_INTERVAL`] (the client's
/// guard stops borg once they stop coming), until dropped. A write waits for the client's window
/// without holding up anything else; after a failed write (the channel is gone) it only waits.
pub(crate) async fn heartbeat(mut stdin: impl AsyncWrite + Unpin) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval_at(
        Instant::now() + crate::limits::HEARTBEAT_INTERVAL,
        crate::limits::HEARTBEAT_INTERVAL,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if stdin.write_all(b"\n").await.is_err() || stdin.flush().await.is_err() {
            debug!("heartbeat: the run's stdin is closed");
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_no_environment_unless_asked() {
        assert!(PullOptions::new("host-only", "/r", vec![]).is_err());
        assert!(PullOptions::new("u@", "/r", vec![]).is_err());
        assert!(PullOptions::new("u@h", "relative", vec![]).is_err());
        let o = PullOptions::new("u@h", "/r", vec![]).unwrap();
        assert!(o.session.known_hosts.as_os_str().is_empty());
        assert!(o.session.default_identities.is_empty());
        assert!(o.session.agent_socket.is_none());
        let env = PullEnv {
            ssh: SshEnv {
                home: Some("/home/op".into()),
                user: Some("op".into()),
                identity_passphrase: Some("pw".into()),
                ssh_auth_sock: Some("/run/agent.sock".into()),
            },
            borg_passphrase: Some("hunter2".into()),
            ..Default::default()
        };
        let o = PullOptions::with_env("h", "/r", vec![], &env).unwrap();
        assert_eq!(o.session.agent_socket, Some(PathBuf::from("/run/agent.sock")));
        assert_eq!(o.session.user, "op");
        assert_eq!(o.session.known_hosts, PathBuf::from("/home/op/.ssh/known_hosts"));
        assert_eq!(
            o.session.default_identities[0],
            PathBuf::from("/home/op/.ssh/id_ed25519")
        );
        assert_eq!(
            o.session.identity_passphrase.as_ref().map(|p| p.as_str()),
            Some("pw")
        );
        assert!(!format!("{env:?}").contains("pw\""));
        assert!(!format!("{env:?}").contains("hunter2"));
    }

    #[test]
    fn bad_arguments_fail_before_connecting() {
        let mut o = PullOptions::new("u@h", "/r", vec!["a\0b".into()]).unwrap();
        assert!(o.remote_script("m:", None, None).is_err());
        o.borg_args.clear();
        o.env.push(("BORG_RSH".into(), "x".into()));
        assert!(o.remote_script("m:", None, None).is_err());
    }

    /// One URL per repository whatever the method, so borg's "previously located at" never fires
    /// on a switch; borg 2's absolute form has two slashes.
    #[test]
    fn every_method_gives_borg_the_same_repository_url() {
        let key = russh::keys::PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHj8lFdTAsv6UmfCSPwyVQ3I9OaKMYSh7QGqzNbb0xWT k",
        )
        .unwrap();
        let login =
            |server: &str| ServerLogin::new(server, key.clone(), AgentKey::File("/k".into())).unwrap();
        let mut urls = Vec::new();
        for major in ["borg 1.2.4", "borg 2.0.0b25"] {
            for via in [
                Via::Socket,
                Via::Agent(login("backup@192.0.2.1:2222")),
                Via::Agent(login("other@[::1]")),
                Via::Tcp(login("backup@localhost")),
            ] {
                let mut o = PullOptions::new("u@h", "/srv/borg/web 1", vec![]).unwrap();
                o.serve.version = borg_pull_core::BorgVersion::parse(major);
                o.via = via;
                urls.push((major, String::from_utf8(o.repo_url()).unwrap()));
            }
        }
        for (major, url) in urls {
            let expected = if major.starts_with("borg 2") {
                "ssh://borg-pull-server//srv/borg/web 1"
            } else {
                "ssh://borg-pull-server/srv/borg/web 1"
            };
            assert_eq!(url, expected, "{major}");
        }
    }

    #[test]
    fn repository_url_and_rsh_variables_by_server_generation() {
        for (server, url, borgstore_rsh) in [
            (None, "ssh://borg-pull-server/srv/r", false),
            (Some("borg 1.4.5"), "ssh://borg-pull-server/srv/r", false),
            (Some("borg2 2.0.0b5"), "ssh://borg-pull-server/srv/r", false),
            (Some("borg 2.0.0b17"), "ssh://borg-pull-server//srv/r", false),
            (Some("borg 2.0.0b21"), "ssh://borg-pull-server//srv/r", false),
            (Some("borg 2.0.0b24"), "rest://borg-pull-server//srv/r", true),
            (Some("borg 2.0.0b25"), "ssh://borg-pull-server//srv/r", true),
        ] {
            let mut o = PullOptions::new("u@h", "/srv/r", vec!["list".into()]).unwrap();
            o.serve.version = server.and_then(borg_pull_core::BorgVersion::parse);
            assert_eq!(String::from_utf8(o.repo_url()).unwrap(), url, "{server:?}");
            let script = String::from_utf8(o.remote_script("m:", None, None).unwrap()).unwrap();
            assert_eq!(script.contains("BORGSTORE_RSH="), borgstore_rsh, "{server:?}");
        }
    }
}
