//! The bounds on what an SFTP server may make this client do, with the reason for each default.
//!
//! The server is the backup client's SFTP server: untrusted. Every size it sends is checked
//! against one of these before anything is allocated, and every request ends by its deadline.

use std::time::Duration;

/// Largest reply packet accepted (its length field, the type byte and id included).
///
/// OpenSSH's sftp-server refuses anything above `SFTP_MAX_MSG_LENGTH` = 256 KiB itself and never
/// sends more (its largest reply is a READ of 255 KiB plus 13 bytes of header); a peer that
/// announces more is refused before a byte of the body is read.
pub const DEFAULT_MAX_PACKET: u32 = 256 * 1024;

/// Requests in flight at once; more wait for a slot (they queue, they do not fail).
///
/// 64 reads of 64 KiB keep 4 MiB in flight, enough to fill a 100 ms, 300 Mbit/s link, while the
/// memory they may pin (64 x max_packet = 16 MiB) stays small.
pub const DEFAULT_MAX_OUTSTANDING: usize = 64;

/// How long one request may take, from the call (waiting for a slot included) to its reply.
///
/// A 255 KiB read over a slow link takes well under a second; 30 s covers a busy disk on the
/// client and a congested link, and still ends a stalled server's run long before any backup
/// window closes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries one directory may have (as the server lists them, "." and ".." included).
///
/// Large maildirs and caches hold a few hundred thousand files. A listing is held in memory in
/// full: ~100 bytes an entry with typical names, ~330 with names at [`DEFAULT_MAX_NAME_LEN`], so
/// a server that never ends a listing stops at ~50 MiB typical, ~170 MiB at worst.
pub const DEFAULT_MAX_DIR_ENTRIES: usize = 1 << 19;

/// Longest name of one directory entry, in bytes: Linux's `NAME_MAX`.
pub const DEFAULT_MAX_NAME_LEN: usize = 255;

/// Longest symlink target (and REALPATH answer), in bytes: Linux's `PATH_MAX` less its NUL.
pub const DEFAULT_MAX_LINK_LEN: usize = 4095;

/// Largest READ asked for, in bytes: OpenSSH's own (its sftp-server announces 255 KiB in
/// `limits@openssh.com` and never sends more than 256 KiB in a packet).
///
/// The smaller of this and the server's announced `max-read-length` is used, and never more than
/// `max_packet` can carry. Fewer, larger reads mean fewer round trips at a distance.
pub const DEFAULT_MAX_READ: u32 = 255 * 1024;

/// Largest WRITE sent, in bytes, under the same rule as [`DEFAULT_MAX_READ`].
pub const DEFAULT_MAX_WRITE: u32 = 255 * 1024;

/// Largest READ asked of a server that announces no `limits@openssh.com` (OpenSSH before 8.6,
/// other servers): 64 KiB, which they all answer (a server may send less; it never has to
/// refuse), and FUSE's usual largest read.
pub const UNANNOUNCED_MAX_READ: u32 = 64 * 1024;

/// Largest WRITE sent to a server that announces no limits: 32 KiB, what OpenSSH's own client
/// sends then, within the 34,000-byte packets every server must accept (draft-02, section 3).
/// Unlike a READ, a WRITE too large for the server is refused, not shortened.
pub const UNANNOUNCED_MAX_WRITE: u32 = 32 * 1024;

/// Extensions the server may announce in VERSION; more is a hostile server (OpenSSH 9.x sends 11).
pub const DEFAULT_MAX_EXTENSIONS: usize = 64;

/// Largest SSH_FXP_HANDLE a server may hand out: the protocol's own bound (draft-02, section 6.2).
pub const MAX_HANDLE_LEN: usize = 256;

/// Longest server error message kept in an [`crate::Error`]; the rest is cut so a hostile
/// server cannot fill the logs.
pub const MAX_STATUS_MESSAGE: usize = 512;

/// The bounds one [`crate::Client`] enforces; [`Limits::default`] uses the constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest reply packet accepted; see [`DEFAULT_MAX_PACKET`].
    pub max_packet: u32,
    /// Requests in flight at once; see [`DEFAULT_MAX_OUTSTANDING`].
    pub max_outstanding: usize,
    /// Deadline of each request; see [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// Entries per directory listing; see [`DEFAULT_MAX_DIR_ENTRIES`].
    pub max_dir_entries: usize,
    /// Longest entry name; see [`DEFAULT_MAX_NAME_LEN`].
    pub max_name_len: usize,
    /// Longest symlink target; see [`DEFAULT_MAX_LINK_LEN`].
    pub max_link_len: usize,
    /// Largest READ; see [`DEFAULT_MAX_READ`].
    pub max_read: u32,
    /// Largest WRITE; see [`DEFAULT_MAX_WRITE`].
    pub max_write: u32,
    /// Extensions accepted in VERSION; see [`DEFAULT_MAX_EXTENSIONS`].
    pub max_extensions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet: DEFAULT_MAX_PACKET,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_dir_entries: DEFAULT_MAX_DIR_ENTRIES,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_link_len: DEFAULT_MAX_LINK_LEN,
            max_read: DEFAULT_MAX_READ,
            max_write: DEFAULT_MAX_WRITE,
            max_extensions: DEFAULT_MAX_EXTENSIONS,
        }
    }
}

/// How long the writer task may take to close its half of the stream when the session ends.
///
/// Closing sends EOF (sftp-server exits on it); it only waits when the peer stopped reading, and a
/// peer that stopped reading must not hold a shutdown.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long [`crate::Client::shutdown`] waits for its two tasks to end.
///
/// They stop as soon as the session ends; only the writer's close (bounded by [`CLOSE_GRACE`])
/// takes time. Past this they are aborted.
pub const JOIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// WRITEs one [`crate::Client::write`] keeps in flight (never more than `max_outstanding`).
///
/// 16 x 64 KiB = 1 MiB in flight: a restore over a 20 ms, 400 Mbit/s link is not held back by
/// round trips, and one large file leaves slots for the other requests of the session.
pub const WRITE_WINDOW: usize = 16;
