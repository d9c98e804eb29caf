//! Spawning, bridging and reaping `borg serve`.
//!
//! The server alone decides the flags, by the server borg's [`Generation`] ([`ServeConfig::args`]):
//! borg 1.x and 2.0.0b1-b9 `serve --append-only --restrict-to-repository REPO`; 2.0.0b10-b16 are
//! refused (nothing there refuses deletes); 2.0.0b17 `serve --restrict-to-repository REPO` with
//! `BORG_REPO_PERMISSIONS=no-delete`; 2.0.0b18-b21 `serve --restrict-to-repository REPO
//! --permissions no-delete`; 2.0.0b22 and later `serve --rest --backend FILE:REPO
//! --restrict-to-repository REPO --permissions no-delete` (`--append-only` and `no-delete` dropped
//! or widened to `all` only when the operator allowed deletes). The client's own idea of the
//! remote command (what borg appends to `BORG_RSH`) never reaches this module.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::ChildStdin;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::child::{BorgChild, BorgCommand, Environment, HowEnded, Input, Output};
use crate::limits::{SERVE_CANCEL_GRACE, SERVE_EXIT_GRACE, SERVE_RELAY_BUFFER};
use crate::version::{BorgVersion, Generation, Wire};
use crate::{Error, Result};

/// How the server runs `borg serve` for every connection. Fixed by the server's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The borg program (`borg` on `PATH` by default).
    pub borg: PathBuf,
    /// The one repository clients may use (`--restrict-to-repository`; borg 2 also `--backend
    /// FILE:REPO`). Absolute.
    pub repo: PathBuf,
    /// Let clients delete and prune (borg 1: omits `--append-only`; borg 2: `--permissions all`
    /// instead of `no-delete`). Off by default.
    pub allow_delete: bool,
    /// borg serve's `--storage-quota` (e.g. `5G`, `1.5T`): the most the repository may hold, so a
    /// client cannot fill the server's disk. Checked by [`parse_storage_quota`] before borg serve
    /// is started. `None`: no quota beyond the repository's own.
    pub storage_quota: Option<String>,
    /// The server borg's version, which decides the flags. `None` until
    /// [`learn_version`](Self::learn_version) runs `borg --version`: then the borg 1.x flags are used.
    pub version: Option<BorgVersion>,
}

/// What one bridged `borg serve` session did.
#[derive(Debug, Clone, Copy)]
pub struct ServeOutcome {
    /// Bytes from the connection to borg serve.
    pub to_serve: u64,
    /// Bytes from borg serve to the connection.
    pub from_serve: u64,
    /// How borg serve ended (`None` if it had to be killed after cancellation).
    pub status: Option<ExitStatus>,
}

impl ServeConfig {
    /// An append-only configuration for `repo`, using `borg` from `PATH`.
    ///
    /// ```
    /// let config = borg_pull_core::ServeConfig::new("/srv/borg/client1").unwrap();
    /// assert_eq!(
    ///     config.args().unwrap(),
    ///     ["serve", "--append-only", "--restrict-to-repository", "/srv/borg/client1"]
    /// );
    /// assert!(borg_pull_core::ServeConfig::new("relative/repo").is_err());
    /// ```
    pub fn new(repo: impl Into<PathBuf>) -> Result<Self> {
        let repo = repo.into();
        if !repo.is_absolute() {
            return Err(Error::RepoNotAbsolute { path: repo });
        }
        Ok(Self {
            borg: PathBuf::from("borg"),
            repo,
            allow_delete: false,
            storage_quota: None,
            version: None,
        })
    }

    /// Runs `borg --version` once and keeps the result in [`version`](Self::version); later calls
    /// (and clones made after the first) reuse it.
    pub fn learn_version(&mut self) -> Result<&BorgVersion> {
        if self.version.is_none() {
            self.version = Some(BorgVersion::probe(&self.borg)?);
        }
        Ok(self.version.as_ref().expect("just set"))
    }

