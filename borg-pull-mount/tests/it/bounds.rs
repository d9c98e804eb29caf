//! Every bound against an in-process hostile source: what a client's SFTP server could do to us
//! (lie about sizes, never end a file, list huge directories, stall, trickle) ends at a bound,
//! fails the FUSE call instead of hanging it, and is in the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Condvar;

use borg_pull_mount::{Limits, MountOptions, ProblemKind, Source};
use borg_pull_sftp::{Attrs, DirEntry, Error, Op, ReadData, Request};

use crate::common::{mount_source, mount_source_on, rss, within, MemoryWatch, RSS_BOUND};

#[derive(Clone)]
enum Node {
    Dir(Vec<DirEntry>),
    /// A file whose listing says `listed` bytes and whose reads always return data.
    Endless {
        listed: u64,
    },
    /// A file whose reads return one byte at a time.
    Trickle,
    /// An honest file of `len` bytes.
    Sized {
        len: u64,
    },
    Link(Vec<u8>),
    /// Every call about it never answers.
    Stall {
        dir: bool,
    },
    /// Opens; its reads never answer.
    StallRead,
    /// Opens; its reads panic (a source whose task dies).
    Panic,
    /// Opens; its reads block their thread (never yielding) until the gate opens.
    Block,
}

/// Holds [`Node::Block`]'s reads until opened (or a minute has passed: bounded).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open);
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// Every call a source got: its name and path.
type Calls = Arc<Mutex<Vec<(&'static str, Vec<u8>)>>>;

/// A source serving `nodes` (by absolute path), recording every call.
#[derive(Clone, Default)]
struct Hostile {
    nodes: Arc<HashMap<Vec<u8>, Node>>,
    calls: Calls,
    gate: Arc<Gate>,
}

fn dir_attrs() -> Attrs {
    Attrs {
        permissions: Some(0o040755),
        size: Some(4096),
        ..Attrs::default()
    }
}

fn file_attrs(size: u64) -> Attrs {
    Attrs {
        permissions: Some(0o100644),
        size: Some(size),
        ..Attrs::default()
    }
}

fn not_found(op: Op, path: &[u8]) -> Error {
    Error::NoSuchFile {
        request: Request {
            op,
            path: path.to_vec(),
        },
    }
}

impl Hostile {
    fn new(nodes: Vec<(&[u8], Node)>) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|(path, node)| (path.to_vec(), node))
            .collect();
        Hostile {
            nodes: Arc::new(nodes),
            ..Hostile::default()
        }
    }

    fn count(&self, call: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(made, _)| *made == call).count()
    }

    fn node(&self, call: &'static str, path: &[u8]) -> Option<Node> {
        self.calls.lock().unwrap().push((call, path.to_vec()));
        self.nodes.get(path).cloned()
    }

    fn attrs_of(node: &Node) -> Attrs {
        match node {
            Node::Dir(_) | Node::Stall { dir: true } => dir_attrs(),
            Node::Endless { listed } => file_attrs(*listed),
            Node::Trickle => file_attrs(1 << 20),
            Node::Sized { len } => file_attrs(*len),
            Node::Link(target) => Attrs {
                permissions: Some(0o120777),
                size: Some(target.len() as u64),
                ..Attrs::default()
            },
            Node::Stall { dir: false } | Node::StallRead | Node::Panic | Node::Block => file_attrs(100),
        }
    }
}

impl Source for Hostile {
    type Handle = Vec<u8>;

    async fn lstat(&self, path: &[u8]) -> Result<Attrs, Error> {
        let node = self
            .node("lstat", path)
            .ok_or_else(|| not_found(Op::Lstat, path))?;
        Ok(Self::attrs_of(&node))
    }

    async fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, Error> {
        match self.node("read_dir", path) {
            Some(Node::Dir(entries)) => Ok(entries),
            Some(Node::Stall { .. }) => std::future::pending().await,
            _ => Err(not_found(Op::Opendir, path)),
        }
    }

    async fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, Error> {
        match self.node("read_link", path) {
            Some(Node::Link(target)) => Ok(target),
            _ => Err(not_found(Op::Readlink, path)),
        }
    }

