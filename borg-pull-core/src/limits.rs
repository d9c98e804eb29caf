//! Every timeout and size borg-pull uses, with the reason for its value.

use std::time::Duration;

/// How long `borg serve` may take to exit on its own once its connection has ended.
///
/// borg serve exits as soon as stdin reaches EOF and it has released the repository lock; on
/// loopback that takes well under a second. After this it is killed, so a wedged child never keeps
/// the repository locked.
pub const SERVE_EXIT_GRACE: Duration = Duration::from_secs(10);

/// Buffer size of the async relay between a connection and `borg serve`'s pipes.
///
/// borg's protocol writes messages of up to a chunk (≤ 8 MiB by default, mostly far less); 64 KiB
/// matches the Linux pipe capacity, so each read empties a full pipe in one call.
pub const SERVE_RELAY_BUFFER: usize = 64 * 1024;
