//! Public key login on an SSH connection, as OpenSSH does it: the identity file given wins; without
//! one, the keys of the user's ssh-agent (`SSH_AUTH_SOCK`) first, then the first default identity
//! file that exists.
//!
//! One [`Login`] serves every hop of a connection (jump hosts and the client), so a key file is
//! read and the agent asked for its keys at most once. Default key files are only read when the
//! agent's keys did not get us in: an agent-only user needs no key file at all.
//!
//! The client's sshd is careful with careless clients, and so are we ([`MAX_KEY_OFFERS`]): at
//! most five keys per connection, below sshd's default `MaxAuthTries` of 6, so sshd never has to
//! cut us off for too many failures; and whether there is any key at all is settled before
//! connecting ([`Login::prepare`]), since OpenSSH >= 9.8 penalises the address of a client that
//! disconnects without trying to authenticate (`noauth`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::agent::client::AgentClient;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::AgentAuthError;
use tokio::net::UnixStream;
use tracing::debug;

use crate::limits::{MAX_AGENT_KEYS, MAX_KEY_OFFERS, REQUEST_TIMEOUT};
use crate::local::secret::SecretString;
use crate::ssh::session::{Session, SessionOptions};
use crate::{Error, Result};

/// The keys to log in with, shared by the hops of one connection.
pub(crate) struct Login<'a> {
    options: &'a SessionOptions,
    /// The key file (the identity given, or the first existing default), once loaded.
    file: Option<(PathBuf, Arc<PrivateKey>)>,
    agent: Agent,
}

/// The user's ssh-agent, asked at most once.
enum Agent {
    /// Not asked yet.
    Unasked,
    /// No socket given, unreachable or not answering: skipped, as OpenSSH does.
    Absent,
    /// Connected; its keys (at most [`MAX_AGENT_KEYS`], in its order) and how many it holds.
    Ready {
        client: AgentClient<UnixStream>,
        keys: Vec<PublicKey>,
        held: usize,
    },
}

/// What offering the agent's keys came to.
enum Offered {
    Accepted,
    /// Refused (or not signed by the agent): how many keys were offered.
    Refused(usize),
}

impl<'a> Login<'a> {
    /// Reads the identity given at once, so a broken key file fails before connecting; default
    /// key files and the agent wait until they are needed.
    pub(crate) fn new(options: &'a SessionOptions) -> Result<Self> {
        let file = match &options.identity {
            Some(path) => Some((path.clone(), load(path, options)?)),
            None => None,
        };
        Ok(Self {
            options,
            file,
            agent: Agent::Unasked,
        })
    }

    /// Settles, before any connection is made, whether there is a key to offer: asks the agent (at
    /// most once) and, when it has no key, reads the default key file. Without any key it is
    /// [`Error::NoIdentity`] now (an unreadable key file its own error), instead of a connection
    /// closed without authenticating, which OpenSSH >= 9.8 counts against this server's address
    /// (`noauth` in PerSourcePenalties).
    pub(crate) async fn prepare(&mut self) -> Result<()> {
        if self.options.identity.is_some() {
            return Ok(());
        }
        if let (Agent::Unasked, Some(socket)) = (&self.agent, &self.options.agent_socket) {
            self.agent = ask_agent(socket).await;
        }
        let agent_keys = match &self.agent {
            Agent::Ready { keys, .. } => keys.len(),
            Agent::Unasked | Agent::Absent => 0,
        };
        if agent_keys > 0 {
            return Ok(());
        }
        // Without agent keys the default key file is the only one: read it now, so an encrypted
        // one without passphrase also fails before connecting.
        if self.key_file()?.is_none() {
            return Err(Error::NoIdentity {
                tried: self.options.default_identities.clone(),
                agent: self.options.agent_socket.clone(),
            });
        }
        Ok(())
    }

