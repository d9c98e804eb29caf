//! Connecting to the client's sshd: TCP (directly or through jump hosts), host key verification,
//! public key authentication, and the [`Session`] through which everything else talks to the
//! client.
//!
//! This module knows nothing of borg: channels the client's sshd opens are handed to an
//! [`Incoming`] given at connect time.

pub(crate) mod login;
mod options;

pub use options::{SessionOptions, SshEnv};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, ChannelOpenHandle, Handle, Msg, Session as RusshSession};
use russh::keys::{HashAlg, PublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelStream, Disconnect};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::{debug, warn};

use crate::error::{HostKeyProblem, Peer};
use crate::limits::{
    CHANNEL_BUFFER, CONNECT_TIMEOUT, DISCONNECT_MESSAGE_KEPT, KEEPALIVE_MAX, MAX_PACKET,
    MAX_REFUSED_CHANNEL_OPENS, PEER_FIRST_BYTES_KEPT, REFUSALS_LOGGED, REFUSAL_TEXT_SHOWN, REQUEST_TIMEOUT,
};
use crate::ssh::cipher::CipherChoice;
use crate::ssh::exec::Captured;
use crate::ssh::incoming::{Decision, Incoming, RefuseAll, TcpOrigin};
use crate::ssh::jump::JumpHost;
use crate::ssh::known_hosts::{self, KnownHosts, Verdict};
use crate::ssh::session::login::Login;
use crate::{Error, Result};

/// An authenticated SSH connection to the client.
///
/// The russh handle stays inside: callers get the operations a pull needs, each with a deadline
/// and with errors that name the host. The connections to the jump hosts it goes through live as
/// long as it does.
pub struct Session {
    pub(crate) handle: Handle<ClientHandler>,
    host: String,
    port: u16,
    ended: EndReason,
    /// The jump host connections carrying this one, first hop first.
    hops: Vec<Session>,
    goodbye: Goodbye,
    /// The cipher the key exchange settled on (the SSH name).
    cipher: Negotiated,
}

/// Why our handler ended the connection (host key refused, oversized packet, channel flood):
/// russh itself only reports a generic disconnect.
type EndReason = Arc<Mutex<Option<Error>>>;

/// What the client's sshd said when it ended the connection (SSH_MSG_DISCONNECT), escaped and
/// cut at [`DISCONNECT_MESSAGE_KEPT`] characters: russh turns it into a failed request.
type Goodbye = Arc<Mutex<Option<String>>>;

/// The cipher of the last key exchange, written by the handler's `kex_done`: russh keeps it to
/// itself otherwise.
type Negotiated = Arc<Mutex<Option<&'static str>>>;

impl Session {
    /// Host as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// sshd's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client's sshd, as errors name it.
    pub fn peer(&self) -> crate::error::Peer {
        crate::error::Peer::new(self.host.clone(), self.port)
    }