    async fn open_read(&self, path: &[u8]) -> Result<Vec<u8>, Error> {
        match self.node("open", path) {
            Some(Node::Stall { .. }) => std::future::pending().await,
            Some(_) => Ok(path.to_vec()),
            None => Err(not_found(Op::Open, path)),
        }
    }

    async fn read(&self, handle: &Vec<u8>, offset: u64, len: u32) -> Result<ReadData, Error> {
        match self.node("read", handle) {
            Some(Node::Sized { len: size }) if offset < size => Ok(ReadData::Bytes(vec![
                b's';
                (size - offset).min(u64::from(len))
                    as usize
            ])),
            Some(Node::Endless { .. }) => Ok(ReadData::Bytes(vec![b'x'; len as usize])),
            Some(Node::Trickle) => Ok(ReadData::Bytes(vec![b't'])),
            Some(Node::StallRead) => std::future::pending().await,
            Some(Node::Panic) => panic!("the source's task dies in the middle of a read"),
            Some(Node::Block) => {
                // Blocks the runtime's thread: this task never yields, cancelling it cannot end it.
                self.gate.wait();
                Ok(ReadData::Eof)
            }
            _ => Ok(ReadData::Eof),
        }
    }

    async fn close(&self, handle: Vec<u8>) -> Result<(), Error> {
        self.node("close", &handle);
        Ok(())
    }
}

/// `/` with the named children (attributes from the nodes themselves).
fn with_root(mut nodes: Vec<(&'static [u8], Node)>) -> Hostile {
    let entries = nodes
        .iter()
        .map(|(path, node)| DirEntry {
            name: path[1..].to_vec(),
            attrs: Hostile::attrs_of(node),
        })
        .collect();
    nodes.push((b"/", Node::Dir(entries)));
    Hostile::new(nodes)
}

/// Small bounds, so that what a hostile source makes us hold stays small even where a bound
/// fails: 4 KiB chunks, 16 KiB read ahead per file and 64 KiB in all, 1 MiB per file at most.
fn small_limits() -> Limits {
    let mut limits = Limits::default();
    limits.read_chunk = 4096;
    limits.read_ahead_window = 16 * 1024;
    limits.read_ahead_total = 64 * 1024;
    limits.growth_slack = 10_000;
    limits.file_cap = 1 << 20;
    limits.request_deadline = Duration::from_millis(300);
    limits.listing_deadline = Duration::from_millis(300);
    limits
}

fn errno(error: std::io::Error) -> Option<i32> {
    error.raw_os_error()
}

const EIO: i32 = 5;
const ENOTCONN: i32 = 107;
/// What the kernel answers the requests of an aborted connection.
const ECONNABORTED: i32 = 103;

/// Reads a file to its end in 64 KiB reads, failing past `most` bytes (bounded, and without
/// `fs::read`'s allocation of the size the file claims).
fn read_at_most(path: PathBuf, most: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut data = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Each pass reads at least one byte or ends.
    for _ in 0..=most {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&buffer[..n]);
        assert!(data.len() <= most, "read past {most} bytes: no bound");
    }
    unreachable!("more than {most} reads of a file of at most {most} bytes")
}

/// [`read_at_most`] of a hostile source's file, under the memory watch, within a minute; then the
/// process holds less than [`RSS_BOUND`].
fn read_hostile(path: PathBuf, most: usize) -> std::io::Result<Vec<u8>> {
    let watch = MemoryWatch::start();
    let read = within(Duration::from_secs(60), move || read_at_most(path, most));
    drop(watch);
    let held = rss();
    assert!(
        held < RSS_BOUND,
        "{held} bytes resident after the read, more than {RSS_BOUND}"
    );
    read
}

/// [`small_limits`] with opens: every read reaches the mount (direct I/O), as on a kernel
/// without FUSE_NO_OPEN_SUPPORT.
fn with_opens() -> Limits {
    let mut limits = small_limits();
    limits.no_open = false;
    limits
}

/// The problems reported, by path.
fn problems(mounted: &crate::common::Mounted) -> Vec<(Vec<u8>, ProblemKind)> {
    let report = mounted.report();
    report
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.kind.clone()))
        .collect()
}

