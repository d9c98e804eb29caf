//! Every timeout and size of the mount, with the reason for its value. [`Limits`] carries them so
//! that tests can shrink a bound; [`Limits::default`] is what a run uses.

use std::time::Duration;

/// Deadline of one remote call other than a directory listing (lstat, readlink, open, read, close).
///
/// A backstop behind the SFTP client's own per-request deadline, so that no `Source` can leave a
/// FUSE call (and borg, blocked in it) waiting forever: the call fails with EIO and is reported.
/// One such request is one round trip; a minute outlasts any healthy link and a slow disk.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// Deadline of one whole directory listing (OPENDIR, READDIR until EOF, CLOSE).
///
/// OpenSSH's sftp-server sends at most 100 names per READDIR: the largest directory we accept
/// ([`MAX_DIR_ENTRIES`]) is 5,000 round trips, under 9 minutes at 100 ms. A stall still ends.
pub const LISTING_DEADLINE: Duration = Duration::from_secs(600);

/// How long a listing's attributes answer `lookup`/`getattr` without asking again; also the TTL
/// the kernel gets for entries and attributes.
///
/// A mount lives for one borg run that walks each directory once, right after listing it; two
/// minutes covers the stat of every entry of a huge directory even at a distance, and a file that
/// changes during the run is still read to its end (reads are bounded by [`GROWTH_SLACK`], not by
/// the cached size).
pub const CACHE_TTL: Duration = Duration::from_secs(120);

/// Inodes one mount may know (every listed entry is one), per run.
///
/// Each costs its name plus about 120 bytes here and about as much in the kernel: two million
/// (a large file server's whole tree) is a few hundred MiB at most, and bounds what a client that
/// invents endless directories can make us hold.
pub const MAX_INODES: usize = 2_000_000;

/// Entries one directory may have.
///
/// Maildirs and caches reach tens of thousands; half a million is far beyond real trees and
/// bounds one listing's memory (the SFTP client bounds it while reading, too).
pub const MAX_DIR_ENTRIES: usize = 500_000;

/// How deep below the mount's root a directory may be listed.
///
/// Linux paths end at 4096 bytes (PATH_MAX), i.e. at most 2048 levels of one-letter names; real
/// trees stay under 50. Bounds the parent chain a path is built from.
pub const MAX_DEPTH: usize = 512;

/// Longest symlink target accepted (bytes): Linux's PATH_MAX.
pub const MAX_LINK_LEN: usize = 4096;

/// How many levels below a directory borg lists the prefetch walker lists ahead.
///
/// borg walks depth-first, one directory at a time: three levels ahead keeps tens to hundreds of
/// listings in flight at a 100 ms distance, so borg finds the next directory already listed.
pub const PREFETCH_DEPTH: usize = 3;

/// Listings the prefetch walker keeps in flight at once.
///
/// Each is one outstanding SFTP request at a time, and a listing is at least three round trips
/// (OPENDIR, READDIR until EOF, CLOSE): 32 list a tree of 100-entry directories at about 20
/// directories a second at 100 ms (measured: 202 directories in under 10 s, unchanged). With the
/// files read ahead ([`FILES_AHEAD`], one request each at a time) they fill the SFTP client's
/// 64 outstanding requests only while borg walks and reads at once.
pub const PREFETCH_CONCURRENT: usize = 32;

/// Entries the prefetch walker may list per run; after that, directories are listed when borg
/// asks. Half of [`MAX_INODES`], so prefetching alone never fills the inode table.
pub const PREFETCH_MAX_ENTRIES: usize = MAX_INODES / 2;

/// Directories queued for prefetching at once (each a small waiting task); beyond, the walker
/// skips them and borg's own listing fetches them.
pub const PREFETCH_MAX_QUEUED: usize = 20_000;