    /// The arguments after the program name: exactly what the server allows, nothing from clients.
    ///
    /// Options are spelled out: borg 2 no longer accepts abbreviations such as `--restrict-to-repo`.
    /// borg 2 has no `--append-only` and no `--storage-quota` (an error here); without `--rest`
    /// it would serve only legacy repositories and ignore `--permissions`.
    ///
    /// ```
    /// use borg_pull_core::{BorgVersion, ServeConfig};
    /// let mut config = ServeConfig::new("/srv/borg/client1").unwrap();
    /// config.storage_quota = Some("50G".into());
    /// assert_eq!(
    ///     config.args().unwrap(),
    ///     ["serve", "--append-only", "--storage-quota", "50G", "--restrict-to-repository", "/srv/borg/client1"]
    /// );
    /// config.storage_quota = None;
    /// config.version = BorgVersion::parse("borg 2.0.0b25");
    /// assert_eq!(
    ///     config.args().unwrap(),
    ///     ["serve", "--rest", "--backend", "FILE:/srv/borg/client1",
    ///      "--restrict-to-repository", "/srv/borg/client1", "--permissions", "no-delete"]
    /// );
    /// ```
    pub fn args(&self) -> Result<Vec<OsString>> {
        let generation = self.generation();
        let mut args: Vec<OsString> = vec!["serve".into()];
        if let (Some(version), Some(_)) = (&self.version, &self.storage_quota) {
            if !generation.has_append_only() {
                return Err(Error::UnsupportedByBorg {
                    version: version.clone(),
                    flag: "--storage-quota",
                });
            }
        }
        let permissions = if self.allow_delete { "all" } else { "no-delete" };
        match generation {
            Generation::Borg1 | Generation::Borg2Segments => {
                if !self.allow_delete {
                    args.push("--append-only".into());
                }
                if let Some(quota) = &self.storage_quota {
                    args.push("--storage-quota".into());
                    args.push(quota.into());
                }
                args.push("--restrict-to-repository".into());
                args.push(self.repo.clone().into());
            }
            Generation::Borg2StoreUnrestricted => {
                if !self.allow_delete {
                    return Err(Error::CannotRefuseDeletes {
                        version: self
                            .version
                            .clone()
                            .expect("a generation of borg 2 has a version"),
                    });
                }
                args.push("--restrict-to-repository".into());
                args.push(self.repo.clone().into());
            }
            // BORG_REPO_PERMISSIONS in its environment: see `extra_env`.
            Generation::Borg2StorePermissionsEnv => {
                args.push("--restrict-to-repository".into());
                args.push(self.repo.clone().into());
            }
            Generation::Borg2StorePermissions => {
                args.push("--restrict-to-repository".into());
                args.push(self.repo.clone().into());
                args.push("--permissions".into());
                args.push(permissions.into());
            }
            Generation::Borg2RestScheme | Generation::Borg2Rest => {
                let mut backend = OsString::from("FILE:");
                backend.push(&self.repo);
                args.extend(["--rest".into(), "--backend".into(), backend]);
                args.push("--restrict-to-repository".into());
                args.push(self.repo.clone().into());
                args.push("--permissions".into());
                args.push(permissions.into());
            }
        }
        Ok(args)
    }

    /// The server borg's generation; borg 1.x until [`learn_version`](Self::learn_version) ran.
    pub fn generation(&self) -> Generation {
        self.version
            .as_ref()
            .map_or(Generation::Borg1, BorgVersion::generation)
    }

    /// Variables set for borg serve on top of the allowlisted ones: 2.0.0b17 reads its
    /// permissions only from `BORG_REPO_PERMISSIONS` (its serve has no `--permissions` yet).
    ///
    /// ```
    /// use borg_pull_core::{BorgVersion, ServeConfig};
    /// let mut config = ServeConfig::new("/srv/borg/client1").unwrap();
    /// config.version = BorgVersion::parse("borg 2.0.0b17");
    /// assert_eq!(config.extra_env(), [("BORG_REPO_PERMISSIONS", "no-delete")]);
    /// config.version = BorgVersion::parse("borg 2.0.0b18");
    /// assert!(config.extra_env().is_empty());
    /// ```
    pub fn extra_env(&self) -> Vec<(&'static str, &'static str)> {
        match self.generation() {
            Generation::Borg2StorePermissionsEnv => vec![(
                "BORG_REPO_PERMISSIONS",
                if self.allow_delete { "all" } else { "no-delete" },
            )],
            _ => Vec::new(),
        }
    }

