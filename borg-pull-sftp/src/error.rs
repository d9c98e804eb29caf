//! The one error type of borg-pull-sftp.
//!
//! Each variant says whose failure it is: the server's answer to one request (a status), a bound
//! this client enforces, a deadline, or the end of the session (a protocol violation by the peer,
//! the transport closing, or [`crate::Client::shutdown`]). Messages are lowercase and name the
//! request and its path, the cause and, where it helps, the fix.

use std::fmt;
use std::time::Duration;

/// Result alias for borg-pull-sftp.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SFTP request an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// The INIT / VERSION exchange that starts a session.
    Init,
    /// SSH_FXP_OPEN.
    Open,
    /// SSH_FXP_CLOSE.
    Close,
    /// SSH_FXP_READ.
    Read,
    /// SSH_FXP_WRITE.
    Write,
    /// SSH_FXP_LSTAT.
    Lstat,
    /// SSH_FXP_FSTAT.
    Fstat,
    /// SSH_FXP_SETSTAT.
    Setstat,
    /// SSH_FXP_OPENDIR.
    Opendir,
    /// SSH_FXP_READDIR.
    Readdir,
    /// SSH_FXP_REMOVE.
    Remove,
    /// SSH_FXP_MKDIR.
    Mkdir,
    /// SSH_FXP_RMDIR.
    Rmdir,
    /// SSH_FXP_REALPATH.
    Realpath,
    /// SSH_FXP_STAT.
    Stat,
    /// SSH_FXP_RENAME.
    Rename,
    /// SSH_FXP_READLINK.
    Readlink,
    /// SSH_FXP_SYMLINK.
    Symlink,
    /// posix-rename@openssh.com.
    PosixRename,
    /// hardlink@openssh.com.
    Hardlink,
    /// limits@openssh.com.
    Limits,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Init => "init",
            Op::Open => "open",
            Op::Close => "close",
            Op::Read => "read",
            Op::Write => "write",
            Op::Lstat => "lstat",
            Op::Fstat => "fstat",
            Op::Setstat => "setstat",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Remove => "remove",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Realpath => "realpath",
            Op::Stat => "stat",
            Op::Rename => "rename",
            Op::Readlink => "readlink",
            Op::Symlink => "symlink",
            Op::PosixRename => "posix-rename@openssh.com",
            Op::Hardlink => "hardlink@openssh.com",
            Op::Limits => "limits@openssh.com",
        })
    }
}

/// One request, for messages: its kind and the path it was about (bytes, shown escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What was asked.
    pub op: Op,
    /// The path it was about (empty for requests without one).
    pub path: Vec<u8>,
}

impl Request {
    pub(crate) fn new(op: Op, path: &[u8]) -> Self {
        Request {
            op,
            path: path.to_vec(),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.op)
        } else {
            write!(f, "{} {}", self.op, Escaped(&self.path))
        }
    }
}

/// Bytes shown in quotes, with what is not printable ASCII escaped (`\xff`), so a hostile name
/// cannot forge log lines.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in std::ascii::escape_default(b) {
                fmt::Write::write_char(f, c as char)?;
            }
        }
        f.write_str("\"")
    }
}

/// A bound of [`crate::Limits`] that a reply went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bound {
    /// `max_dir_entries`: entries in one directory listing.
    DirEntries,
    /// `max_name_len`: bytes in one entry name.
    NameLength,
    /// `max_link_len`: bytes in a symlink target or resolved path.
    LinkLength,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::DirEntries => "entries in one directory (max_dir_entries)",
            Bound::NameLength => "bytes in one name (max_name_len)",
            Bound::LinkLength => "bytes in a link target or path (max_link_len)",
        })
    }
}