/// Size of one read request and of one read-ahead chunk.
///
/// What every SFTP server answers in full (borg-pull-sftp's UNANNOUNCED_MAX_READ; OpenSSH's
/// sftp-server answers up to 255 KiB): a file below it is one request, the window has a fine
/// grain.
pub const READ_CHUNK: u32 = 64 * 1024;

/// Bytes read ahead of a file's sequential reader.
///
/// With this much in flight one file streams at window / RTT: 2 MiB (32 chunks, half the SFTP
/// client's 64 outstanding requests) is 20 MiB/s at 100 ms and the link's speed on a LAN.
pub const READ_AHEAD_WINDOW: u64 = 2 * 1024 * 1024;

/// Bytes of read-ahead held across all open files; beyond it reads are fetched on demand only.
///
/// borg reads one file at a time; 64 MiB leaves room for the kernel's concurrent readers
/// without letting many open files grow memory.
pub const READ_AHEAD_TOTAL: u64 = 64 * 1024 * 1024;

/// Files read ahead of borg: when borg reads a file from its start, the next this many regular
/// files of the same listing are opened and their first chunk read (then closed), so that borg,
/// which reads one file at a time in listing order, finds them read.
///
/// A small file costs two round trips (OPEN, then READ) that borg would otherwise wait for one
/// file after another: 32 files in flight hide them on a LAN and make a 100 ms link move 32 files
/// per two round trips. Each holds one chunk of the read-ahead memory ([`READ_AHEAD_TOTAL`]:
/// 2 MiB of 64), and the OPENs and READs share the SFTP client's 64 outstanding requests with
/// borg's own reads and the listings. A file borg then skips (unchanged, excluded) was read in
/// vain: at most this many per file borg reads.
pub const FILES_AHEAD: usize = 32;

/// Files kept for reads that come without an open (by inode: the kernel sends no OPEN or
/// RELEASE once the mount answered the first open with ENOSYS, FUSE_NO_OPEN_SUPPORT); a file is
/// let go when read to its end, the oldest beyond this bound (its remote handle closed).
///
/// borg reads one file at a time, and the kernel's read-ahead keeps a few reads of it in flight;
/// 64 leaves room for other readers of the mount while bounding the remote handles held open.
pub const FILES_READING: usize = 64;

/// Whether reads come without opens where the kernel allows it (FUSE_NO_OPEN_SUPPORT): a small
/// file costs one call into the mount instead of four. Reads then use the page cache and stop at
/// the listed size: a file that grew after its listing is cut there and reported. Without it
/// (tests of the other mode, an old kernel) every read reaches the mount (direct I/O) and a file
/// that grew is read on to [`GROWTH_SLACK`] past its listed size.
pub const NO_OPEN: bool = true;

/// Bytes a file may be read past the size its listing reported before reads stop (reported).
///
/// A log that grows during the backup is read a little further (as a local borg would); a file
/// that never ends (a device behind a regular name, a lying server) stops here.
pub const GROWTH_SLACK: u64 = 64 * 1024 * 1024;

/// Absolute bound on the bytes read from one file, whatever size the listing claims.
///
/// Larger than any disk image we expect to back up; it ends a read that a lying size would make
/// endless.
pub const FILE_CAP: u64 = 16 << 40;

/// Short reads in a row one chunk may need before it fails (EIO).
///
/// A server answers a read with fewer bytes only at EOF or at its own maximum; a chunk needs at
/// most two such answers. A server that trickles a byte at a time is refused (and the file given
/// up), so it costs a few requests per chunk in flight, not one per byte.
pub const MAX_SHORT_READS: usize = 4;

/// Problems kept for [`crate::Mount::report`]; beyond, only their number is kept.
pub const MAX_REPORTED: usize = 1000;

/// How long stopping a mount waits for the kernel's requests to be answered before it aborts the
/// connection (every request still waiting then ends with ENOTCONN).
///
/// Stopping cancels every request task first, and each answers EIO as it ends: milliseconds,
/// a second on a loaded machine. A request still unanswered after that is held by something
/// that will never answer it (a task that does not yield, a dead FUSE thread), and its caller
/// would wait in the kernel forever.
pub const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

