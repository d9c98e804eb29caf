//! An in-process ssh-agent that holds exactly one key, so that a program on the client can log in
//! somewhere with a key that never leaves this server (no `ssh-agent` process anywhere).
//!
//! The server logs in to the client with agent forwarding; whenever the client's `ssh`
//! authenticates, the client's sshd opens an `auth-agent@openssh.com` channel back to us and the
//! agent channel's forward (above `ssh/`) hands it to [`KeyAgent::serve`]. The protocol is
//! draft-miller-ssh-agent: `u32` length, type byte, body.
//!
//! What it answers:
//! - `REQUEST_IDENTITIES` (11): our one key, comment `borg-pull`.
//! - `SIGN_REQUEST` (13) for our key blob: the signature (ed25519, ECDSA, RSA with
//!   `rsa-sha2-256`/`rsa-sha2-512`; SHA-1 `ssh-rsa` is refused). Every signature is logged at info
//!   with the key's fingerprint.
//! - Everything else (sign for another key, add, remove, lock, unlock, smartcard, extensions such
//!   as OpenSSH's `session-bind@openssh.com`, unknown types): `FAILURE`, counted in
//!   [`AgentStats::refused`], the first [`REFUSALS_LOGGED`] logged at warn.
//!
//! A frame longer than [`MAX_AGENT_FRAME`] ends the connection before anything is allocated for
//! it; so does a connection that sends no complete frame for [`AGENT_IDLE_TIMEOUT`].
//!
//! Why not russh's own `russh::keys::agent::server::serve`: its key store only fills through the
//! protocol (add-identity), so the key would have to be added by a client of our own socket; it
//! serves add, remove, lock and unlock to whoever can reach it (the client's side could remove or
//! lock our key, or add its own); it spawns one task per connection that nothing owns or stops;
//! and it accepts frames of up to 256 KiB with no idle deadline. This one holds a fixed key, serves
//! one connection in the caller's task and refuses every change.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use borg_pull_core::text::escape_truncated;
use russh::keys::signature::Signer;
use russh::keys::ssh_encoding::Encode;
use russh::keys::ssh_key::private::KeypairData;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::limits::{AGENT_IDLE_TIMEOUT, MAX_AGENT_FRAME, REFUSALS_LOGGED};
use crate::ssh::wire::{put_string, Reader};
use crate::{Error, Result};

/// `SSH_AGENT_FAILURE`.
const FAILURE: u8 = 5;
/// `SSH_AGENTC_REQUEST_IDENTITIES`.
const REQUEST_IDENTITIES: u8 = 11;
/// `SSH_AGENT_IDENTITIES_ANSWER`.
const IDENTITIES_ANSWER: u8 = 12;
/// `SSH_AGENTC_SIGN_REQUEST`.
const SIGN_REQUEST: u8 = 13;
/// `SSH_AGENT_SIGN_RESPONSE`.
const SIGN_RESPONSE: u8 = 14;
/// `SSH_AGENTC_EXTENSION`.
const EXTENSION: u8 = 27;
/// The extension OpenSSH's ssh sends before each use of a forwarded agent.
const SESSION_BIND: &str = "session-bind@openssh.com";
/// Sign-request flag: RSA signature with SHA-256 (`rsa-sha2-256`).
const RSA_SHA2_256: u32 = 2;
/// Sign-request flag: RSA signature with SHA-512 (`rsa-sha2-512`).
const RSA_SHA2_512: u32 = 4;

/// The comment our one identity is listed with.
pub const COMMENT: &str = "borg-pull";

/// Totals over every connection an agent served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Signatures made.
    pub signatures: u64,
    /// Requests answered with `FAILURE` (anything but listing our key and signing with it).
    pub refused: u64,
}

