//! The connection flags `pull` and `restore-tar` share, and the one place they reach
//! [`SessionOptions`].

use std::path::PathBuf;

use borg_pull_fleet::time_text::parse_duration;
use borg_pull_tunnel::ssh::cipher::CipherChoice;
use borg_pull_tunnel::ssh::jump::JumpHost;
use borg_pull_tunnel::ssh::session::SessionOptions;
use borg_pull_tunnel::{Error, SecretKind};

/// How to reach and log in to the client (flattened into `pull` and `restore-tar`).
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The client's sshd port.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,

    /// Private key to log in with (ed25519, ecdsa or rsa; default: the ssh-agent's keys at
    /// SSH_AUTH_SOCK, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa). An encrypted key takes its passphrase from --identity-passphrase-file or the
    /// BORG_PULL_IDENTITY_PASSPHRASE environment variable, never from the command line.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// File holding the identity's passphrase (first line).
    #[arg(long, value_name = "FILE")]
    pub identity_passphrase_file: Option<PathBuf>,

    /// known_hosts file used to verify the client's host key (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Record the host key of a client not yet in known_hosts (like StrictHostKeyChecking
    /// accept-new); a changed key is still refused.
    #[arg(long)]
    pub accept_new_host_key: bool,

    /// Seconds without traffic from the client before a keepalive is sent; after 3 unanswered
    /// ones the client counts as dead and the run ends (exit 215). Like ssh's ServerAliveInterval.
    #[arg(long, value_name = "SECS", default_value_t = borg_pull_tunnel::limits::KEEPALIVE_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive: u64,

    /// The longest the run may take, e.g. `90m`, `12h`, `2d` or seconds (pull: borg on the
    /// client; restore-tar: the stream into tar). Then it is stopped (pull: SIGINT to borg, then
    /// its channel closed; restore-tar: borg export-tar stopped, tar hung up on), everything is
    /// cleaned up and the command exits 217, so a client that stays connected but never finishes
    /// cannot hold borg and the repository lock for ever.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_runtime: std::time::Duration,

    /// Reach the client through this jump host (like ssh -J): repeatable or comma-separated,
    /// first hop first. Each jump host's key is checked against the same known_hosts and it is
    /// logged in to with the same key or agent, as USER or the client's login user; the client is
    /// then reached through a direct-tcpip channel (the jump host's sshd must allow TCP
    /// forwarding).
    #[arg(short = 'J', long = "jump", value_name = "[USER@]HOST[:PORT]", value_delimiter = ',', value_parser = parse_jump)]
    pub jump: Vec<JumpHost>,

    /// The SSH cipher: auto (the default) offers aes128-gcm first on a CPU with hardware AES,
    /// where it costs both ends far less than chacha20-poly1305, and chacha20-poly1305 first
    /// elsewhere; naming one (chacha20-poly1305, aes128-gcm, aes256-gcm) offers only it, and a
    /// client whose sshd does not offer it is refused (exit 214). Jump hosts get the same.
    #[arg(long, value_name = "NAME", default_value_t = CipherChoice::Auto)]
    pub cipher: CipherChoice,
}

impl ConnectArgs {
    /// Applies the flags to `session` (reading the identity's passphrase file, if given);
    /// `max_runtime` is the caller's.
    pub fn apply(self, session: &mut SessionOptions) -> Result<(), Error> {
        session.port = self.port;
        session.identity = self.identity;
        session.jump = self.jump;
        session.cipher = self.cipher;
        session.accept_new_host_key = self.accept_new_host_key;
        session.keepalive_interval = std::time::Duration::from_secs(self.keepalive);
        if let Some(kh) = self.known_hosts {
            session.known_hosts = kh;
        }
        if let Some(path) = self.identity_passphrase_file {
            let line = borg_pull_tunnel::local::secret_file::read_secret_line(
                &path,
                SecretKind::IdentityPassphrase,
            )?;
            session.identity_passphrase = Some(line);
        }
        Ok(())
    }
}

fn parse_jump(s: &str) -> Result<JumpHost, String> {
    JumpHost::parse(s).map_err(|e| e.to_string())
}