/// How long stopping a mount waits for its FUSE thread after the (lazy) unmount.
///
/// The thread ends as soon as the kernel drops the connection, well under a second when nothing
/// is open; if a reader still holds a file the detached mount lives on until it closes it, and
/// we do not wait for that.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// How long `fusermount3` (mounting or unmounting for a non-root user) may take before it is
/// killed.
///
/// It does one mount(2) or umount2(2) and edits nothing else (fuse3 keeps no mtab): milliseconds.
/// A mount point on a hung filesystem (another stuck FUSE mount above it) could block it in the
/// kernel; half a minute ends that wait without failing a loaded machine.
pub const FUSERMOUNT_DEADLINE: Duration = Duration::from_secs(30);

/// How much of `fusermount3`'s stderr is kept for the error message (bytes).
///
/// Its messages are one line naming the cause; the rest of a longer output is dropped.
pub const FUSERMOUNT_STDERR: u64 = 4096;

/// The bounds one mount applies; [`Limits::default`] uses the constants of this module.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// See [`REQUEST_DEADLINE`].
    pub request_deadline: Duration,
    /// See [`LISTING_DEADLINE`].
    pub listing_deadline: Duration,
    /// See [`CACHE_TTL`].
    pub cache_ttl: Duration,
    /// See [`MAX_INODES`].
    pub max_inodes: usize,
    /// See [`MAX_DIR_ENTRIES`].
    pub max_dir_entries: usize,
    /// See [`MAX_DEPTH`].
    pub max_depth: usize,
    /// See [`MAX_LINK_LEN`].
    pub max_link_len: usize,
    /// See [`PREFETCH_DEPTH`].
    pub prefetch_depth: usize,
    /// See [`PREFETCH_CONCURRENT`].
    pub prefetch_concurrent: usize,
    /// See [`PREFETCH_MAX_ENTRIES`].
    pub prefetch_max_entries: usize,
    /// See [`PREFETCH_MAX_QUEUED`].
    pub prefetch_max_queued: usize,
    /// See [`READ_CHUNK`].
    pub read_chunk: u32,
    /// See [`READ_AHEAD_WINDOW`].
    pub read_ahead_window: u64,
    /// See [`READ_AHEAD_TOTAL`].
    pub read_ahead_total: u64,
    /// See [`FILES_AHEAD`] (0: none).
    pub files_ahead: usize,
    /// See [`FILES_READING`].
    pub files_reading: usize,
    /// See [`NO_OPEN`].
    pub no_open: bool,
    /// See [`GROWTH_SLACK`].
    pub growth_slack: u64,
    /// See [`FILE_CAP`].
    pub file_cap: u64,
    /// See [`MAX_REPORTED`].
    pub max_reported: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_deadline: REQUEST_DEADLINE,
            listing_deadline: LISTING_DEADLINE,
            cache_ttl: CACHE_TTL,
            max_inodes: MAX_INODES,
            max_dir_entries: MAX_DIR_ENTRIES,
            max_depth: MAX_DEPTH,
            max_link_len: MAX_LINK_LEN,
            prefetch_depth: PREFETCH_DEPTH,
            prefetch_concurrent: PREFETCH_CONCURRENT,
            prefetch_max_entries: PREFETCH_MAX_ENTRIES,
            prefetch_max_queued: PREFETCH_MAX_QUEUED,
            read_chunk: READ_CHUNK,
            read_ahead_window: READ_AHEAD_WINDOW,
            read_ahead_total: READ_AHEAD_TOTAL,
            files_ahead: FILES_AHEAD,
            files_reading: FILES_READING,
            no_open: NO_OPEN,
            growth_slack: GROWTH_SLACK,
            file_cap: FILE_CAP,
            max_reported: MAX_REPORTED,
        }
    }
}