    /// Finds the borg program the way `exec` will: a path containing `/` as is, else on `PATH`.
    ///
    /// Lets a server fail at start-up, not at the first connection, when borg is missing.
    pub fn find_program(&self) -> Result<PathBuf> {
        let not_found = || Error::BorgNotFound {
            program: self.borg.clone(),
        };
        let is_executable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if self.borg.as_os_str().is_empty() {
            return Err(not_found());
        }
        if self.borg.components().count() > 1 || self.borg.is_absolute() {
            return if is_executable(&self.borg) {
                Ok(self.borg.clone())
            } else {
                Err(not_found())
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(&self.borg))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(not_found)
    }

    /// The `borg serve` command, if the configuration is valid. Its stderr cannot cross the
    /// socket, so it is logged line by line (escaped, each line bounded).
    fn command(&self) -> Result<BorgCommand> {
        if let Some(quota) = &self.storage_quota {
            parse_storage_quota(quota)?;
        }
        let mut cmd = BorgCommand::new(&self.borg, Environment::Allowlisted(passed_to_serve))
            .args(self.args()?)
            .stdin(Input::Piped)
            .stdout(Output::Piped)
            .on_stderr_line(|line| info!(target: "borg_serve", "{line}"));
        for (name, value) in self.extra_env() {
            cmd = cmd.env(name, value);
        }
        Ok(cmd)
    }

    /// Starts a `borg serve` ([`command`](Self::command)).
    fn spawn(&self) -> Result<BorgChild> {
        let child = self.command()?.spawn().map_err(|source| Error::SpawnBorg {
            program: self.borg.clone(),
            source,
        })?;
        debug!(pid = child.id(), repo = %self.repo.display(), "borg serve started");
        Ok(child)
    }
}

/// The smallest quota borg accepts (`parse_storage_quota` in borg 1.2's archiver.py: "At least 10M
/// are required").
const MIN_STORAGE_QUOTA: u64 = 10_000_000;

/// Checks a storage quota the way borg 1.2 parses it, returning it in bytes: a decimal number
/// with an optional fraction and an optional suffix `K`, `M`, `G`, `T` or `P` (powers of 1000), at
/// least `10M`.
///
/// Stricter than borg's `float()` (no signs, exponents, spaces, `inf`), so that whatever passes
/// here means the same to borg.
///
/// ```
/// use borg_pull_core::serve::parse_storage_quota;
/// assert_eq!(parse_storage_quota("10M").unwrap(), 10_000_000);
/// assert_eq!(parse_storage_quota("1.5T").unwrap(), 1_500_000_000_000);
/// assert!(parse_storage_quota("9M").is_err());
/// assert!(parse_storage_quota("5 G").is_err());
/// ```
pub fn parse_storage_quota(quota: &str) -> Result<u64> {
    let invalid = |reason| Error::StorageQuotaInvalid {
        value: quota.to_owned(),
        reason,
    };
    let (number, factor) = match quota.as_bytes().last() {
        Some(b'K') => (&quota[..quota.len() - 1], 1e3),
        Some(b'M') => (&quota[..quota.len() - 1], 1e6),
        Some(b'G') => (&quota[..quota.len() - 1], 1e9),
        Some(b'T') => (&quota[..quota.len() - 1], 1e12),
        Some(b'P') => (&quota[..quota.len() - 1], 1e15),
        _ => (quota, 1.0),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || (number.contains('.') && fraction.is_empty())
    {
        return Err(invalid(
            "expected a number with an optional K, M, G, T or P suffix, like 500G or 1.5T",
        ));
    }
    let value: f64 = number.parse().map_err(|_| invalid("not a number"))?;
    // As borg computes it: int(float(number) * factor).
    let bytes = value * factor;
    if bytes >= 2f64.powi(63) {
        return Err(invalid("too large"));
    }
    let bytes = bytes as u64;
    if bytes < MIN_STORAGE_QUOTA {
        return Err(invalid("borg requires at least 10M"));
    }
    Ok(bytes)
}

/// Whether the environment variable `name` of this process is passed on to `borg serve`.
///
/// An allowlist, because borg serve needs almost nothing and the server's environment may hold
/// secrets meant for other work (`BORG_PASSPHRASE`, `BORG_PASSCOMMAND`, `BORG_PULL_IDENTITY_PASSPHRASE`,
/// an ssh `SSH_ORIGINAL_COMMAND`), settings that would change what borg serve may do
/// (`BORG_REPO_PERMISSIONS`, `BORG_RSH`, `PYTHONPATH`, `LD_PRELOAD`), or our own socket-activation
/// variables (`LISTEN_*`). Passed:
///
/// - `PATH`, `HOME`, `USER`, `LOGNAME`, `TMPDIR`: where borg serve finds programs, its home and
///   temporary files;
/// - `LANG`, `LANGUAGE`, `LC_*`, `TZ`: how it decodes file names and formats times and messages;
/// - `BORG_BASE_DIR`, `BORG_CONFIG_DIR`, `BORG_CACHE_DIR`, `BORG_SECURITY_DIR`, `BORG_KEYS_DIR`:
///   where borg keeps its files (paths, not secrets; a repository server rarely uses them, but a
///   borg that cannot find its config dir complains);
/// - `BORG_HOST_ID`: identifies this host in the repository lock, which stale-lock detection
///   relies on (containers set it).
///
/// Not passed, on purpose: `BORG_LOGGING_CONF` makes borg load a Python logging configuration,
/// which may instantiate arbitrary classes; borg serve's stderr is logged by us anyway.
pub fn passed_to_serve(name: &std::ffi::OsStr) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "LANG",
        "LANGUAGE",
        "TZ",
        "BORG_BASE_DIR",
        "BORG_CONFIG_DIR",
        "BORG_CACHE_DIR",
        "BORG_SECURITY_DIR",
        "BORG_KEYS_DIR",
        "BORG_HOST_ID",
    ];
    let Some(name) = name.to_str() else {
        return false;
    };
    EXACT.contains(&name) || (name.starts_with("LC_") && name.len() > 3)
}

/// Runs one `borg serve` for `stream` and relays between them until both directions are done.
///
/// borg serve gets only the environment variables [`passed_to_serve`] allows.
///
/// The child is stopped and reaped on every path out: a clean end or a relay error (it gets
/// [`SERVE_EXIT_GRACE`] to exit by itself), or `cancel` (stdin closed first, then
/// [`SERVE_CANCEL_GRACE`]); after that SIGTERM to its process group, SIGKILL after another
/// [`SERVE_CANCEL_GRACE`] ([`crate::child`]). Its stderr is logged line by line (escaped, each
/// line bounded), since it cannot cross the socket.
pub async fn serve_stream<S>(
    config: &ServeConfig,
    stream: S,
    cancel: CancellationToken,
) -> Result<ServeOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_stream_with(config, stream, cancel, None).await
}

/// A `borg serve` started before its connection came ([`ServeConfig::prestart`]), so that its
/// Python start-up (a few tenths of a second) overlaps the client borg's instead of following it.
/// Same program, flags and environment as [`serve_stream`]'s; dropped, it is killed.
#[derive(Debug)]
pub struct Prestarted {
    child: BorgChild,
}

impl ServeConfig {
    /// Starts the `borg serve` of the next connection now ([`serve_stream_with`] takes it).
    pub fn prestart(&self) -> Result<Prestarted> {
        let child = self.spawn()?;
        debug!(pid = child.id(), "that borg serve waits for its connection");
        Ok(Prestarted { child })
    }
}

impl Prestarted {
    /// Its process id (`None` once reaped).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Ends it without a session: stdin closed (borg serve exits on EOF) and SIGTERM, SIGKILL
    /// after `grace`; reaped in every case.
    pub async fn stop(mut self, grace: std::time::Duration) {
        drop(self.child.take_stdin());
        if let Err(e) = self.child.stop(grace).await {
            warn!("cannot wait for the borg serve started ahead: {e}");
        }
        debug!("borg serve started ahead stopped: no connection came");
    }
}