    /// Logs in to `session` as `user`, offering at most [`MAX_KEY_OFFERS`] keys; each attempt has
    /// [`REQUEST_TIMEOUT`].
    pub(crate) async fn authenticate(&mut self, session: &mut Session, user: &str) -> Result<()> {
        self.prepare().await?;
        let mut agent_keys = 0;
        let agent = match self.options.identity {
            None => self.options.agent_socket.clone(),
            Some(_) => None,
        };
        if agent.is_some() {
            // A default key file keeps one offer for itself: it is what OpenSSH tries after the
            // agent's keys, and often the one the client authorises.
            let room = MAX_KEY_OFFERS - usize::from(self.default_file_exists());
            match self.offer_agent_keys(session, user, room).await? {
                Offered::Accepted => return Ok(()),
                Offered::Refused(n) => agent_keys = n,
            }
        }
        let file = self.key_file()?;
        if let Some((path, key)) = &file {
            // A key the agent just offered is refused again: offering it would only count
            // another failure against MaxAuthTries.
            let offered = self
                .agent_keys(agent_keys)
                .any(|k| k.key_data() == key.public_key().key_data());
            if offered {
                debug!(identity = %path.display(), "the agent already offered this key, not offered again");
            } else if offer_key_file(session, user, path, key.clone()).await? {
                return Ok(());
            } else if let Some(e) = ended_login(session, user, agent_keys + 1) {
                return Err(e);
            }
        } else if agent_keys == 0 {
            return Err(Error::NoIdentity {
                tried: self.options.default_identities.clone(),
                agent,
            });
        }
        let agent_keys_held = match &self.agent {
            Agent::Ready { held, .. } => u32::try_from(*held).unwrap_or(u32::MAX),
            Agent::Unasked | Agent::Absent => 0,
        };
        Err(Error::AuthFailed {
            user: user.to_owned(),
            peer: session.peer(),
            identity: file.map(|(path, _)| path).unwrap_or_default(),
            agent,
            agent_keys,
            agent_keys_held,
        })
    }

    /// The first `n` keys of the agent (none when it has none).
    fn agent_keys(&self, n: usize) -> impl Iterator<Item = &PublicKey> {
        let keys: &[PublicKey] = match &self.agent {
            Agent::Ready { keys, .. } => keys,
            Agent::Unasked | Agent::Absent => &[],
        };
        keys.iter().take(n)
    }

    /// Whether the identity given, or else one of the default key files, exists (not read yet).
    fn default_file_exists(&self) -> bool {
        self.file.is_some() || self.options.default_identities.iter().any(|p| p.is_file())
    }

    /// The identity given, or the first default one that exists (loaded once).
    fn key_file(&mut self) -> Result<Option<(PathBuf, Arc<PrivateKey>)>> {
        if self.file.is_none() {
            if let Some(path) = self.options.default_identities.iter().find(|p| p.is_file()) {
                self.file = Some((path.clone(), load(path, self.options)?));
            }
        }
        Ok(self.file.clone())
    }

    /// Offers the agent's first `room` keys (asked for in [`Login::prepare`]).
    async fn offer_agent_keys(&mut self, session: &mut Session, user: &str, room: usize) -> Result<Offered> {
        let Agent::Ready { client, keys, .. } = &mut self.agent else {
            return Ok(Offered::Refused(0));
        };
        let mut offered = 0;
        for key in keys.iter().take(room) {
            let hash = rsa_hash(session, key.algorithm()).await?;
            debug!(key = %key.fingerprint(HashAlg::Sha256), "authenticating with an agent key");
            offered += 1;
            let attempt = session
                .handle
                .authenticate_publickey_with(user, key.clone(), hash, client);
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(result)) if result.success() => return Ok(Offered::Accepted),
                Ok(Ok(_)) => {
                    if let Some(e) = ended_login(session, user, offered) {
                        return Err(e);
                    }
                }
                Ok(Err(AgentAuthError::Key(e))) => {
                    debug!(key = %key.fingerprint(HashAlg::Sha256), "the agent did not sign: {e}");
                }
                Ok(Err(AgentAuthError::Send(_))) => {
                    return Err(ended_login(session, user, offered).unwrap_or_else(|| {
                        session.failure("public key authentication", russh::Error::SendError)
                    }))
                }
                Err(_) => return Err(no_answer(session, "public key authentication with an agent key")),
            }
        }
        Ok(Offered::Refused(offered))
    }
}

