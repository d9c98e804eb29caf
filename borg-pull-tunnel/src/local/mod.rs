//! What reads or edits a file on this server (never on the client), and the secrets read from
//! there. Imports nothing from `ssh`, `channels` or `jobs` (see `scripts/check-module-graph`).
//!
//! - [`authorized_keys`]: the `authorized_keys` line that forces a restricted `borg serve` for one
//!   key (quoted for sshd and the login shell), installed idempotently under a lock, and ephemeral
//!   entries removed after their pull (or by the next one when their process is gone).
//! - [`secret_file`]: reading a secret from a file whose owner and mode are checked.
//! - [`secret`]: [`secret::SecretString`], the one type for a secret in memory (zeroed when
//!   dropped, redacted when formatted).
//! - [`passphrase`]: the repository passphrase, its sources and zeroing.

pub mod authorized_keys;
pub mod passphrase;
pub mod secret;
pub mod secret_file;