/// [`serve_stream`] with a `borg serve` started ahead, if there is one that is still running
/// (else a new one is started).
pub async fn serve_stream_with<S>(
    config: &ServeConfig,
    stream: S,
    cancel: CancellationToken,
    prestarted: Option<Prestarted>,
) -> Result<ServeOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = SniffProtocol {
        inner: stream,
        server: config.version.clone(),
        done: false,
    };
    let ready = match prestarted {
        Some(mut p) => {
            match p.child.try_wait() {
                Ok(None) => Some(p.child),
                Ok(Some(status)) => {
                    warn!("borg serve started ahead exited before its connection came ({status}); starting another");
                    None
                }
                Err(e) => {
                    warn!("cannot tell whether the borg serve started ahead runs ({e}); starting another");
                    None
                }
            }
        }
        None => None,
    };
    let mut child = match ready {
        Some(child) => {
            debug!(pid = child.id(), "borg serve started ahead takes the connection");
            child
        }
        None => config.spawn()?,
    };
    let stdout = child.take_stdout().expect("stdout is piped");
    let stdin = ClosingWriter(child.take_stdin());
    let mut serve_side = tokio::io::join(stdout, stdin);

    let relayed = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut serve_side, SERVE_RELAY_BUFFER, SERVE_RELAY_BUFFER) => Some(r),
        () = cancel.cancelled() => None,
    };
    drop(serve_side);
    // Cancelled mid-session: stdin is closed above, so borg serve rolls back and releases the
    // lock by itself; a SIGKILL would leave a stale lock that only `borg break-lock` clears.
    let exit_grace = if relayed.is_some() {
        SERVE_EXIT_GRACE
    } else {
        SERVE_CANCEL_GRACE
    };
    let status = match child.finish(exit_grace, SERVE_CANCEL_GRACE).await {
        Ok(ended) if ended.how == HowEnded::ByItself => {
            log_exit(ended.status);
            Some(ended.status)
        }
        Ok(ended) => {
            warn!(
                "borg serve did not exit by itself; stopped ({:?}, {})",
                ended.how,
                ended.code()
            );
            None
        }
        Err(e) => {
            warn!("cannot wait for borg serve: {e}");
            None
        }
    };
    // Its last lines are logged before the session's end is; the pipe closes with the group.
    child.stderr_tail().await;
    let (to_serve, from_serve) = match relayed {
        Some(Ok(counts)) => counts,
        Some(Err(e)) => return Err(Error::ServeIo(e)),
        None => (0, 0),
    };
    Ok(ServeOutcome {
        to_serve,
        from_serve,
        status,
    })
}

/// Which borg a client is, as its first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientProtocol {
    /// borg's msgpack RPC (borg 1.x, 2.0.0b1-b21): a fixarray (`\x94\x01\x01\xa9negotiate`) or
    /// fixmap, whose `negotiate` call carries the client's version when it fits the first read.
    Rpc(Option<BorgVersion>),
    /// HTTP/1.1 over stdio (`GET /config/config HTTP/1.1`, ...): borg 2.0.0b22 and later.
    Http,
}

/// What an HTTP client is, for messages: its first bytes do not tell the beta.
const HTTP_CLIENT: &str = "borg 2.0.0b22 and later (it speaks HTTP)";

impl ClientProtocol {
    /// Classifies the first bytes of a connection; `None` if they fit neither.
    ///
    /// ```
    /// use borg_pull_core::serve::ClientProtocol;
    /// use borg_pull_core::BorgVersion;
    /// assert_eq!(ClientProtocol::detect(b"\x94\x01\x01\xa9negotiate"), Some(ClientProtocol::Rpc(None)));
    /// assert_eq!(
    ///     ClientProtocol::detect(b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x95\x02\x00\x00\xfd\x05"),
    ///     Some(ClientProtocol::Rpc(BorgVersion::parse("borg 2.0.0b5")))
    /// );
    /// assert_eq!(ClientProtocol::detect(b"GET /config/config HTTP/1.1\r\n"), Some(ClientProtocol::Http));
    /// assert_eq!(ClientProtocol::detect(b"hello"), None);
    /// ```
    pub fn detect(first: &[u8]) -> Option<Self> {
        match first.first()? {
            0x80..=0x9f | 0xdc..=0xdf => Some(Self::Rpc(BorgVersion::from_rpc_negotiate(first))),
            b'A'..=b'Z' => {
                let method_len = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
                (method_len >= 3 && first.get(method_len) == Some(&b' ')).then_some(Self::Http)
            }
            _ => None,
        }
    }

    /// The wire protocol it speaks.
    pub fn wire(&self) -> Wire {
        match self {
            Self::Rpc(_) => Wire::Rpc,
            Self::Http => Wire::Http,
        }
    }

    /// The fix to offer for a client of this protocol.
    fn serve_with(&self) -> String {
        match self {
            Self::Rpc(Some(version)) => format!("or serve with a borg of {} (--borg)", version.generation()),
            Self::Rpc(None) => "or serve with the client's borg version (--borg)".to_owned(),
            Self::Http => {
                "or serve with borg 2.0.0b22 or later, best the client's version (--borg)".to_owned()
            }
        }
    }