    /// The cipher negotiated with the client's sshd, e.g. `aes128-gcm@openssh.com`.
    pub fn cipher(&self) -> Option<&'static str> {
        *self.cipher.lock().expect("not poisoned")
    }

    /// Whether the connection has ended (keepalive timeout, reset, disconnect).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// What the client's sshd said when it disconnected, if it did (escaped, shortened).
    pub(crate) fn goodbye(&self) -> Option<String> {
        self.goodbye.lock().expect("not poisoned").clone()
    }

    /// The jump hosts this connection goes through (host, port), first hop first.
    pub fn jump_hosts(&self) -> Vec<(&str, u16)> {
        self.hops.iter().map(|hop| (hop.host(), hop.port())).collect()
    }

    /// Sends a polite disconnect, then to the jump hosts, last hop first; errors are ignored (the
    /// peer may already be gone).
    pub async fn disconnect(&self) {
        say_goodbye(&self.handle).await;
        close_hops(&self.hops).await;
    }

    /// [`Session::disconnect`], waiting at most `limit`: a client that does not take our goodbye
    /// does not hold the end of the job.
    pub async fn disconnect_within(&self, limit: std::time::Duration) {
        if tokio::time::timeout(limit, self.disconnect()).await.is_err() {
            warn!("the client did not take our disconnect in time");
        }
    }

    /// The error for a failed operation: why our handler ended the connection if it did, a lost
    /// connection if it is gone, else the protocol error.
    pub(crate) fn failure(&self, context: &'static str, source: russh::Error) -> Error {
        if let Some(reason) = self.ended.lock().expect("not poisoned").take() {
            return reason;
        }
        if self.is_closed() {
            return Error::ConnectionLost {
                peer: Peer::new(self.host.clone(), self.port),
                context,
            };
        }
        Error::Ssh { context, source }
    }

    /// Runs `request` with the deadline every request to the client gets.
    async fn answer<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = std::result::Result<T, russh::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(russh::Error::RequestDenied)) => Err(Error::RequestDenied {
                peer: Peer::new(self.host.clone(), self.port),
                request: what,
            }),
            Ok(Err(source)) => Err(self.failure(what, source)),
            Err(_) => Err(Error::NoAnswer {
                peer: Peer::new(self.host.clone(), self.port),
                what,
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Opens a session channel and sends `exec command` on it without waiting for the reply (a
    /// refusal arrives on the channel as [`russh::ChannelMsg::Failure`]), saving a round trip.
    pub(crate) async fn exec(&self, command: &[u8]) -> Result<Channel<Msg>> {
        self.exec_with(command, false).await
    }

    /// Like [`Session::exec`], asking sshd first to forward our agent to the command
    /// (`auth-agent-req@openssh.com`, without waiting for its reply either: a refusal shows as
    /// no `SSH_AUTH_SOCK` in the command's environment). The agent channels the sshd then opens
    /// go to the connection's [`Incoming::agent`].
    pub(crate) async fn exec_forwarding_agent(&self, command: &[u8]) -> Result<Channel<Msg>> {
        self.exec_with(command, true).await
    }

    async fn exec_with(&self, command: &[u8], forward_agent: bool) -> Result<Channel<Msg>> {
        let channel = self
            .answer("opening a session channel", self.handle.channel_open_session())
            .await?;
        if forward_agent {
            channel
                .agent_forward(false)
                .await
                .map_err(|source| self.failure("requesting agent forwarding", source))?;
        }
        channel
            .exec(true, command.to_vec())
            .await
            .map_err(|source| self.failure("sending an exec request", source))?;
        Ok(channel)
    }

    /// Opens a session channel and starts the subsystem `name` on it (e.g. `sftp`), waiting for
    /// sshd's answer: sshd keeps a channel whose subsystem it refused open, so without the answer
    /// a refusal would only show as silence. A refusal is [`Error::RequestDenied`].
    pub async fn open_subsystem(&self, name: &'static str) -> Result<ChannelStream<Msg>> {
        let mut channel = self
            .answer("opening a session channel", self.handle.channel_open_session())
            .await?;
        let started = async {
            channel.request_subsystem(true, name).await?;
            // Bounded by `answer`'s deadline; sshd sends nothing else before its answer.
            loop {
                match channel.wait().await {
                    Some(russh::ChannelMsg::Success) => return Ok(()),
                    Some(russh::ChannelMsg::Failure) | None => return Err(russh::Error::RequestDenied),
                    Some(_) => {}
                }
            }
        };
        self.answer(name, started).await?;
        Ok(channel.into_stream())
    }

    /// Runs a short helper `command` and collects a bounded prefix of its output (at most
    /// [`crate::limits::HELPER_OUTPUT_KEPT`] bytes of each stream).
    pub async fn capture(&self, command: &str, timeout: Duration) -> Result<Captured> {
        let run = async {
            let mut channel = self.exec(command.as_bytes()).await?;
            channel
                .eof()
                .await
                .map_err(|source| self.failure("sending EOF", source))?;
            crate::ssh::exec::capture(&mut channel, command).await
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::RemoteHelperTimeout {
                command: command.to_owned(),
                secs: timeout.as_secs(),
            })?
    }

    /// Asks the sshd to listen on the UNIX socket `path` for us
    /// (`streamlocal-forward@openssh.com`); a refusal is [`Error::RequestDenied`].
    pub async fn streamlocal_forward(&self, path: &str) -> Result<()> {
        self.answer(
            "the UNIX socket forward request",
            self.handle.streamlocal_forward(path),
        )
        .await
    }

    /// Stops the UNIX socket forward on `path`.
    pub async fn cancel_streamlocal_forward(&self, path: &str) -> Result<()> {
        self.answer(
            "cancelling the UNIX socket forward",
            self.handle.cancel_streamlocal_forward(path),
        )
        .await
    }

    /// Asks the sshd to listen on TCP `address:port` for us (`tcpip-forward`); returns the port
    /// it listens on (the one it chose when `port` is 0).
    pub async fn tcpip_forward(&self, address: &str, port: u32) -> Result<u32> {
        let chosen = self
            .answer(
                "the TCP forward request",
                self.handle.tcpip_forward(address, port),
            )
            .await?;
        Ok(if port == 0 { chosen } else { port })
    }

    /// Stops the TCP forward on `address:port`.
    pub async fn cancel_tcpip_forward(&self, address: &str, port: u32) -> Result<()> {
        self.answer(
            "cancelling the TCP forward",
            self.handle.cancel_tcpip_forward(address, port),
        )
        .await
    }

    /// Opens a `direct-tcpip` channel: the sshd connects to `host:port` on our behalf.
    pub(crate) async fn direct_tcpip(
        &self,
        host: &str,
        port: u32,
        originator: (&str, u32),
    ) -> Result<Channel<Msg>> {
        self.answer(
            "opening a direct-tcpip channel",
            self.handle
                .channel_open_direct_tcpip(host, port, originator.0, originator.1),
        )
        .await
    }
}

/// The russh client handler: verifies the host key, refuses oversized packets and hands every
/// channel the server opens to an [`Incoming`], cutting off a peer that floods refused opens.
pub(crate) struct ClientHandler {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    incoming: Arc<dyn Incoming>,
    refused: usize,
    ended: EndReason,
    goodbye: Goodbye,
    cipher: Negotiated,
}

impl ClientHandler {
    fn problem(&self, key: Option<&PublicKey>) -> Box<HostKeyProblem> {
        Box::new(HostKeyProblem {
            host_port: known_hosts::lookup_name(&self.host, self.port),
            peer: Peer::new(self.host.clone(), self.port),
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

    /// Records why we end the connection and returns what russh passes on (it loses the type).
    fn end(&self, e: Error) -> Error {
        let text = e.to_string();
        *self.ended.lock().expect("not poisoned") = Some(e);
        Error::HandlerEnded(text)
    }

    async fn decide(
        &mut self,
        kind: &'static str,
        decision: Decision,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
    ) -> Result<()> {
        match decision {
            Decision::Accept(start) => {
                reply.accept().await;
                start(channel);
                Ok(())
            }
            Decision::Refuse(reason, why) => {
                reply.reject(reason).await;
                self.refused += 1;
                if self.refused <= REFUSALS_LOGGED {
                    warn!("refusing a {kind} channel the client's sshd opened: {why}");
                }
                if self.refused > MAX_REFUSED_CHANNEL_OPENS {
                    return Err(self.end(Error::ChannelOpenFlood {
                        peer: Peer::new(self.host.clone(), self.port),
                        count: self.refused,
                    }));
                }
                Ok(())
            }
        }
    }

    fn check_packet(&self, len: usize) -> Result<()> {
        if len > MAX_PACKET as usize {
            return Err(self.end(Error::OversizedPacket {
                peer: Peer::new(self.host.clone(), self.port),
                len,
                max: MAX_PACKET,
            }));
        }
        Ok(())
    }
}

impl client::Handler for ClientHandler {
    type Error = Error;

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                debug!(code = ?info.reason_code, "the client's sshd disconnected: {}", info.message.escape_debug());
                let said: String = info
                    .message
                    .trim()
                    .escape_debug()
                    .take(DISCONNECT_MESSAGE_KEPT)
                    .collect();
                *self.goodbye.lock().expect("not poisoned") = Some(said);
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        let name = russh::cipher::ALL_CIPHERS
            .iter()
            .find(|known| ***known == names.cipher)
            .map(|known| known.as_ref());
        *self.cipher.lock().expect("not poisoned") = name;
        Ok(())
    }

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => match self.verify(key) {
                Ok(()) => Ok(true),
                Err(e) => Err(self.end(e)),
            },
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                let e = Error::HostCertificateUnsupported(self.problem(None));
                Err(self.end(e))
            }
        }
    }

    // Called after russh queued the packet for the channel: at most one oversized packet is ever
    // buffered before the connection ends.
    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.check_packet(data.len())
    }

    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _ext: u32,
        data: &[u8],
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.check_packet(data.len())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        let decision = self.incoming.forwarded_streamlocal(socket_path);
        self.decide("forwarded-streamlocal", decision, channel, reply)
            .await
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        let origin = TcpOrigin {
            connected_address: connected_address.to_owned(),
            connected_port,
            originator_address: originator_address.to_owned(),
            originator_port,
        };
        let decision = self.incoming.forwarded_tcpip(&origin);
        self.decide("forwarded-tcpip", decision, channel, reply).await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        let decision = self.incoming.agent();
        self.decide("auth-agent", decision, channel, reply).await
    }

    async fn server_channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.decide("session", Decision::prohibited(), channel, reply)
            .await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.decide("direct-tcpip", Decision::prohibited(), channel, reply)
            .await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.decide("direct-streamlocal", Decision::prohibited(), channel, reply)
            .await
    }

    async fn server_channel_open_x11(
        &mut self,
        channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut RusshSession,
    ) -> Result<(), Self::Error> {
        self.decide("x11", Decision::prohibited(), channel, reply).await
    }
}

