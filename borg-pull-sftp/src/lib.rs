//! borg-pull-sftp: an SFTP v3 client (draft-ietf-secsh-filexfer-02, what OpenSSH speaks) over any
//! byte stream, for a server that is not trusted.
//!
//! It knows nothing of SSH or FUSE: give it a russh channel stream, or an `sftp-server` child's
//! stdin and stdout joined with [`tokio::io::join`]. Every reply is checked before a caller sees it
//! ([`Limits`]: packet size before allocation, request ids, reply types, field bounds, names,
//! directory sizes, link lengths, read lengths); every request has a deadline; a protocol violation
//! ends the session and fails every request with the same [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), borg_pull_sftp::Error> {
//! let mut child = tokio::process::Command::new("/usr/lib/openssh/sftp-server")
//!     .stdin(std::process::Stdio::piped())
//!     .stdout(std::process::Stdio::piped())
//!     .kill_on_drop(true)
//!     .spawn()
//!     .expect("sftp-server");
//! let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
//! let client = borg_pull_sftp::Client::start(stream, borg_pull_sftp::Limits::default()).await?;
//! for entry in client.read_dir(b"/etc").await? {
//!     println!("{:?} {:?}", entry.name, entry.attrs.file_type());
//! }
//! client.shutdown().await
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attrs;
mod client;
mod error;
pub mod limits;
mod session;
mod wire;

pub use attrs::{Attrs, DirEntry, FileType};
pub use client::{Client, Extensions, Handle, OpenFlags, ReadData, ServerLimits};
pub use error::{Bound, Error, Escaped, Op, Request, Result, Violation};
pub use limits::Limits;
