//! The borg jobs, each carried out over one SSH session.
//!
//! - [`mod@pull`]: one whole pull ([`pull::pull`] with [`pull::PullOptions`]): the client's
//!   `borg create` reaching the server's `borg serve` by one of three ways ([`pull::via`]), run by
//!   the one script on the client ([`pull::script`]).
//! - [`sftp_pull`]: `pull --via sftp`: the client's tree mounted here over SFTP, this server's
//!   borg create in it.
//! - [`restore_tar`]: `restore-tar`: borg export-tar here, streamed into `tar -x` on the client.
//! - [`sftp_restore`]: `restore-tar --via sftp`: borg export-tar here, its entries written on the
//!   client over SFTP.
//! - `runner`: what pull and restore-tar share: the client script put together from `.sh` files, its exec, its
//!   report reader, step deadlines, and the run guard on the client.

pub mod pull;
pub mod restore_tar;
mod runner;
pub mod sftp_pull;
pub mod sftp_restore;
#[cfg(test)]
mod shell_tests;