    /// Why a server of `server` (its version, if known) cannot serve this client, if it cannot.
    ///
    /// ```
    /// use borg_pull_core::serve::ClientProtocol;
    /// use borg_pull_core::BorgVersion;
    /// let b5 = ClientProtocol::Rpc(BorgVersion::parse("borg 2.0.0b5"));
    /// let why = b5.mismatch(BorgVersion::parse("borg 2.0.0b25").as_ref()).unwrap();
    /// assert!(why.starts_with("the client runs borg 2.0.0b5 (borg 2.0.0b1-b9) but"), "{why}");
    /// assert!(b5.mismatch(BorgVersion::parse("borg2 2.0.0b5").as_ref()).is_none());
    /// ```
    pub fn mismatch(&self, server: Option<&BorgVersion>) -> Option<String> {
        let server_generation = server.map_or(Generation::Borg1, BorgVersion::generation);
        let client = match self {
            Self::Rpc(Some(version)) if version.generation() != server_generation => {
                format!("borg {version} ({})", version.generation())
            }
            Self::Rpc(None) if server_generation.wire() != Wire::Rpc => {
                "borg 1.x or 2.0.0b1-b21 (it speaks borg's RPC)".to_owned()
            }
            Self::Http if server_generation.wire() != Wire::Http => HTTP_CLIENT.to_owned(),
            _ => return None,
        };
        let server_text = server.map_or_else(|| "borg 1.x".to_owned(), |v| format!("borg {v}"));
        let fix = self.serve_with();
        Some(format!(
            "the client runs {client} but this server's borg serve is {server_text} \
             ({server_generation}): they cannot talk (install a borg of {server_generation} on the \
             client, {fix})"
        ))
    }
}