#[test]
fn an_endless_file_is_read_to_its_listed_size_and_reported() {
    let source = with_root(vec![(b"/endless", Node::Endless { listed: 5000 })]);
    let mounted = mount_source(
        source,
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("endless");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(
        data,
        vec![b'x'; 5000],
        "the kernel reads to the listed size, no further"
    );
    assert_eq!(
        problems(&mounted),
        [(
            b"/endless".to_vec(),
            ProblemKind::FileExceedsBound { bound: 5000 }
        )]
    );
}

#[test]
fn with_opens_an_endless_file_is_read_to_its_listed_size_plus_the_slack_and_reported() {
    let source = with_root(vec![(b"/endless", Node::Endless { listed: 5000 })]);
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(with_opens()));
    let file = mounted.at().join("endless");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(data.len(), 15_000, "listed 5000 + slack 10000");
    assert!(data.iter().all(|&b| b == b'x'));
    let report = mounted.report();
    let kinds: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [(
            b"/endless".to_vec(),
            ProblemKind::FileExceedsBound { bound: 15_000 }
        )]
    );
}

/// The test that once held 23 GB: the listed size was far past the cap, a read's end was cut at
/// the listed size only, and the chunk loop stood still at the cap, allocating on every turn.
#[test]
fn a_lying_size_is_cut_at_the_absolute_cap() {
    let source = with_root(vec![(b"/liar", Node::Endless { listed: u64::MAX / 2 })]);
    let mut limits = small_limits();
    limits.file_cap = 50_000;
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let file = mounted.at().join("liar");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(data.len(), 50_000);
    assert_eq!(
        mounted.report().problems[0].kind,
        ProblemKind::FileExceedsBound { bound: 50_000 }
    );
}

#[test]
fn a_directory_over_the_entry_bound_fails_and_is_reported_one_at_the_bound_lists() {
    let entries = |n: usize| {
        (0..n).map(|i| DirEntry {
            name: format!("f{i}").into_bytes(),
            attrs: file_attrs(1),
        })
    };
    let source = with_root(vec![
        (b"/huge", Node::Dir(entries(101).collect())),
        (b"/full", Node::Dir(entries(100).collect())),
    ]);
    let mut limits = small_limits();
    limits.max_dir_entries = 100;
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let (huge, full) = (mounted.at().join("huge"), mounted.at().join("full"));
    let (huge, full) = within(Duration::from_secs(60), move || {
        (
            std::fs::read_dir(huge).map(|d| d.count()),
            std::fs::read_dir(full).map(|d| d.count()),
        )
    });
    assert_eq!(huge.map_err(errno).unwrap_err(), Some(EIO));
    assert_eq!(full.unwrap(), 100);
    let kinds: Vec<_> = mounted
        .report()
        .problems
        .into_iter()
        .map(|p| (p.path, p.kind))
        .collect();
    assert_eq!(
        kinds,
        [(
            b"/huge".to_vec(),
            ProblemKind::DirectoryTooLarge {
                entries: 101,
                bound: 100
            }
        )]
    );
}

#[test]
fn the_inode_table_bound_fails_the_listing_that_would_pass_it() {
    let entries = (0..30).map(|i| DirEntry {
        name: format!("f{i}").into_bytes(),
        attrs: file_attrs(1),
    });
    let source = with_root(vec![(b"/many", Node::Dir(entries.collect()))]);
    let mut limits = small_limits();
    limits.max_inodes = 20;
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let many = mounted.at().join("many");
    let listed = within(Duration::from_secs(60), move || {
        std::fs::read_dir(many).map(|d| d.count())
    });
    assert_eq!(listed.map_err(errno).unwrap_err(), Some(EIO));
    assert_eq!(
        mounted.report().problems[0].kind,
        ProblemKind::TooManyInodes { bound: 20 }
    );
}

