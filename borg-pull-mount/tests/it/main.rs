//! borg-pull-mount against real parts: OpenSSH's sftp-server (a child on stdin/stdout), the
//! kernel's FUSE, Debian's borg; and in-process hostile sources for the bounds.

mod borg;
mod bounds;
mod common;
mod stale;

mod tree;
mod user;