/// After a refused key: [`Error::AuthCutOff`] when the client's sshd has ended the connection with
/// a disconnect message (at `MaxAuthTries` failures OpenSSH says "Too many authentication
/// failures"); `None` while the connection lasts, or when it just vanished (the next request
/// reports that).
fn ended_login(session: &Session, user: &str, offered: usize) -> Option<Error> {
    if !session.is_closed() {
        return None;
    }
    Some(Error::AuthCutOff {
        user: user.to_owned(),
        peer: session.peer(),
        offered,
        said: session.goodbye()?,
    })
}

/// Connects to the agent and lists its keys; anything going wrong is logged at debug and the
/// agent skipped (OpenSSH does the same).
async fn ask_agent(socket: &Path) -> Agent {
    let asking = async {
        let mut client = AgentClient::connect_uds(socket).await?;
        let identities = client.request_identities().await?;
        Ok::<_, russh::keys::Error>((client, identities))
    };
    let (client, identities) = match tokio::time::timeout(REQUEST_TIMEOUT, asking).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            debug!(socket = %socket.display(), "ssh-agent not usable, skipped: {e}");
            return Agent::Absent;
        }
        Err(_) => {
            debug!(socket = %socket.display(), "ssh-agent did not answer within {} s, skipped", REQUEST_TIMEOUT.as_secs());
            return Agent::Absent;
        }
    };
    let mut keys: Vec<PublicKey> = Vec::new();
    for identity in &identities {
        let key = identity.public_key().into_owned();
        if !keys.iter().any(|k| k.key_data() == key.key_data()) && keys.len() < MAX_AGENT_KEYS {
            keys.push(key);
        }
    }
    let held = identities.len();
    debug!(socket = %socket.display(), held, kept = keys.len(), "ssh-agent keys");
    Agent::Ready { client, keys, held }
}

/// Offers a key file; `Ok(false)` when it is refused.
async fn offer_key_file(
    session: &mut Session,
    user: &str,
    path: &Path,
    key: Arc<PrivateKey>,
) -> Result<bool> {
    let hash = rsa_hash(session, key.algorithm()).await?;
    debug!(identity = %path.display(), key = %key.public_key().fingerprint(HashAlg::Sha256), "authenticating");
    let attempt = session
        .handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash));
    match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
        Ok(result) => Ok(result
            .map_err(|e| session.failure("public key authentication", e))?
            .success()),
        Err(_) => Err(no_answer(session, "public key authentication")),
    }
}

/// The signature hash for an RSA key (what the server accepts), `None` for other key types.
async fn rsa_hash(session: &Session, algorithm: Algorithm) -> Result<Option<HashAlg>> {
    if !algorithm.is_rsa() {
        return Ok(None);
    }
    let best = tokio::time::timeout(REQUEST_TIMEOUT, session.handle.best_supported_rsa_hash())
        .await
        .map_err(|_| no_answer(session, "the RSA signature hash negotiation"))?
        .map_err(|e| session.failure("negotiating the RSA signature hash", e))?;
    // `None`: the server did not say (no ext-info); rsa-sha2-512 is what OpenSSH prefers.
    Ok(best.unwrap_or(Some(HashAlg::Sha512)))
}

fn no_answer(session: &Session, what: &'static str) -> Error {
    Error::NoAnswer {
        peer: session.peer(),
        what,
        secs: REQUEST_TIMEOUT.as_secs(),
    }
}

fn load(path: &Path, options: &SessionOptions) -> Result<Arc<PrivateKey>> {
    let passphrase = options.identity_passphrase.as_ref().map(SecretString::as_str);
    Ok(Arc::new(crate::ssh::identity::load(path, passphrase)?))
}
