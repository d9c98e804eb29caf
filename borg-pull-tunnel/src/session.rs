//! Connecting to the client's sshd: TCP, host key verification, public key authentication.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::client::{self, ChannelOpenHandle, Handle, Msg, Session as RusshSession};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyBase64};
use russh::{Channel, ChannelOpenFailure, Disconnect};
use tracing::{debug, warn};

use crate::error::HostKeyProblem;
use crate::forward::Forwarder;
use crate::known_hosts::{self, KnownHosts, Verdict};
use crate::limits::{CHANNEL_BUFFER, CONNECT_TIMEOUT, KEEPALIVE_MAX, MAX_PACKET};
use crate::{Error, Result};

/// Where and how to log in.
#[derive(Clone)]
pub struct SessionOptions {
    /// Host name or address of the client.
    pub host: String,
    /// sshd's TCP port (22).
    pub port: u16,
    /// Login user on the client.
    pub user: String,
    /// Private key file; `None` tries `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub identity: Option<PathBuf>,
    /// Passphrase of an encrypted identity.
    pub identity_passphrase: Option<String>,
    /// The known_hosts file to verify (and, with `accept_new_host_key`, record) host keys.
    pub known_hosts: PathBuf,
    /// Record the key of a host not yet in `known_hosts` (OpenSSH's `accept-new`); a changed or
    /// revoked key is refused regardless.
    pub accept_new_host_key: bool,
    /// Send a keepalive after this long without hearing from the client; after
    /// [`KEEPALIVE_MAX`] unanswered ones the connection counts as lost (like OpenSSH's
    /// `ServerAliveInterval`). [`crate::limits::KEEPALIVE_INTERVAL`] by default.
    pub keepalive_interval: std::time::Duration,
    /// SSH channel window in bytes ([`crate::limits::CHANNEL_WINDOW`] unless measured otherwise).
    pub channel_window: u32,
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("identity", &self.identity)
            .field(
                "identity_passphrase",
                &self.identity_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("known_hosts", &self.known_hosts)
            .field("accept_new_host_key", &self.accept_new_host_key)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("channel_window", &self.channel_window)
            .finish()
    }
}

/// An authenticated SSH connection to the client.
pub struct Session {
    /// russh's handle: open channels, request forwards, disconnect.
    pub handle: Handle<ClientHandler>,
    /// Host as given.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Session {
    /// Whether the connection has ended (keepalive timeout, reset, disconnect).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Sends a polite disconnect; errors are ignored (the peer may already be gone).
    pub async fn disconnect(&self) {
        if let Err(e) = self.handle.disconnect(Disconnect::ByApplication, "", "en").await {
            debug!("disconnect: {e}");
        }
    }
}

/// The russh client handler: verifies the host key, bridges forwarded UNIX socket channels to
/// `borg serve` (through a [`Forwarder`]) and refuses every channel we did not ask for.
pub struct ClientHandler {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    forwarder: Option<Arc<Forwarder>>,
    /// The host key verification error, kept because russh may report a generic disconnect.
    host_key_error: Arc<Mutex<Option<Error>>>,
}

impl ClientHandler {
    fn problem(&self, key: Option<&PublicKey>) -> Box<HostKeyProblem> {
        Box::new(HostKeyProblem {
            host_port: known_hosts::lookup_name(&self.host, self.port),
            host: self.host.clone(),
            port: self.port,
            key_type: key.map(|k| k.algorithm().to_string()).unwrap_or_default(),
            fingerprint: key
                .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
                .unwrap_or_default(),
            known_hosts: self.known_hosts.clone(),
            line: 0,
            known_types: String::new(),
        })
    }

    fn verify(&self, key: &PublicKey) -> Result<()> {
        let kh = KnownHosts::read(&self.known_hosts)?;
        let mut problem = self.problem(Some(key));
        match kh.check(&self.host, self.port, key) {
            Verdict::Known { line } => {
                debug!(host_port = %problem.host_port, line, "host key known");
                Ok(())
            }
            Verdict::Unknown if self.accept_new => {
                known_hosts::append(&self.known_hosts, &self.host, self.port, key)?;
                warn!(
                    "permanently added '{}' ({} {}) to {}",
                    problem.host_port,
                    problem.key_type,
                    problem.fingerprint,
                    self.known_hosts.display()
                );
                Ok(())
            }
            Verdict::Unknown => Err(Error::UnknownHostKey(problem)),
            Verdict::Changed { line } => {
                problem.line = line;
                Err(Error::HostKeyChanged(problem))
            }
            Verdict::OtherTypes { types } => {
                problem.known_types = types.join(", ");
                Err(Error::HostKeyTypeUnknown(problem))
            }
            Verdict::Revoked { line } => {
                problem.line = line;
                Err(Error::HostKeyRevoked(problem))
            }
        }
    }

    fn fail(&self, e: Error) -> Error {
        let text = e.to_string();
        *self.host_key_error.lock().expect("not poisoned") = Some(e);
        Error::InvalidOption(text)
    }
}

async fn refuse(what: &str, reply: ChannelOpenHandle) {
    warn!("the client's sshd opened a {what} channel we did not ask for; refused");
    reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
}