/// How the peer broke the SFTP protocol. Any of these ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A packet announced a length above `max_packet`; nothing of it was read.
    PacketTooLong {
        /// The announced length.
        len: u32,
        /// `Limits::max_packet`.
        max: u32,
    },
    /// A packet too short to hold its type and request id.
    PacketTooShort {
        /// The announced length.
        len: u32,
    },
    /// A reply to a request id that is not outstanding.
    UnknownId {
        /// The id in the reply.
        id: u32,
        /// The reply's packet type.
        packet_type: u8,
    },
    /// A reply of a type the request cannot have.
    UnexpectedType {
        /// The request it answered.
        op: Op,
        /// The reply's packet type.
        packet_type: u8,
    },
    /// A field ran past the end of its packet, or bytes were left over after the last one.
    Malformed {
        /// The reply's packet type.
        packet_type: u8,
        /// Which field.
        field: &'static str,
    },
    /// A DATA reply longer than the READ asked for.
    DataTooLong {
        /// Bytes asked for.
        requested: u32,
        /// Bytes sent.
        got: u32,
    },
    /// A READDIR reply with no entries (a listing that would never advance).
    EmptyName,
    /// A NAME reply to READLINK or REALPATH without exactly one entry.
    NameCount {
        /// The request.
        op: Op,
        /// Entries in the reply.
        count: u32,
    },
    /// A handle longer than the protocol's 256 bytes.
    HandleTooLong {
        /// Its length.
        len: u32,
    },
    /// Attribute flags this protocol version does not have.
    UnknownAttrFlags {
        /// The flags.
        flags: u32,
    },
    /// The first packet was not VERSION.
    NotVersion {
        /// Its type.
        packet_type: u8,
    },
    /// VERSION announced more extensions than `max_extensions`.
    TooManyExtensions {
        /// `Limits::max_extensions`.
        max: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::PacketTooLong { len, max } => {
                write!(
                    f,
                    "a packet of {len} bytes, above the limit of {max} (max_packet)"
                )
            }
            Violation::PacketTooShort { len } => write!(f, "a packet of {len} bytes, too short for a reply"),
            Violation::UnknownId { id, packet_type } => {
                write!(
                    f,
                    "a reply (type {packet_type}) to request id {id}, which is not outstanding"
                )
            }
            Violation::UnexpectedType { op, packet_type } => {
                write!(f, "a reply of type {packet_type} to {op}, which cannot have one")
            }
            Violation::Malformed { packet_type, field } => {
                write!(f, "a reply of type {packet_type} with a malformed {field}")
            }
            Violation::DataTooLong { requested, got } => {
                write!(f, "{got} bytes of data for a read of {requested}")
            }
            Violation::EmptyName => f.write_str("a directory listing reply without entries"),
            Violation::NameCount { op, count } => {
                write!(f, "{count} names in the reply to {op} (one expected)")
            }
            Violation::HandleTooLong { len } => write!(f, "a handle of {len} bytes (at most 256)"),
            Violation::UnknownAttrFlags { flags } => {
                write!(f, "attribute flags {flags:#x} unknown to SFTP v3")
            }
            Violation::NotVersion { packet_type } => {
                write!(f, "a first packet of type {packet_type} instead of VERSION")
            }
            Violation::TooManyExtensions { max } => write!(f, "more than {max} extensions (max_extensions)"),
        }
    }
}