/// The russh client configuration: nodelay, the options' keepalive interval and channel window
/// (see [`crate::limits`]).
pub(crate) fn client_config(options: &SessionOptions) -> client::Config {
    client::Config {
        preferred: russh::Preferred {
            cipher: options.cipher.preferred(),
            ..Default::default()
        },
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
fn prefer_recorded_host_key_types(
    config: &mut client::Config,
    known_hosts: &Path,
    target: &Target<'_>,
) -> Result<()> {
    let recorded = KnownHosts::read(known_hosts)?.recorded_algorithms(target.host, target.port);
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

/// One host to reach and log in to: a jump host or the client.
struct Target<'a> {
    host: &'a str,
    port: u16,
    user: &'a str,
}

/// Connects (through the jump hosts, if any), verifies each host key against `known_hosts` and
/// logs in to each host with the same keys (see [`SessionOptions::identity`]).
///
/// Channels the client's sshd opens are handed to `incoming`; jump hosts get none (every channel
/// they open is refused). A failure at a jump host names it: host key failures are the host key
/// errors for its `host:port`, anything else is [`Error::JumpHost`] or [`Error::JumpConnect`].
pub async fn connect(options: &SessionOptions, incoming: Arc<dyn Incoming>) -> Result<Session> {
    if options.known_hosts.as_os_str().is_empty() {
        return Err(Error::NoKnownHostsFile);
    }
    let mut login = Login::new(options)?;
    login.prepare().await?;
    let mut hops: Vec<Session> = Vec::with_capacity(options.jump.len());
    let mut via = None;
    for (i, jump) in options.jump.iter().enumerate() {
        let target = Target {
            host: &jump.host,
            port: jump.port,
            user: jump.user.as_deref().unwrap_or(&options.user),
        };
        let next = match options.jump.get(i + 1) {
            Some(next) => (next.host.as_str(), next.port),
            None => (options.host.as_str(), options.port),
        };
        let hop = async {
            let hop = reach(options, &target, via.take(), Arc::new(RefuseAll), &mut login).await?;
            let channel = open_tunnel(&hop, next).await?;
            Ok::<_, Error>((hop, channel))
        };
        match hop.await {
            Ok((hop, channel)) => {
                debug!(jump_host = %jump, next = %next.0, next_port = next.1, "tunnel through the jump host open");
                via = Some(channel.into_stream());
                hops.push(hop);
            }
            Err(e) => {
                close_hops(&hops).await;
                return Err(at_jump_host(e, jump));
            }
        }
    }
    let target = Target {
        host: &options.host,
        port: options.port,
        user: &options.user,
    };
    match reach(options, &target, via, incoming, &mut login).await {
        Ok(mut session) => {
            session.hops = hops;
            Ok(session)
        }
        Err(e) => {
            close_hops(&hops).await;
            Err(e)
        }
    }
}

/// TCP (or the tunnel `via` a jump host), handshake with host key check, login.
async fn reach(
    options: &SessionOptions,
    target: &Target<'_>,
    via: Option<ChannelStream<Msg>>,
    incoming: Arc<dyn Incoming>,
    login: &mut Login<'_>,
) -> Result<Session> {
    let ended: EndReason = Arc::default();
    let goodbye: Goodbye = Arc::default();
    let negotiated: Negotiated = Arc::default();
    let handler = ClientHandler {
        host: target.host.to_owned(),
        port: target.port,
        known_hosts: options.known_hosts.clone(),
        accept_new: options.accept_new_host_key,
        incoming,
        refused: 0,
        ended: ended.clone(),
        goodbye: goodbye.clone(),
        cipher: negotiated.clone(),
    };
    let mut config = client_config(options);
    prefer_recorded_host_key_types(&mut config, &options.known_hosts, target)?;
    let handle = handshake(target, Arc::new(config), via, handler, &ended, &goodbye)
        .await
        .map_err(|e| cipher_refused(e, options.cipher, target))?;
    let mut session = Session {
        handle,
        host: target.host.to_owned(),
        port: target.port,
        ended,
        hops: Vec::new(),
        goodbye,
        cipher: negotiated,
    };
    debug!(host = %target.host, port = target.port, cipher = %session.cipher().unwrap_or("?"), "negotiated cipher");
    login.authenticate(&mut session, target.user).await?;
    debug!(host = %target.host, port = target.port, user = %target.user, "authenticated");
    Ok(session)
}

/// `e`, from a handshake, as [`Error::CipherNotOffered`] when the sshd offers none of the ciphers
/// we do (one forced with `--cipher`, or none of the whole list): russh's own message lists both
/// sides but not the fix.
fn cipher_refused(e: Error, choice: CipherChoice, target: &Target<'_>) -> Error {
    match e {
        Error::Ssh {
            source:
                russh::Error::NoCommonAlgo {
                    kind: russh::AlgorithmKind::Cipher,
                    ours,
                    theirs,
                },
            ..
        } => Error::CipherNotOffered {
            peer: Peer::new(target.host, target.port),
            choice: choice.into(),
            ours: ours.join(","),
            theirs: theirs
                .join(",")
                .escape_debug()
                .take(crate::limits::CIPHER_LIST_SHOWN)
                .collect(),
        },
        e => e,
    }
}

/// The byte stream to the target's sshd: a new TCP connection, or the tunnel through the last jump
/// host.
async fn transport(
    target: &Target<'_>,
    via: Option<ChannelStream<Msg>>,
) -> Result<Either<TcpStream, ChannelStream<Msg>>> {
    if let Some(tunnel) = via {
        return Ok(Either::Right(tunnel));
    }
    let tcp = TcpStream::connect((target.host, target.port))
        .await
        .map_err(|source| Error::Connect {
            peer: Peer::new(target.host, target.port),
            source,
        })?;
    if let Err(e) = tcp.set_nodelay(true) {
        warn!("cannot set TCP_NODELAY: {e}");
    }
    Ok(Either::Left(tcp))
}

/// Transport and SSH handshake (host key verified by the handler), within [`CONNECT_TIMEOUT`].
async fn handshake(
    target: &Target<'_>,
    config: Arc<client::Config>,
    via: Option<ChannelStream<Msg>>,
    handler: ClientHandler,
    ended: &EndReason,
    goodbye: &Goodbye,
) -> Result<Handle<ClientHandler>> {
    let heard = Heard::default();
    let connecting = async {
        let stream = transport(target, via).await?;
        client::connect_stream(config, Watched::new(stream, heard.clone()), handler).await
    };
    let handle = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(Error::ConnectTimeout {
                peer: Peer::new(target.host, target.port),
                secs: CONNECT_TIMEOUT.as_secs(),
            })
        }
        Ok(Err(e)) => {
            if let Some(reason) = ended.lock().expect("not poisoned").take() {
                return Err(reason);
            }
            return Err(closed_before_kex(e, target, &heard, goodbye));
        }
        Ok(Ok(handle)) => handle,
    };
    if let Some(e) = ended.lock().expect("not poisoned").take() {
        return Err(e);
    }
    Ok(handle)
}