/// The connection, read through: the first bytes tell which borg the client runs. A generation
/// other than the server's ends the session with an error naming both, before those bytes reach
/// borg serve: an RPC client of borg 2's `serve --rest` would otherwise wait for ever, an HTTP
/// client of an RPC serve gets only "Got unexpected RPC data format", and RPC clients of
/// another generation fail on repository calls they do not share. Other bytes pass unchanged.
struct SniffProtocol<S> {
    inner: S,
    server: Option<BorgVersion>,
    done: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for SniffProtocol<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.done && buf.filled().len() > before {
            self.done = true;
            let protocol = ClientProtocol::detect(&buf.filled()[before..]);
            match protocol.as_ref().map(|p| (p, p.mismatch(self.server.as_ref()))) {
                Some((_, Some(why))) => {
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
                }
                Some((p, None)) => debug!(client = ?p, "client protocol"),
                None => debug!("client protocol not recognised"),
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SniffProtocol<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn log_exit(status: ExitStatus) {
    if status.success() {
        debug!("borg serve exited: {status}");
    } else {
        warn!("borg serve exited: {status}");
    }
}

/// A child's stdin whose shutdown really closes the pipe.
///
/// tokio's `ChildStdin::poll_shutdown` only flushes; borg serve exits on EOF, so the relay's
/// half-close must drop the pipe or both sides wait for each other forever.
struct ClosingWriter(Option<ChildStdin>);

impl AsyncWrite for ClosingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.0.as_mut() {
            Some(w) => Pin::new(w).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.as_mut() {
            Some(w) => Pin::new(w).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(w) = self.0.as_mut() {
            std::task::ready!(Pin::new(w).poll_flush(cx))?;
        }
        self.0 = None;
        Poll::Ready(Ok(()))
    }
}

impl ServeConfig {
    /// The argv that creates the repository with this borg: `init -e MODE REPO` (borg 1.x) or
    /// `-r REPO repo-create -e MODE` (borg 2).
    ///
    /// ```
    /// use borg_pull_core::{BorgVersion, ServeConfig};
    /// let mut config = ServeConfig::new("/srv/borg/c1").unwrap();
    /// config.version = BorgVersion::parse("borg 1.4.5");
    /// assert_eq!(config.init_args("repokey-blake2"), ["init", "-e", "repokey-blake2", "/srv/borg/c1"]);
    /// config.version = BorgVersion::parse("borg2 2.0.0b5");
    /// assert_eq!(config.init_args("repokey-aes-ocb"), ["-r", "/srv/borg/c1", "rcreate", "-e", "repokey-aes-ocb"]);
    /// config.version = BorgVersion::parse("borg 2.0.0b25");
    /// assert_eq!(config.init_args("aes256-ocb"), ["-r", "/srv/borg/c1", "repo-create", "-e", "aes256-ocb"]);
    /// ```
    pub fn init_args(&self, encryption: &str) -> Vec<OsString> {
        match self.generation() {
            Generation::Borg1 => vec![
                "init".into(),
                "-e".into(),
                encryption.into(),
                self.repo.clone().into(),
            ],
            // Renamed r* commands to repo-* in 2.0.0b10.
            Generation::Borg2Segments => vec![
                "-r".into(),
                self.repo.clone().into(),
                "rcreate".into(),
                "-e".into(),
                encryption.into(),
            ],
            _ => vec![
                "-r".into(),
                self.repo.clone().into(),
                "repo-create".into(),
                "-e".into(),
                encryption.into(),
            ],
        }
    }

    /// Creates the repository locally unless it already [looks like one](looks_like_repository);
    /// `Ok(true)` if it was created. The client cannot create it through an append-only (borg 1)
    /// or `no-delete` (borg 2) serve.
    ///
    /// borg gets this process's environment (it is the operator's own command, not a serve for a
    /// client), with `BORG_PASSPHRASE` set to `passphrase` if given, else whatever
    /// `BORG_PASSPHRASE`/`BORG_PASSCOMMAND` say. Blocking; its output is kept for the error.
    pub fn create_repository(&self, encryption: &str, passphrase: Option<&str>) -> Result<bool> {
        if looks_like_repository(&self.repo) {
            return Ok(false);
        }
        let mut cmd = std::process::Command::new(&self.borg);
        cmd.args(self.init_args(encryption)).stdin(Stdio::null());
        if let Some(p) = passphrase {
            cmd.env("BORG_PASSPHRASE", p);
        }
        let output = cmd.output().map_err(|source| Error::SpawnBorg {
            program: self.borg.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(Error::InitFailed {
                program: self.borg.clone(),
                repo: self.repo.clone(),
                status: output.status,
                output: crate::text::escape_lines(&[&output.stdout[..], &output.stderr[..]].concat(), 4096),
            });
        }
        Ok(true)
    }
}

/// Whether `repo` looks like a borg repository, for early, clear errors: borg 1.x and 2.0.0b1-b9
/// have a `config` file and a `data/` directory, borgstore's (2.0.0b10 and later) the directories
/// `config/` and `keys/`, which `repo-create` makes (`data/` or `packs/` and `archives/` appear
/// only with the first archive in some betas).
pub fn looks_like_repository(repo: &Path) -> bool {
    let dir = |name: &str| repo.join(name).is_dir();
    (repo.join("config").is_file() && dir("data")) || (dir("config") && dir("keys"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_borg(borg: &str) -> ServeConfig {
        ServeConfig {
            borg: PathBuf::from(borg),
            ..ServeConfig::new("/srv/repo").unwrap()
        }
    }

    #[test]
    fn find_program_on_path_and_by_path() {
        // `sh` is on PATH on every system these tests run on.
        let found = with_borg("sh").find_program().unwrap();
        assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
        assert_eq!(with_borg("/bin/sh").find_program().unwrap(), Path::new("/bin/sh"));
    }

    #[test]
    fn find_program_rejects_missing_and_non_executable() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("borg");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap(); // not executable (mode 0644 or less)
        let plain = plain.to_str().unwrap();
        for bad in ["", "no-such-borg-xyz", "/nonexistent/borg", plain, "/"] {
            let err = with_borg(bad).find_program().unwrap_err();
            assert!(matches!(err, Error::BorgNotFound { .. }), "{bad}: {err}");
            // The flag that sets the program is the binary's to name, not the library's.
            assert!(!err.to_string().contains("--borg"), "{err}");
        }
    }

    #[test]
    fn only_allowlisted_variables_reach_borg_serve() {
        use std::ffi::OsStr;
        for passed in [
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "TZ",
            "BORG_BASE_DIR",
            "BORG_HOST_ID",
        ] {
            assert!(passed_to_serve(OsStr::new(passed)), "{passed}");
        }
        for secret in [
            "BORG_PASSPHRASE",
            "BORG_PASSCOMMAND",
            "BORG_PASSPHRASE_FD",
            "BORG_NEW_PASSPHRASE",
            "BORG_PULL_IDENTITY_PASSPHRASE",
            "SSH_ORIGINAL_COMMAND",
            "BORG_REPO_PERMISSIONS",
            "BORG_RSH",
            "BORG_LOGGING_CONF",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LD_PRELOAD",
            "PYTHONPATH",
            "LC_",
            "path",
            "PATH2",
        ] {
            assert!(!passed_to_serve(OsStr::new(secret)), "{secret}");
        }
    }

    #[tokio::test]
    async fn stderr_with_invalid_utf8_is_read_to_the_end() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("all-written");
        let script = dir.path().join("fake-borg");
        // Invalid UTF-8, then far more than a pipe holds: if we stopped reading, the writes would
        // fail (EPIPE; sh dies of SIGPIPE) and the marker would never appear.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf 'bad \\377\\376\\n' >&2\n\
                 i=0; while [ $i -lt 3000 ]; do echo \"line $i of a long complaint on stderr ......................................\" >&2; i=$((i+1)); done\n\
                 touch '{}'\nexec cat\n",
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = with_borg(script.to_str().unwrap());
        let (mut client, server) = tokio::io::duplex(1024);
        let session =
            tokio::spawn(async move { serve_stream(&config, server, CancellationToken::new()).await });
        let start = std::time::Instant::now();
        while !marker.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "the fake borg's stderr writes failed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        client.write_all(b"still alive").await.unwrap();
        client.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"still alive");
        let outcome = session.await.unwrap().unwrap();
        assert!(outcome.status.is_some_and(|s| s.success()), "{outcome:?}");
    }

    #[test]
    fn storage_quota_follows_borgs_rules() {
        for (quota, bytes) in [
            ("10M", 10_000_000),
            ("10000000", 10_000_000),
            ("0.01G", 10_000_000),
            ("500G", 500_000_000_000),
            ("1.5T", 1_500_000_000_000),
            ("2P", 2_000_000_000_000_000),
            ("10000K", 10_000_000),
        ] {
            assert_eq!(parse_storage_quota(quota).unwrap(), bytes, "{quota}");
        }
        for bad in [
            "",
            "M",
            "9M",
            "9999999",
            "-20G",
            "+20G",
            "1e9",
            "inf",
            "nan",
            " 20G",
            "20 G",
            "20g",
            "20GB",
            "1..5T",
            "1.T",
            ".5T",
            "5Gi",
            "99999999999999999999P",
        ] {
            let err = parse_storage_quota(bad).unwrap_err();
            assert!(matches!(err, Error::StorageQuotaInvalid { .. }), "{bad}: {err}");
        }
        assert!(parse_storage_quota("9M")
            .unwrap_err()
            .to_string()
            .contains("at least 10M"));
    }

    #[tokio::test]
    async fn invalid_storage_quota_never_reaches_borg() {
        let mut config = with_borg("/nonexistent/borg");
        config.storage_quota = Some("1M; rm -rf /".into());
        let (_client, server) = tokio::io::duplex(64);
        let err = serve_stream(&config, server, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::StorageQuotaInvalid { .. }), "{err}");
    }

    #[test]
    fn allow_delete_only_drops_append_only() {
        let mut config = with_borg("borg");
        config.allow_delete = true;
        assert_eq!(
            config.args().unwrap(),
            ["serve", "--restrict-to-repository", "/srv/repo"]
        );
    }

    #[tokio::test]
    async fn a_client_of_the_other_major_version_never_reaches_borg_serve() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let got = dir.path().join("got");
        let script = dir.path().join("fake-borg");
        std::fs::write(&script, format!("#!/bin/sh\nexec cat > '{}'\n", got.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for (server, first, refused) in [
            ("borg 2.0.0b25", &b"\x94\x01\x01\xa9negotiate"[..], true),
            ("borg 1.4.5", &b"GET /config/config HTTP/1.1\r\n"[..], true),
            ("borg 2.0.0b25", &b"GET /config/config HTTP/1.1\r\n"[..], false),
            ("borg 1.2.4", &b"\x94\x01\x01\xa9negotiate"[..], false),
        ] {
            let _ = std::fs::remove_file(&got);
            let mut config = with_borg(script.to_str().unwrap());
            config.version = BorgVersion::parse(server);
            let (mut client, conn) = tokio::io::duplex(1024);
            let session =
                tokio::spawn(async move { serve_stream(&config, conn, CancellationToken::new()).await });
            client.write_all(first).await.unwrap();
            client.shutdown().await.unwrap();
            let result = session.await.unwrap();
            if refused {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains("the client runs borg") && err.contains(server.trim_start_matches("borg ")),
                    "{err}"
                );
                assert!(std::fs::read(&got).unwrap_or_default().is_empty(), "{server}");
            } else {
                result.unwrap();
                assert_eq!(std::fs::read(&got).unwrap(), first, "{server}");
            }
        }
    }

    #[test]
    fn argv_by_version() {
        let v = |s: &str| BorgVersion::parse(s);
        for (version, allow_delete, want) in [
            (None, false, "serve --append-only --restrict-to-repository /srv/repo"),
            (v("borg 1.1.18"), false, "serve --append-only --restrict-to-repository /srv/repo"),
            (v("borg 1.2.4"), false, "serve --append-only --restrict-to-repository /srv/repo"),
            (v("borg 1.4.5"), false, "serve --append-only --restrict-to-repository /srv/repo"),
            (v("borg 1.4.5"), true, "serve --restrict-to-repository /srv/repo"),
            (
                v("borg 2.0.0b25"),
                false,
                "serve --rest --backend FILE:/srv/repo --restrict-to-repository /srv/repo --permissions no-delete",
            ),
            (
                v("borg 2.0.0b25"),
                true,
                "serve --rest --backend FILE:/srv/repo --restrict-to-repository /srv/repo --permissions all",
            ),
            // Debian 12's borgbackup2: `--rest` would be an ambiguous abbreviation there.
            (v("borg2 2.0.0b5"), false, "serve --append-only --restrict-to-repository /srv/repo"),
            (v("borg 2.0.0b9"), true, "serve --restrict-to-repository /srv/repo"),
            (v("borg 2.0.0b16"), true, "serve --restrict-to-repository /srv/repo"),
            (v("borg 2.0.0b17"), false, "serve --restrict-to-repository /srv/repo"),
            (
                v("borg 2.0.0b18"),
                false,
                "serve --restrict-to-repository /srv/repo --permissions no-delete",
            ),
            (
                v("borg 2.0.0b21"),
                true,
                "serve --restrict-to-repository /srv/repo --permissions all",
            ),
            (
                v("borg 2.0.0b22"),
                false,
                "serve --rest --backend FILE:/srv/repo --restrict-to-repository /srv/repo --permissions no-delete",
            ),
            (
                v("borg 2.0.0b24"),
                true,
                "serve --rest --backend FILE:/srv/repo --restrict-to-repository /srv/repo --permissions all",
            ),
        ] {
            let mut config = with_borg("borg");
            config.version = version.clone();
            config.allow_delete = allow_delete;
            let args: Vec<String> = config
                .args()
                .unwrap()
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect();
            assert_eq!(args.join(" "), want, "{version:?} allow_delete={allow_delete}");
        }
    }

    #[test]
    fn betas_that_cannot_refuse_deletes_are_refused_unless_deletes_are_allowed() {
        for version in ["borg 2.0.0b10", "borg 2.0.0b14", "borg 2.0.0b16"] {
            let mut config = with_borg("borg");
            config.version = BorgVersion::parse(version);
            let err = config.args().unwrap_err();
            assert!(
                matches!(err, Error::CannotRefuseDeletes { .. }),
                "{version}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(version) && text.contains("cannot refuse deletes") && text.contains("2.0.0b17"),
                "{text}"
            );
            config.allow_delete = true;
            config.args().unwrap();
        }
    }

    #[test]
    fn only_2_0_0b17_gets_its_permissions_from_the_environment() {
        for (version, allow_delete, want) in [
            ("borg 2.0.0b17", false, Some("no-delete")),
            ("borg 2.0.0b17", true, Some("all")),
            ("borg 2.0.0b18", false, None),
            ("borg 2.0.0b25", false, None),
            ("borg2 2.0.0b5", false, None),
            ("borg 1.4.5", false, None),
        ] {
            let mut config = with_borg("borg");
            config.version = BorgVersion::parse(version);
            config.allow_delete = allow_delete;
            let env = config.extra_env();
            assert_eq!(
                env.iter()
                    .find(|(name, _)| *name == "BORG_REPO_PERMISSIONS")
                    .map(|(_, value)| *value),
                want,
                "{version}"
            );
        }
    }

    #[tokio::test]
    async fn a_client_of_another_generation_is_named_with_its_version() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let got = dir.path().join("got");
        let script = dir.path().join("fake-borg");
        std::fs::write(&script, format!("#!/bin/sh\nexec cat > '{}'\n", got.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // What borg 2.0.0b5 (array) and 2.0.0b17 (map) send first, as captured from them.
        let b5 = &b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x95\x02\x00\x00\xfd\x05"[..];
        let b17 = &b"\x83\xa1i\x01\xa1m\xa9negotiate\xa1a\x81\xabclient_data\x81\xaeclient_version\x95\x02\x00\x00\xfd\x11"[..];
        let v124 = &b"\x94\x01\x01\xa9negotiate\x91\x81\xaeclient_version\x94\x01\x02\x04\xff"[..];
        for (server, first, refused) in [
            (
                "borg 2.0.0b25",
                b5,
                Some("the client runs borg 2.0.0b5 (borg 2.0.0b1-b9)"),
            ),
            (
                "borg 1.2.4",
                b5,
                Some("the client runs borg 2.0.0b5 (borg 2.0.0b1-b9)"),
            ),
            (
                "borg 2.0.0b17",
                b5,
                Some("the client runs borg 2.0.0b5 (borg 2.0.0b1-b9)"),
            ),
            (
                "borg2 2.0.0b5",
                b17,
                Some("the client runs borg 2.0.0b17 (borg 2.0.0b17)"),
            ),
            (
                "borg2 2.0.0b5",
                v124,
                Some("the client runs borg 1.2.4 (borg 1.x)"),
            ),
            ("borg2 2.0.0b5", b5, None),
            ("borg 2.0.0b17", b17, None),
            ("borg 1.4.5", v124, None),
        ] {
            let _ = std::fs::remove_file(&got);
            let mut config = with_borg(script.to_str().unwrap());
            config.version = BorgVersion::parse(server);
            let (mut client, conn) = tokio::io::duplex(1024);
            let session =
                tokio::spawn(async move { serve_stream(&config, conn, CancellationToken::new()).await });
            client.write_all(first).await.unwrap();
            client.shutdown().await.unwrap();
            let result = session.await.unwrap();
            match refused {
                Some(want) => {
                    let err = result.unwrap_err().to_string();
                    let server_version = server.split_once(' ').unwrap().1;
                    assert!(
                        err.contains(want) && err.contains(&format!("borg serve is borg {server_version}")),
                        "{server}: {err}"
                    );
                    assert!(std::fs::read(&got).unwrap_or_default().is_empty(), "{server}");
                }
                None => {
                    result.unwrap();
                    assert_eq!(std::fs::read(&got).unwrap(), first, "{server}");
                }
            }
        }
    }

    #[test]
    fn storage_quota_only_for_borg_1() {
        let mut config = with_borg("borg");
        config.storage_quota = Some("10G".into());
        config.version = BorgVersion::parse("borg 1.4.5");
        assert!(config.args().unwrap().contains(&"--storage-quota".into()));
        config.version = BorgVersion::parse("borg2 2.0.0b5");
        assert!(config.args().unwrap().contains(&"--storage-quota".into()));
        config.version = BorgVersion::parse("borg 2.0.0b25");
        let err = config.args().unwrap_err();
        assert!(matches!(err, Error::UnsupportedByBorg { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("borg 2.0.0b25 serve has no --storage-quota"),
            "{err}"
        );
    }

    #[test]
    fn learn_version_runs_borg_once() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let script = dir.path().join("borg");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
echo x >>'{}'
echo 'borg 2.0.0b25'
",
                count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut config = with_borg(script.to_str().unwrap());
        assert_eq!(config.learn_version().unwrap().major, 2);
        assert_eq!(config.learn_version().unwrap().to_string(), "2.0.0b25");
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n");
        let err = with_borg("/bin/false").learn_version().unwrap_err();
        assert!(matches!(err, Error::BorgVersionUnknown { .. }), "{err}");
        let err = with_borg("/nonexistent/borg").learn_version().unwrap_err();
        assert!(matches!(err, Error::SpawnBorgVersion { .. }), "{err}");
    }

    #[test]
    fn repository_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        assert!(!looks_like_repository(repo));
        std::fs::write(repo.join("config"), "[repository]\n").unwrap();
        assert!(!looks_like_repository(repo));
        std::fs::create_dir(repo.join("data")).unwrap();
        assert!(looks_like_repository(repo), "borg 1.x");
        let repo = &dir.path().join("two");
        std::fs::create_dir_all(repo.join("config")).unwrap();
        assert!(!looks_like_repository(repo));
        std::fs::create_dir(repo.join("keys")).unwrap();
        assert!(looks_like_repository(repo), "borgstore (borg 2.0.0b10 and later)");
    }
}