/// Everything that can go wrong with an SFTP request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server: no such file (SSH_FX_NO_SUCH_FILE).
    #[error("sftp {request}: no such file or directory on the client")]
    NoSuchFile {
        /// The request.
        request: Request,
    },
    /// The server: permission denied (SSH_FX_PERMISSION_DENIED), also what a read-only server
    /// (`internal-sftp -R`) answers to writes.
    #[error(
        "sftp {request}: permission denied by the client's SFTP server (a read-only key \
         `internal-sftp -R` refuses every write)"
    )]
    PermissionDenied {
        /// The request.
        request: Request,
    },
    /// The server: failure (SSH_FX_FAILURE) with its message.
    #[error("sftp {request}: failed on the client: {message}")]
    Failure {
        /// The request.
        request: Request,
        /// The server's message (cut at `MAX_STATUS_MESSAGE`).
        message: String,
    },
    /// The server does not support the request (SSH_FX_OP_UNSUPPORTED, or an extension it did
    /// not announce).
    #[error("sftp {request}: not supported by the client's SFTP server")]
    Unsupported {
        /// The request.
        request: Request,
    },
    /// The server answered with another status code.
    #[error("sftp {request}: status {code} from the client's SFTP server: {message}")]
    Status {
        /// The request.
        request: Request,
        /// The SSH_FX_* code.
        code: u32,
        /// The server's message (cut at `MAX_STATUS_MESSAGE`).
        message: String,
    },
    /// A name from the server that cannot be a file name (contains '/' or NUL, or is empty).
    #[error(
        "sftp {request}: the client's SFTP server sent the name {}, which {reason}; refused so \
         nothing outside the requested directory is reached",
        Escaped(name)
    )]
    BadName {
        /// The request.
        request: Request,
        /// The name, as sent (bounded by `max_name_len`).
        name: Vec<u8>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reply went over one of [`crate::Limits`].
    #[error("sftp {request}: the client's SFTP server sent more {bound} than the limit of {limit}")]
    TooBig {
        /// The request.
        request: Request,
        /// Which bound.
        bound: Bound,
        /// Its value.
        limit: u64,
    },
    /// No reply within `Limits::request_timeout`. The session stays open: the late reply is
    /// dropped when it comes.
    #[error(
        "sftp {request}: no reply within {timeout:?}; the client's SFTP server stalls (raise the \
         request timeout if the client is only slow)"
    )]
    Deadline {
        /// The request.
        request: Request,
        /// `Limits::request_timeout`.
        timeout: Duration,
    },
    /// The server broke the protocol; the session is over.
    #[error("sftp: the client's SFTP server broke the protocol: {violation}; session closed")]
    Protocol {
        /// How.
        violation: Violation,
    },
    /// The server speaks an SFTP version below 3.
    #[error("sftp: the client's SFTP server speaks version {version}; version 3 is needed (OpenSSH has it)")]
    UnsupportedVersion {
        /// The version it announced.
        version: u32,
    },
    /// The byte stream ended or failed; the session is over.
    #[error("sftp: the connection to the client's SFTP server closed: {reason}")]
    Closed {
        /// What happened (EOF, or the I/O error).
        reason: String,
    },
    /// [`crate::Client::shutdown`] was called.
    #[error("sftp: the session was shut down")]
    Shutdown,
}

impl Error {
    /// The errno a file system built on this client (FUSE) answers with.
    pub fn to_errno(&self) -> i32 {
        match self {
            Error::NoSuchFile { .. } => libc::ENOENT,
            Error::PermissionDenied { .. } => libc::EACCES,
            Error::Unsupported { .. } => libc::EOPNOTSUPP,
            Error::TooBig {
                bound: Bound::NameLength | Bound::LinkLength,
                ..
            } => libc::ENAMETOOLONG,
            Error::Deadline { .. } => libc::ETIMEDOUT,
            Error::Closed { .. } | Error::Shutdown => libc::ENOTCONN,
            Error::Failure { .. }
            | Error::Status { .. }
            | Error::BadName { .. }
            | Error::TooBig { .. }
            | Error::Protocol { .. }
            | Error::UnsupportedVersion { .. } => libc::EIO,
        }
    }

    /// Whether the session is over: every later request fails with this same error.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            Error::Protocol { .. }
                | Error::UnsupportedVersion { .. }
                | Error::Closed { .. }
                | Error::Shutdown
        )
    }

    /// Whether this is the server's answer to one request (an SSH_FX_* status).
    pub fn is_status(&self) -> bool {
        matches!(
            self,
            Error::NoSuchFile { .. }
                | Error::PermissionDenied { .. }
                | Error::Failure { .. }
                | Error::Unsupported { .. }
                | Error::Status { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_request_with_hostile_bytes_escaped() {
        let e = Error::NoSuchFile {
            request: Request::new(Op::Lstat, b"/a\nb\xff"),
        };
        assert_eq!(
            e.to_string(),
            r#"sftp lstat "/a\nb\xff": no such file or directory on the client"#
        );
    }
}
