//! borg-pull-sftp's tests: one binary. `real` runs OpenSSH's sftp-server as a child (read-write
//! and `-R`); `hostile` scripts an in-process server per case, one named test per bound.

mod hostile;
mod peer;
mod real;
mod server;
