//! The SSH-free half of borg-pull: everything BorgBackup's socat pull-mode recipe does, without socat.
//!
//! - [`relay`]: UNIX socket <-> stdio relay with correct half-close (what `borg-pull-relay` runs as
//!   `BORG_RSH` on the client).
//! - [`rsh`]: parsing the ssh-style argv that borg appends to `BORG_RSH`.
//! - [`child`]: the one way to run a local borg: own process group, stated environment, bounded
//!   escaped stderr, SIGTERM then SIGKILL, always reaped.
//! - [`serve`]: spawning, bridging, killing and reaping `borg serve` with restrictions that the
//!   *server* fixes; nothing a client sends can widen them.
//! - [`listen`]: private UNIX listeners (safe directory and socket modes, stale vs live sockets,
//!   systemd socket activation) that hand each connection to [`serve`].
//! - [`supervise`]: one owner for all `borg serve` sessions of a run: admission (wait or refuse),
//!   limits, graceful drain, totals.
//! - [`version`]: borg's version from `borg --version`, which decides the serve flags.
//! - [`text`]: untrusted output made fit for logs: escaped, lossy, bounded lines.
//! - [`limits`]: every timeout and size in one place.
//!
//! **Environment.** The library reads no settings from environment variables; callers pass them in.
//! Exceptions, each documented where it happens: `PATH` ([`ServeConfig::find_program`] looks the
//! borg program up like exec does), systemd's `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`
//! ([`listen::PrivateListener::from_systemd`], which also clears them), and the allowlisted
//! variables passed through to `borg serve` ([`serve::passed_to_serve`]).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod child;
pub mod error;
pub mod limits;
pub mod listen;
pub mod relay;
pub mod rsh;
mod safe_dir;
pub mod serve;
pub mod supervise;
pub mod text;
pub mod version;

pub use error::{Error, Result};
pub use serve::ServeConfig;
pub use version::BorgVersion;