#[test]
fn a_stalled_remote_open_fails_the_first_read_with_eio_at_the_deadline() {
    let source = with_root(vec![(b"/stuck", Node::Stall { dir: false })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("stuck");
    let read = within(Duration::from_secs(60), move || {
        use std::io::Read;
        // The remote open waits for the first read: borg opens unchanged files too.
        let mut file = std::fs::File::open(file).expect("a local open");
        file.read(&mut [0u8; 4096])
    });
    assert_eq!(read.map_err(errno).unwrap_err(), Some(EIO));
    let opens = source
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(call, _)| *call == "open")
        .count();
    assert_eq!(
        opens, 1,
        "one remote open, its failure kept for the file's other reads"
    );
    let problem = &mounted.report().problems[0];
    assert_eq!(problem.path, b"/stuck");
    assert_eq!(
        problem.kind,
        ProblemKind::Deadline {
            operation: "open",
            after: Duration::from_millis(300)
        }
    );
}

#[test]
fn a_stalled_listing_fails_with_eio_at_the_deadline() {
    let source = with_root(vec![(b"/stuck", Node::Stall { dir: true })]);
    let mut limits = small_limits();
    // Only borg's own listing may meet the stall: no walker ahead of it.
    limits.prefetch_depth = 0;
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let dir = mounted.at().join("stuck");
    let listed = within(Duration::from_secs(60), move || {
        std::fs::read_dir(dir).map(|d| d.count())
    });
    assert_eq!(listed.map_err(errno).unwrap_err(), Some(EIO));
    let kinds: Vec<_> = mounted.report().problems.into_iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [ProblemKind::Deadline {
            operation: "read_dir",
            after: Duration::from_millis(300)
        }]
    );
}

#[test]
fn a_trickling_file_fails_with_eio_instead_of_a_request_per_byte() {
    let source = with_root(vec![(b"/trickle", Node::Trickle)]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("trickle");
    let read = read_hostile(file, 2 << 20);
    assert_eq!(read.map_err(errno).unwrap_err(), Some(EIO));
    assert!(mounted
        .report()
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::TrickleRead));
    let reads = source
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(call, _)| *call == "read")
        .count();
    assert!(reads < 1000, "{reads} reads for a 1 MiB file that trickles");
}

#[test]
fn a_symlink_target_over_the_bound_fails_and_is_reported() {
    let source = with_root(vec![
        (b"/long", Node::Link(vec![b'a'; 300])),
        (b"/ok", Node::Link(b"target".to_vec())),
    ]);
    let mut limits = small_limits();
    limits.max_link_len = 200;
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let (long, ok) = (mounted.at().join("long"), mounted.at().join("ok"));
    let (long, ok) = within(Duration::from_secs(60), move || {
        (std::fs::read_link(long), std::fs::read_link(ok))
    });
    assert_eq!(long.map_err(errno).unwrap_err(), Some(EIO));
    assert_eq!(ok.unwrap(), std::path::Path::new("target"));
    assert_eq!(
        mounted.report().problems[0].kind,
        ProblemKind::LinkTooLong { len: 300, bound: 200 }
    );
}

#[test]
fn listing_a_directory_lists_its_subdirectories_ahead_of_the_reader() {
    let sub = |name: &str| DirEntry {
        name: name.as_bytes().to_vec(),
        attrs: dir_attrs(),
    };
    let source = with_root(vec![
        (b"/a", Node::Dir(vec![sub("b")])),
        (b"/x", Node::Dir(vec![])),
    ]);
    // /a/b is known only to /a's listing: reached by prefetching two levels.
    let mut nodes: HashMap<Vec<u8>, Node> = (*source.nodes).clone();
    nodes.insert(b"/a/b".to_vec(), Node::Dir(vec![]));
    let source = Hostile {
        nodes: Arc::new(nodes),
        ..Hostile::default()
    };
    let mut limits = small_limits();
    limits.prefetch_depth = 2;
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    let root = mounted.at().to_path_buf();
    assert_eq!(
        within(Duration::from_secs(60), move || std::fs::read_dir(root)
            .unwrap()
            .count()),
        2
    );
    let listed = |path: &[u8]| {
        source
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|(c, p)| *c == "read_dir" && p == path)
    };
    let mut polls = 0;
    while !(listed(b"/a") && listed(b"/x") && listed(b"/a/b")) {
        polls += 1;
        assert!(
            polls < 600,
            "subdirectories not listed ahead: {:?}",
            source.calls.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Served from the prefetched listing: no second READDIR of /a.
    let a = mounted.at().join("a");
    assert_eq!(
        within(Duration::from_secs(60), move || std::fs::read_dir(a)
            .unwrap()
            .count()),
        1
    );
    let a_listings = source
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, p)| *c == "read_dir" && p == b"/a")
        .count();
    assert_eq!(a_listings, 1);
}