/// `e`, from a handshake that failed before key exchange finished, named
/// [`Error::ClosedBeforeKex`] when the peer simply closed the connection (what a penalised source
/// or one past MaxStartups sees); other failures (no common algorithm, a broken banner, a
/// disconnect message, which a penalty never sends) stay what they are.
fn closed_before_kex(e: Error, target: &Target<'_>, heard: &Heard, goodbye: &Goodbye) -> Error {
    use std::io::ErrorKind;
    if let Some(said) = goodbye.lock().expect("not poisoned").as_deref() {
        debug!(host = %target.host, port = target.port, "disconnected during key exchange: {said}");
        return e;
    }
    let closed = match &e {
        Error::Ssh { source, .. } => match source {
            russh::Error::Disconnect => true,
            russh::Error::IO(io) => matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ),
            _ => false,
        },
        _ => false,
    };
    if !closed {
        return e;
    }
    debug!(host = %target.host, port = target.port, "closed before key exchange: {e}");
    Error::ClosedBeforeKex {
        peer: Peer::new(target.host, target.port),
        stage: heard.stage(),
    }
}

/// The first bytes the peer sent (at most [`PEER_FIRST_BYTES_KEPT`]), to tell how far a refused
/// connection got.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<u8>>>);

impl Heard {
    fn record(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().expect("not poisoned");
        let room = PEER_FIRST_BYTES_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    fn is_full(&self) -> bool {
        self.0.lock().expect("not poisoned").len() >= PEER_FIRST_BYTES_KEPT
    }

    fn stage(&self) -> crate::error::KexStage {
        use crate::error::KexStage;
        let kept = self.0.lock().expect("not poisoned");
        if kept.is_empty() {
            return KexStage::NoBanner;
        }
        let lines = || kept.split(|&b| b == b'\n');
        if lines().any(|line| line.starts_with(b"SSH-")) {
            return KexStage::AfterBanner;
        }
        // The peer's own words, escaped (it is untrusted) and short.
        let first = lines().next().unwrap_or_default();
        let text: String = String::from_utf8_lossy(first)
            .trim_end()
            .escape_debug()
            .take(REFUSAL_TEXT_SHOWN)
            .collect();
        KexStage::Refused(text)
    }
}

/// The transport with what the peer first sent recorded in [`Heard`] (bounded; after the first
/// [`PEER_FIRST_BYTES_KEPT`] bytes nothing more is copied).
struct Watched<S> {
    inner: S,
    heard: Heard,
    full: bool,
}

impl<S> Watched<S> {
    fn new(inner: S, heard: Heard) -> Self {
        Self {
            inner,
            heard,
            full: false,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.full && buf.filled().len() > before {
            self.heard.record(&buf.filled()[before..]);
            self.full = self.heard.is_full();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Asks the jump host `hop` for a `direct-tcpip` channel to `next`, the next hop's sshd.
async fn open_tunnel(hop: &Session, (host, port): (&str, u16)) -> Result<Channel<Msg>> {
    let refused = |reason: String| Error::JumpConnect {
        peer: hop.peer(),
        target: Peer::new(host, port),
        reason,
    };
    match hop.direct_tcpip(host, u32::from(port), ("127.0.0.1", 0)).await {
        Err(Error::Ssh {
            source: russh::Error::ChannelOpenFailure(failure),
            ..
        }) => Err(refused(match failure {
            ChannelOpenFailure::ConnectFailed => "connection failed".into(),
            ChannelOpenFailure::AdministrativelyProhibited => "administratively prohibited".into(),
            other => format!("{other:?}"),
        })),
        Err(Error::RequestDenied { .. }) => Err(refused("request denied".into())),
        other => other,
    }
}

/// `e`, from the jump host `jump`, said to be from there unless it already names it (host key
/// and known_hosts failures, [`Error::JumpConnect`]) or is about our own key files.
fn at_jump_host(e: Error, jump: &JumpHost) -> Error {
    match e {
        Error::Connect { .. }
        | Error::ConnectTimeout { .. }
        | Error::AuthFailed { .. }
        | Error::AuthCutOff { .. }
        | Error::NoAnswer { .. }
        | Error::ConnectionLost { .. }
        | Error::Ssh { .. }
        | Error::RequestDenied { .. }
        | Error::OversizedPacket { .. }
        | Error::ChannelOpenFlood { .. }
        | Error::ClosedBeforeKex { .. } => Error::JumpHost {
            peer: Peer::new(jump.host.clone(), jump.port),
            source: Box::new(e),
        },
        e => e,
    }
}

async fn say_goodbye(handle: &Handle<ClientHandler>) {
    let bye = handle.disconnect(Disconnect::ByApplication, "", "en");
    match tokio::time::timeout(REQUEST_TIMEOUT, bye).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("disconnect: {e}"),
        Err(_) => debug!("disconnect: no answer"),
    }
}

/// Disconnects from the jump hosts, last hop first.
async fn close_hops(hops: &[Session]) {
    for hop in hops.iter().rev() {
        say_goodbye(&hop.handle).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> ClientHandler {
        ClientHandler {
            host: "client".into(),
            port: 22,
            known_hosts: PathBuf::from("/nonexistent"),
            accept_new: false,
            incoming: Arc::new(crate::ssh::incoming::RefuseAll),
            refused: 0,
            ended: Arc::default(),
            goodbye: Arc::default(),
            cipher: Arc::default(),
        }
    }

    #[test]
    fn jump_host_failures_name_the_hop_but_host_key_failures_stay_what_they_are() {
        let hop = JumpHost::parse("ops@bastion:2222").unwrap();
        let refused = Error::Connect {
            peer: crate::error::Peer::new("bastion", 2222),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let wrapped = at_jump_host(refused, &hop);
        assert!(
            matches!(&wrapped, Error::JumpHost { peer, source } if *peer == Peer::new("bastion", 2222) && matches!(**source, Error::Connect { .. })),
            "{wrapped:?}"
        );
        assert!(
            borg_pull_core::error::Chain(&wrapped)
                .to_string()
                .starts_with("jump host bastion port 2222: cannot connect"),
            "{wrapped}"
        );
        let unknown = at_jump_host(Error::UnknownHostKey(handler().problem(None)), &hop);
        assert!(unknown.is_host_key(), "{unknown:?}");
        let no_key = at_jump_host(
            Error::NoIdentity {
                tried: vec![],
                agent: None,
            },
            &hop,
        );
        assert!(matches!(no_key, Error::NoIdentity { .. }), "{no_key:?}");
    }

    // The peer's first bytes are untrusted: kept bounded, shown escaped and short.
    #[test]
    fn what_a_refusing_peer_said_is_bounded_and_escaped() {
        use crate::error::KexStage;
        assert_eq!(Heard::default().stage(), KexStage::NoBanner);
        let heard = Heard::default();
        heard.record(b"Not allowed at this time\r\n");
        assert_eq!(
            heard.stage(),
            KexStage::Refused("Not allowed at this time".into())
        );
        let heard = Heard::default();
        heard.record(b"hello\n\x1b[31mSSH-2.0-x\r\n");
        assert_eq!(heard.stage(), KexStage::Refused("hello".into()));
        let heard = Heard::default();
        heard.record(b"\x1b]0;pwned\x07");
        heard.record(&[b'x'; 4096]);
        assert!(heard.is_full());
        assert_eq!(heard.0.lock().unwrap().len(), PEER_FIRST_BYTES_KEPT);
        let KexStage::Refused(said) = heard.stage() else {
            panic!("{:?}", heard.stage())
        };
        assert!(
            said.starts_with("\\u{1b}]0;pwned\\u{7}xxx") && said.chars().count() == 80,
            "{said}"
        );
        let heard = Heard::default();
        heard.record(b"debug line\r\nSSH-2.0-OpenSSH_9.9\r\n");
        assert_eq!(heard.stage(), KexStage::AfterBanner);
    }

    // russh's own server never sends channel data above our maximum packet, so no peer in the
    // tests can; the check itself is tested here.
    #[test]
    fn a_data_packet_above_max_packet_ends_the_connection_and_says_why() {
        let h = handler();
        assert!(h.check_packet(MAX_PACKET as usize).is_ok());
        assert!(h.ended.lock().unwrap().is_none());
        assert!(h.check_packet(MAX_PACKET as usize + 1).is_err());
        let reason = h.ended.lock().unwrap().take();
        assert!(
            matches!(reason, Some(Error::OversizedPacket { len, max: MAX_PACKET, .. }) if len == MAX_PACKET as usize + 1),
            "{reason:?}"
        );
    }
}