impl client::Handler for ClientHandler {
    type Error = Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => match self.verify(key) {
                Ok(()) => Ok(true),
                Err(e) => Err(self.fail(e)),
            },
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                let e = Error::HostCertificateUnsupported(self.problem(None));
                Err(self.fail(e))
            }
        }
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        match &self.forwarder {
            Some(forwarder) => forwarder.accept(channel, socket_path, reply).await,
            None => refuse("forwarded-streamlocal", reply).await,
        }
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("forwarded-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("auth-agent", reply).await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("session", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("direct-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("direct-streamlocal", reply).await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        refuse("x11", reply).await;
        Ok(())
    }
}

/// The russh client configuration: nodelay, the options' keepalive interval and channel window
/// (see [`crate::limits`]).
pub fn client_config(options: &SessionOptions) -> client::Config {
    client::Config {
        window_size: options.channel_window,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_BUFFER,
        keepalive_interval: Some(
            options
                .keepalive_interval
                .max(std::time::Duration::from_millis(100)),
        ),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    }
}

/// Moves the host key algorithms known_hosts records for this host to the front of what we offer,
/// so the server proves itself with a key we can check (OpenSSH does the same).
fn prefer_recorded_host_key_types(config: &mut client::Config, options: &SessionOptions) -> Result<()> {
    let recorded = KnownHosts::read(&options.known_hosts)?.recorded_algorithms(&options.host, options.port);
    if recorded.is_empty() {
        return Ok(());
    }
    let same_family = |a: &russh::keys::Algorithm, r: &russh::keys::Algorithm| {
        a == r || (a.clone().is_rsa() && r.clone().is_rsa())
    };
    let mut keys = config.preferred.key.to_vec();
    // Stable sort: recorded types first, each group keeping russh's order.
    keys.sort_by_key(|a| !recorded.iter().any(|r| same_family(a, r)));
    config.preferred.key = std::borrow::Cow::Owned(keys);
    Ok(())
}

/// Loads the identity (or the first existing default one).
fn load_identity(options: &SessionOptions) -> Result<(PathBuf, russh::keys::PrivateKey)> {
    let path = match &options.identity {
        Some(p) => p.clone(),
        None => default_identity().ok_or(Error::NoIdentity)?,
    };
    let key = crate::identity::load(&path, options.identity_passphrase.as_deref())?;
    Ok((path, key))
}

fn default_identity() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home.join(".ssh").join(name))
        .find(|p| p.is_file())
}

/// Connects, verifies the host key against `known_hosts` and authenticates with the identity.
///
/// Forwarded UNIX socket channels are handed to `forwarder` (if any); every other channel the
/// server tries to open is refused.
pub async fn connect(options: &SessionOptions, forwarder: Option<Arc<Forwarder>>) -> Result<Session> {
    let (identity_path, key) = load_identity(options)?;
    let host_key_error = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        host: options.host.clone(),
        port: options.port,
        known_hosts: options.known_hosts.clone(),
        accept_new: options.accept_new_host_key,
        forwarder,
        host_key_error: host_key_error.clone(),
    };
    if options.known_hosts.as_os_str().is_empty() {
        return Err(Error::InvalidOption(
            "HOME is not set: pass --known-hosts FILE".into(),
        ));
    }
    let mut config = client_config(options);
    prefer_recorded_host_key_types(&mut config, options)?;
    let config = Arc::new(config);
    let addr = (options.host.as_str(), options.port);
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect {
                host: options.host.clone(),
                port: options.port,
                source,
            })?;
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY: {e}");
        }
        client::connect_stream(config, tcp, handler).await
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
    let mut handle = match connected {
        Err(_) => {
            return Err(Error::ConnectTimeout {
                host: options.host.clone(),
                port: options.port,
                secs: CONNECT_TIMEOUT.as_secs(),
            })
        }
        Ok(Err(e)) => {
            return Err(host_key_error.lock().expect("not poisoned").take().unwrap_or(e));
        }
        Ok(Ok(handle)) => handle,
    };
    if let Some(e) = host_key_error.lock().expect("not poisoned").take() {
        return Err(e);
    }
    authenticate(&mut handle, options, &identity_path, key).await?;
    debug!(host = %options.host, port = options.port, user = %options.user, "authenticated");
    Ok(Session {
        handle,
        host: options.host.clone(),
        port: options.port,
    })
}

async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    options: &SessionOptions,
    identity: &Path,
    key: russh::keys::PrivateKey,
) -> Result<()> {
    let ssh = |context| move |source| Error::Ssh { context, source };
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(ssh("negotiating the RSA signature hash"))?
            // `None`: the server did not say (no ext-info); rsa-sha2-512 is what OpenSSH prefers.
            .unwrap_or(Some(HashAlg::Sha512))
    } else {
        None
    };
    debug!(identity = %identity.display(), key = %key.public_key().public_key_base64(), "authenticating");
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
    let result = handle
        .authenticate_publickey(options.user.clone(), key)
        .await
        .map_err(ssh("public key authentication"))?;
    if result.success() {
        Ok(())
    } else {
        Err(Error::AuthFailed {
            user: options.user.clone(),
            host: options.host.clone(),
            port: options.port,
            identity: identity.to_owned(),
        })
    }
}