#[test]
fn opening_and_closing_a_file_without_reading_it_asks_the_remote_side_nothing() {
    let source = with_root(vec![(b"/endless", Node::Endless { listed: 100 })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("endless");
    let size = within(Duration::from_secs(60), move || {
        let opened = std::fs::File::open(file).unwrap();
        opened.metadata().unwrap().len()
    });
    assert_eq!(size, 100, "fstat answered from the listing");
    let calls = source.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|(call, _)| *call == "lstat" || *call == "read_dir"),
        "open, fstat and close of an unread file cost no remote call: {calls:?}"
    );
}

#[test]
fn a_small_file_costs_one_open_and_one_read() {
    let source = with_root(vec![(b"/small", Node::Sized { len: 1000 })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("small");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(data, vec![b's'; 1000]);
    let calls = source.calls.lock().unwrap().clone();
    let count = |name: &str| calls.iter().filter(|(call, _)| *call == name).count();
    // The answer ends short, at the listed size: the end, and the reader's last read (at the
    // end) is answered without asking.
    assert_eq!((count("open"), count("read")), (1, 1), "{calls:?}");
}

#[test]
fn an_empty_file_costs_no_read() {
    let source = with_root(vec![(b"/empty", Node::Sized { len: 0 })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("empty");
    assert_eq!(read_hostile(file, 1 << 20).unwrap(), b"");
    // Listed empty: the kernel asks for nothing (the file is cut at its listed size).
    assert_eq!(source.count("open"), 0);
    assert_eq!(source.count("read"), 0);
}

#[test]
fn with_opens_an_empty_file_costs_one_read() {
    let source = with_root(vec![(b"/empty", Node::Sized { len: 0 })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(with_opens()),
    );
    let file = mounted.at().join("empty");
    assert_eq!(read_hostile(file, 1 << 20).unwrap(), b"");
    // Nothing to read, but a file listed empty may have grown since: one read finds out.
    assert_eq!(source.count("read"), 1);
}

#[test]
fn a_big_file_is_read_ahead_with_each_chunk_asked_once() {
    let source = with_root(vec![(b"/big", Node::Sized { len: 1_000_000 })]);
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("big");
    let data = read_hostile(file, 2 << 20).unwrap();
    assert_eq!(data.len(), 1_000_000);
    // 4096-byte chunks: the 245th ends short at the listed size, which ends the file.
    assert_eq!(source.count("read"), 1_000_000usize.div_ceil(4096));
}

/// Listed at 5000 bytes, 6000 when read (the file grew after its listing).
fn grew() -> Hostile {
    let source = with_root(vec![(b"/grew", Node::Sized { len: 5000 })]);
    let mut nodes: HashMap<Vec<u8>, Node> = (*source.nodes).clone();
    nodes.insert(b"/grew".to_vec(), Node::Sized { len: 6000 });
    Hostile {
        nodes: Arc::new(nodes),
        ..Hostile::default()
    }
}

#[test]
fn a_file_that_grew_is_read_to_its_listed_size_and_reported() {
    let mounted = mount_source(
        grew(),
        MountOptions::new(b"/".to_vec()).with_limits(small_limits()),
    );
    let file = mounted.at().join("grew");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(data.len(), 5000);
    assert_eq!(
        problems(&mounted),
        [(b"/grew".to_vec(), ProblemKind::FileExceedsBound { bound: 5000 })]
    );
}

#[test]
fn with_opens_a_file_that_grew_is_read_on_past_its_listed_size_to_its_end() {
    let mounted = mount_source(grew(), MountOptions::new(b"/".to_vec()).with_limits(with_opens()));
    let file = mounted.at().join("grew");
    let data = read_hostile(file, 1 << 20).unwrap();
    assert_eq!(data.len(), 6000);
    assert_eq!(
        mounted.report().problems,
        [],
        "within the slack: nothing to report"
    );
}

/// A source whose task dies while the kernel waits on a read: the reader gets EIO, not a hang.
/// The deadline is an hour, so only the dead task's own end can answer the read.
#[test]
fn a_source_that_panics_during_a_read_fails_the_read_with_eio() {
    let source = with_root(vec![(b"/dies", Node::Panic)]);
    let mut limits = small_limits();
    limits.request_deadline = Duration::from_secs(3600);
    let mounted = mount_source(source, MountOptions::new(b"/".to_vec()).with_limits(limits));
    let file = mounted.at().join("dies");
    let read = within(Duration::from_secs(60), move || read_at_most(file, 1 << 20));
    assert_eq!(read.map_err(errno).unwrap_err(), Some(EIO));
}

/// Starts a reader of `file` on its own thread; its result arrives on the channel.
fn reader(file: PathBuf) -> std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_at_most(file, 1 << 20));
    });
    rx
}

/// Polls until the source has been asked to read (bounded: a minute).
fn wait_for_a_read(source: &Hostile) {
    for _ in 0..1200 {
        if source.count("read") > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the source was never asked to read");
}

/// Our side stops while the kernel waits on a read the source never answers (its deadline an
/// hour away): the reader is answered (EIO from the cancelled task, or ENOTCONN) at once.
#[test]
fn stopping_the_mount_answers_a_read_still_waiting_on_the_source() {
    let source = with_root(vec![(b"/stalls", Node::StallRead)]);
    let mut limits = small_limits();
    limits.request_deadline = Duration::from_secs(3600);
    let mut mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    let result = reader(mounted.at().join("stalls"));
    wait_for_a_read(&source);
    let mount = mounted.mount.take().expect("mounted");
    within(Duration::from_secs(60), move || mount.stop()).expect("unmount");
    let read = result
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader was answered");
    let errno = read.map_err(errno).unwrap_err();
    assert!(
        errno == Some(EIO) || errno == Some(ENOTCONN),
        "the reader got {errno:?}"
    );
}

/// A request whose task never yields (it blocks the runtime's only thread) cannot be cancelled:
/// stopping the mount aborts the connection, and the reader gets an error instead of waiting in
/// the kernel for ever (killed, it would stay there, unkillable, holding its memory).
#[test]
fn a_read_held_by_a_task_that_never_yields_is_aborted_when_the_mount_stops() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|line| line.split(' ').nth(2) == Some("fusectl")),
        "fusectl is not mounted (mount -t fusectl none /sys/fs/fuse/connections)"
    );
    let source = with_root(vec![(b"/blocks", Node::Block)]);
    // Opens the gate however the test ends, so the runtime's thread is let go.
    struct Release(Arc<Gate>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.open();
        }
    }
    let mut limits = small_limits();
    limits.request_deadline = Duration::from_secs(3600);
    let one_thread = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut mounted = mount_source_on(
        one_thread,
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    // Dropped before the mount's runtime, which waits for its thread.
    let _release = Release(source.gate.clone());
    let result = reader(mounted.at().join("blocks"));
    wait_for_a_read(&source);
    let mount = mounted.mount.take().expect("mounted");
    within(Duration::from_secs(60), move || mount.stop()).expect("unmount");
    let read = result
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader was answered");
    let errno = read.map_err(errno).unwrap_err();
    assert!(
        errno == Some(ECONNABORTED) || errno == Some(ENOTCONN),
        "the reader got {errno:?}, not the connection's abort"
    );
}