/// An ssh-agent with exactly one key that can never be added to, removed or locked.
pub struct KeyAgent {
    key: PrivateKey,
    /// The public key blob (what identities answers carry and sign requests name).
    blob: Vec<u8>,
    fingerprint: String,
    signatures: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for KeyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgent")
            .field("fingerprint", &self.fingerprint)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KeyAgent {
    /// An agent holding `key`.
    pub fn new(key: PrivateKey) -> Arc<Self> {
        let public = key.public_key();
        let blob = public
            .key_data()
            .encode_vec()
            .expect("encoding a public key into a Vec cannot fail");
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        Arc::new(Self {
            key,
            blob,
            fingerprint,
            signatures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// An agent holding the key in the OpenSSH private key file `path` (decrypted with
    /// `passphrase` if it is encrypted), loaded as [`crate::ssh::identity::load`] does: only this file,
    /// no default keys.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Arc<Self>> {
        Ok(Self::new(crate::ssh::identity::load(path, passphrase)?))
    }

    /// The public half of our key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The totals so far, over every connection.
    pub fn stats(&self) -> AgentStats {
        AgentStats {
            signatures: self.signatures.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Serves one agent connection until the peer closes it (`Ok`), sends a frame longer than
    /// [`MAX_AGENT_FRAME`] ([`Error::AgentFrameTooLarge`]), sends no complete frame for
    /// [`AGENT_IDLE_TIMEOUT`] ([`Error::AgentIdle`]) or the stream fails ([`Error::Io`]).
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Result<()> {
        self.serve_with_idle(stream, AGENT_IDLE_TIMEOUT).await
    }

    async fn serve_with_idle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        idle: Duration,
    ) -> Result<()> {
        let mut frame = Vec::new();
        let mut reply = Vec::new();
        loop {
            match tokio::time::timeout(idle, read_frame(&mut stream, &mut frame)).await {
                Err(_) => return Err(Error::AgentIdle { secs: idle.as_secs() }),
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
            }
            reply.clear();
            reply.extend_from_slice(&[0; 4]);
            self.answer(&frame, &mut reply);
            let len = u32::try_from(reply.len() - 4).expect("replies are small");
            reply[..4].copy_from_slice(&len.to_be_bytes());
            let written = async {
                stream.write_all(&reply).await?;
                stream.flush().await
            };
            written.await.map_err(|source| Error::Io {
                context: "writing to an agent connection".into(),
                source,
            })?;
        }
    }

    /// Appends the answer to `frame` (type byte and body) to `reply`.
    fn answer(&self, frame: &[u8], reply: &mut Vec<u8>) {
        let Some((&kind, body)) = frame.split_first() else {
            return self.refuse(reply, "an empty message".into());
        };
        match kind {
            REQUEST_IDENTITIES => {
                reply.push(IDENTITIES_ANSWER);
                reply.extend_from_slice(&1u32.to_be_bytes());
                put_string(reply, &self.blob);
                put_string(reply, COMMENT.as_bytes());
            }
            SIGN_REQUEST => self.sign(body, reply),
            // OpenSSH 8.9+ binds every agent use to its session; without the extension it still
            // signs (ssh ignores the failure), so this is routine, not worth a warning.
            EXTENSION if Reader(body).string() == Some(SESSION_BIND.as_bytes()) => {
                reply.push(FAILURE);
                debug!("agent: session-bind@openssh.com not supported (ssh goes on without it)");
            }
            EXTENSION => {
                let name = Reader(body)
                    .string()
                    .map_or_else(|| "(malformed)".into(), |n| escape_truncated(n, 64));
                self.refuse(reply, format!("extension {name}"));
            }
            other => self.refuse(reply, request_name(other)),
        }
    }

    fn sign(&self, body: &[u8], reply: &mut Vec<u8>) {
        let mut r = Reader(body);
        let (Some(blob), Some(data), Some(flags)) = (r.string(), r.string(), r.u32()) else {
            return self.refuse(reply, "a malformed sign request".into());
        };
        if blob != self.blob.as_slice() {
            return self.refuse(reply, "a signature with a key we do not hold".into());
        }
        let signed = match self.key.key_data() {
            KeypairData::Rsa(rsa) => {
                let hash = if flags & RSA_SHA2_256 != 0 {
                    HashAlg::Sha256
                } else if flags & RSA_SHA2_512 != 0 {
                    HashAlg::Sha512
                } else {
                    return self.refuse(
                        reply,
                        "an ssh-rsa (SHA-1) signature; only rsa-sha2-256 and rsa-sha2-512 are made".into(),
                    );
                };
                Signer::try_sign(&(rsa, Some(hash)), data)
            }
            keypair => Signer::try_sign(keypair, data),
        };
        let signature = match signed {
            Ok(signature) => signature,
            Err(e) => {
                warn!(fingerprint = %self.fingerprint, "agent: signing failed: {e}");
                return self.refuse(reply, "a signature that failed".into());
            }
        };
        let start = reply.len();
        reply.push(SIGN_RESPONSE);
        if let Err(e) = signature.encode_prefixed(reply) {
            reply.truncate(start);
            warn!(fingerprint = %self.fingerprint, "agent: encoding the signature failed: {e}");
            return self.refuse(reply, "a signature that could not be encoded".into());
        }
        self.signatures.fetch_add(1, Ordering::Relaxed);
        info!(
            fingerprint = %self.fingerprint,
            algorithm = %signature.algorithm(),
            "agent: signed with the key"
        );
    }

    /// Answers `FAILURE` and counts (and, the first few times, logs) the refusal of `what`.
    fn refuse(&self, reply: &mut Vec<u8>, what: String) {
        reply.push(FAILURE);
        let before = self.refused.fetch_add(1, Ordering::Relaxed);
        match usize::try_from(before) {
            Ok(n) if n < REFUSALS_LOGGED => warn!(
                fingerprint = %self.fingerprint,
                "agent: refused {what} (this agent only lists and signs with its one key)"
            ),
            Ok(n) if n == REFUSALS_LOGGED => {
                warn!("agent: refused {what}; further refusals are only counted")
            }
            _ => debug!("agent: refused {what}"),
        }
    }
}

/// A readable name for a request type we refuse.
fn request_name(kind: u8) -> String {
    let name = match kind {
        1 => "a protocol 1 identities request",
        9 => "remove all protocol 1 identities",
        17 => "add identity",
        18 => "remove identity",
        19 => "remove all identities",
        20 => "add smartcard key",
        21 => "remove smartcard key",
        22 => "lock",
        23 => "unlock",
        25 => "add identity (constrained)",
        26 => "add smartcard key (constrained)",
        _ => return format!("unknown message type {kind}"),
    };
    name.into()
}

/// Reads one frame into `frame`: `Ok(false)` at a clean end of the stream (nothing or only part of
/// a frame read), [`Error::AgentFrameTooLarge`] for a length above [`MAX_AGENT_FRAME`], checked
/// before `frame` grows.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, frame: &mut Vec<u8>) -> Result<bool> {
    let io = |source| Error::Io {
        context: "reading from an agent connection".into(),
        source,
    };
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match stream.read(&mut header[filled..]).await.map_err(io)? {
            0 => {
                if filled > 0 {
                    debug!("agent: connection closed inside a frame header");
                }
                return Ok(false);
            }
            n => filled += n,
        }
    }
    let len = u32::from_be_bytes(header);
    let Some(len) = usize::try_from(len).ok().filter(|&l| l <= MAX_AGENT_FRAME) else {
        return Err(Error::AgentFrameTooLarge {
            len,
            max: MAX_AGENT_FRAME,
        });
    };
    frame.clear();
    frame.resize(len, 0);
    match stream.read_exact(frame).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            debug!("agent: connection closed inside a frame");
            Ok(false)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn agent() -> Arc<KeyAgent> {
        let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
        KeyAgent::new(key)
    }

    #[tokio::test]
    async fn a_silent_connection_ends_at_the_idle_deadline() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let err = agent()
            .serve_with_idle(ours, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AgentIdle { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_trickling_frame_ends_at_the_idle_deadline() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(&[0, 0, 0, 5, 11]).await.unwrap();
        let err = agent()
            .serve_with_idle(ours, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AgentIdle { .. }), "{err}");
    }

    #[test]
    fn every_refused_kind_gets_failure_and_is_counted() {
        let agent = agent();
        for kind in [1u8, 9, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27, 200] {
            let mut reply = Vec::new();
            agent.answer(&[kind, 0, 0, 0, 1, b'x'], &mut reply);
            assert_eq!(reply, [FAILURE], "type {kind}");
        }
        let mut reply = Vec::new();
        agent.answer(&[], &mut reply);
        assert_eq!(reply, [FAILURE]);
        assert_eq!(
            agent.stats(),
            AgentStats {
                signatures: 0,
                refused: 14
            }
        );
    }
}
