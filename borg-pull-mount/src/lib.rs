//! A read-only FUSE mount of a remote tree, made for borg's access pattern.
//!
//! borg walks one directory at a time, stats every entry, probes xattrs and ACLs and reads each
//! file front to back. Over a network each of those is a round trip; this mount answers them from
//! what it already has: a directory listing carries every entry's attributes (kept for a TTL, also
//! handed to the kernel with READDIRPLUS), xattr and ACL probes are answered locally (SFTP carries
//! none), subdirectories are listed ahead of borg by a bounded prefetch walker, and reads keep a
//! window of requests in flight ahead of a sequential reader.
//!
//! The remote side is untrusted: every call has a deadline, listings, inodes, depth, link targets,
//! read-ahead memory and the bytes read from one file are bounded ([`limits`]), and what hit a
//! bound is listed in [`Mount::report`]. No caller is ever left waiting in the kernel: stopping
//! (or a FUSE session that ends under us) cancels every request task, whose replies answer EIO,
//! and aborts the connection if a request still has no answer (a killed caller would otherwise
//! wait there, unkillable, for ever).
//!
//! The tree comes from a [`Source`] (borg-pull-sftp's client; hostile ones in the tests).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod error;
mod fs;
mod fusermount;
mod inodes;
pub mod limits;
mod mount;
pub mod remote;
mod report;
mod source;
mod wait;

pub use error::Error;
pub use limits::Limits;
pub use mount::{Mount, MountOptions};
pub use report::{Problem, ProblemKind, Report};
pub use source::Source;