/// `/f00` … `/f09`, sizes 1000 … 1009 (a file's length names it), read ahead three at a time.
fn ten_files() -> (Hostile, Limits) {
    let names: Vec<&'static [u8]> = (0..10)
        .map(|i| &*Box::leak(format!("/f{i:02}").into_bytes().into_boxed_slice()))
        .collect();
    let source = with_root(
        names
            .iter()
            .zip(1000..)
            .map(|(name, len)| (*name, Node::Sized { len }))
            .collect(),
    );
    let mut limits = small_limits();
    limits.files_ahead = 3;
    (source, limits)
}

/// The paths of the calls named `call`, in order.
fn calls_of(source: &Hostile, call: &str) -> Vec<String> {
    let calls = source.calls.lock().unwrap();
    calls
        .iter()
        .filter(|(made, _)| *made == call)
        .map(|(_, path)| String::from_utf8_lossy(path).into_owned())
        .collect()
}

/// Polls (bounded: a minute) until `done` holds.
fn wait_until(what: &str, source: &Hostile, done: impl Fn() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what}: not within a minute; calls {:?}",
        source.calls.lock().unwrap()
    );
}

#[test]
fn reading_a_file_reads_the_next_files_ahead_and_each_file_is_read_once() {
    let (source, limits) = ten_files();
    files_are_read_ahead_and_once(source, limits);
}

#[test]
fn with_opens_reading_a_file_reads_the_next_files_ahead_and_each_file_is_read_once() {
    let (source, mut limits) = ten_files();
    limits.no_open = false;
    files_are_read_ahead_and_once(source, limits);
}

fn files_are_read_ahead_and_once(source: Hostile, limits: Limits) {
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    let at = mounted.at().to_path_buf();
    let first = at.join("f00");
    assert_eq!(read_hostile(first, 1 << 20).unwrap(), vec![b's'; 1000]);
    // The three files after it are opened, read and closed without anyone asking.
    wait_until("three files read ahead", &source, || {
        calls_of(&source, "close").len() >= 3
    });
    let mut opened = calls_of(&source, "open");
    opened.sort();
    assert_eq!(
        opened,
        ["/f00", "/f01", "/f02", "/f03"],
        "only the next three, once each"
    );
    // The reader then finds them read: each file, read in order, is opened and read once in all.
    for i in 1..10 {
        let path = at.join(format!("f{i:02}"));
        assert_eq!(
            read_hostile(path, 1 << 20).unwrap(),
            vec![b's'; 1000 + i],
            "f{i:02}"
        );
    }
    let mut opened = calls_of(&source, "open");
    opened.sort();
    let each: Vec<String> = (0..10).map(|i| format!("/f{i:02}")).collect();
    assert_eq!(opened, each, "every file opened once");
    let mut read = calls_of(&source, "read");
    read.sort();
    assert_eq!(read, each, "every file read once (it is smaller than a chunk)");
    // No handle is left open.
    wait_until("every handle closed", &source, || {
        calls_of(&source, "close").len() == 10
    });
}

#[test]
fn files_read_out_of_order_get_their_own_bytes() {
    let (source, limits) = ten_files();
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    let at = mounted.at().to_path_buf();
    // Back and forth: what was read ahead for one position is never served for another file.
    for i in [5, 0, 1, 9, 2, 8, 3, 4, 7, 6, 0, 1] {
        let path = at.join(format!("f{i:02}"));
        assert_eq!(read_hostile(path, 1 << 20).unwrap().len(), 1000 + i, "f{i:02}");
    }
    wait_until("every handle closed", &source, || {
        calls_of(&source, "close").len() == calls_of(&source, "open").len()
    });
}

#[test]
fn files_read_without_an_open_are_let_go_beyond_the_bound_and_their_handles_closed() {
    use std::io::Read;
    let source = with_root(vec![
        (b"/a", Node::Sized { len: 1_000_000 }),
        (b"/b", Node::Sized { len: 1_000_000 }),
    ]);
    let mut limits = small_limits();
    limits.files_ahead = 0;
    limits.files_reading = 1;
    let mounted = mount_source(
        source.clone(),
        MountOptions::new(b"/".to_vec()).with_limits(limits),
    );
    let at = mounted.at().to_path_buf();
    // The start of each (never its end): only the bound lets /a go when /b is read.
    within(Duration::from_secs(60), move || {
        for name in ["a", "b"] {
            let mut start = [0u8; 4096];
            std::fs::File::open(at.join(name))
                .unwrap()
                .read_exact(&mut start)
                .unwrap();
            assert_eq!(start, [b's'; 4096]);
        }
    });
    wait_until("the handle of /a closed", &source, || {
        calls_of(&source, "close") == ["/a"]
    });
    assert_eq!(calls_of(&source, "open"), ["/a", "/b"]);
}
