//! What `check-config --connect` judges on this server, the way `run` will meet it: whether the
//! client's repository opens with the passphrase the config gives, and what a relay's
//! `--version` says.
//!
//! The repository is opened by the same local borg run as `status` and retention use
//! ([`BorgRun`]: the passphrase in borg's environment, never in its argv), with
//! `BORG_EXIT_CODES=modern` so that borg 1.4 and 2 name the failure by its code (borg 1.2 has only
//! rc 2; its message then tells the cases apart).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use borg_pull_core::version::{BorgVersion, Generation};

use crate::config::{Client, PassphraseSource, ServerSettings};
use crate::limits::{BorgLimits, LIST_LOCK_WAIT_SECS, MAX_LIST_JSON, RELAY_VERSION_TIMEOUT};
use crate::server_borg::{BorgError, BorgRun};

/// borg's modern exit codes (borg 1.4 with `BORG_EXIT_CODES=modern`, borg 2 by default) of the
/// failures told apart here; `borg/helpers/errors.py` and `borg/repository.py`.
mod rc {
    /// `Repository.DoesNotExist`.
    pub const REPO_DOES_NOT_EXIST: i32 = 13;
    /// `Repository.InvalidRepository`.
    pub const INVALID_REPOSITORY: i32 = 15;
    /// `Repository.InvalidRepositoryConfig`.
    pub const INVALID_REPOSITORY_CONFIG: i32 = 16;
    /// `PasscommandFailure`.
    pub const PASSCOMMAND_FAILURE: i32 = 51;
    /// `PassphraseWrong`.
    pub const PASSPHRASE_WRONG: i32 = 52;
    /// `LockTimeout`.
    pub const LOCK_TIMEOUT: i32 = 73;
    /// `LockFailed`.
    pub const LOCK_FAILED: i32 = 74;
}

/// The repository opened: borg read its manifest with the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoOpens {
    /// It opened (encrypted with this passphrase, or unencrypted).
    Yes,
    /// It is locked by another borg, so the passphrase could not be tried: a backup running now,
    /// or a stale lock that will make the next run wait and fail.
    Locked {
        /// borg's message naming the lock.
        said: String,
    },
}

/// Why the repository will not open for `run`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoProblem {
    /// Nothing at the configured path.
    #[error("the repository {} does not exist on this server (borg init it first, with the passphrase the config gives; or fix `repo`)", .repo.display())]
    Missing {
        /// The path.
        repo: PathBuf,
    },
    /// Something is there, but not a borg repository (of this borg's kind).
    #[error("{} on this server is not a borg repository ({said}): fix `repo`, or borg init it", .repo.display())]
    NotARepository {
        /// The path.
        repo: PathBuf,
        /// borg's message.
        said: String,
    },
    /// borg got a passphrase and it does not open the repository.
    #[error("the passphrase from {from} does not open the repository {} ({said}): put the repository's passphrase there (the one given to borg init)", .repo.display())]
    WrongPassphrase {
        /// The path.
        repo: PathBuf,
        /// Where the passphrase came from (config key and file or command).
        from: String,
        /// borg's message.
        said: String,
    },
    /// The passphrase could not be had: its file is unreadable or unsafe, or the passcommand
    /// failed.
    #[error("cannot get the passphrase of {} from {from}: {said}", .repo.display())]
    PassphraseUnavailable {
        /// The path.
        repo: PathBuf,
        /// Where the passphrase comes from.
        from: String,
        /// Why not.
        said: String,
    },
    /// The server's borg could not be started.
    #[error("cannot run this server's borg {} to open the repository {}: {said} (fix `borg` in [server])", .borg.display(), .repo.display())]
    BorgUnavailable {
        /// The program.
        borg: PathBuf,
        /// The path.
        repo: PathBuf,
        /// Why.
        said: String,
    },
    /// borg ran past its deadline.
    #[error("borg {what} on {} ran longer than {secs}s and was stopped (a hung disk or NFS mount?)", .repo.display())]
    TimedOut {
        /// The subcommand.
        what: &'static str,
        /// The path.
        repo: PathBuf,
        /// The deadline.
        secs: u64,
    },
    /// Any other failure of borg.
    #[error("borg {what} on {} exited with {rc}{said}", .repo.display())]
    Borg {
        /// The subcommand.
        what: &'static str,
        /// The path.
        repo: PathBuf,
        /// borg's exit code.
        rc: i32,
        /// `: ` and borg's last message, or nothing.
        said: String,
    },
}

/// What kind of problem a [`RepoProblem`] is. Not `#[non_exhaustive]`: a new kind must get an
/// exit code in every binary before it compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoProblemKind {
    /// The passphrase is wrong or cannot be had.
    Passphrase,
    /// The server's borg cannot be started.
    BorgUnavailable,
    /// The repository is missing, not one, or borg failed on it (or hung).
    Unreadable,
}

impl RepoProblem {
    /// The kind of this problem (an exhaustive match: a new variant must be classified).
    pub fn kind(&self) -> RepoProblemKind {
        match self {
            RepoProblem::WrongPassphrase { .. } | RepoProblem::PassphraseUnavailable { .. } => {
                RepoProblemKind::Passphrase
            }
            RepoProblem::BorgUnavailable { .. } => RepoProblemKind::BorgUnavailable,
            RepoProblem::Missing { .. }
            | RepoProblem::NotARepository { .. }
            | RepoProblem::TimedOut { .. }
            | RepoProblem::Borg { .. } => RepoProblemKind::Unreadable,
        }
    }
}

/// Where `client`'s passphrase comes from, in the config's words.
fn passphrase_source(client: &Client) -> String {
    match &client.passphrase {
        PassphraseSource::Inherited => {
            "BORG_PASSPHRASE/BORG_PASSCOMMAND of this process (no passphrase_file or passcommand in the config)"
                .into()
        }
        PassphraseSource::File(path) => format!("passphrase_file {}", path.display()),
        PassphraseSource::Command(command) => format!("passcommand {command:?}"),
    }
}

/// The subcommand that lists a repository's archives: it reads the manifest, which needs the key
/// and so the passphrase, and nothing more (no cache, unlike `info`).
fn list_command(version: Option<&BorgVersion>) -> &'static str {
    match version.map(BorgVersion::generation) {
        None | Some(Generation::Borg1) => "list",
        Some(Generation::Borg2Segments) => "rlist",
        Some(_) => "repo-list",
    }
}

/// Opens `client`'s repository with this server's borg (`version`: its version, which decides
/// the subcommand) and the passphrase the config gives, as `status` and retention will.
pub async fn repository(
    client: &Client,
    server: &ServerSettings,
    version: Option<&BorgVersion>,
    limits: &BorgLimits,
) -> Result<RepoOpens, RepoProblem> {
    let repo = client.repo.clone();
    // Other errors (a directory this user may not search) are borg's to name.
    if let Err(e) = std::fs::symlink_metadata(&repo) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(RepoProblem::Missing { repo });
        }
    }
    let what = list_command(version);
    let mut args: Vec<OsString> = [what, "--short", "--last", "1", "--lock-wait"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(LIST_LOCK_WAIT_SECS.to_string().into());
    // BORG_REPO names the repository the same way for every version (a positional in borg 1,
    // `-r` in borg 2); a path that is not UTF-8 cannot be an environment value here.
    let repo_env = repo.as_os_str().to_str();
    if repo_env.is_none() {
        if what != "list" {
            args.push("-r".into());
        }
        args.push(repo.clone().into());
    }
    let mut env = vec![("BORG_EXIT_CODES", "modern")];
    if let Some(path) = repo_env {
        env.push(("BORG_REPO", path));
    }
    let run = BorgRun {
        client,
        borg: &server.borg,
        args,
        timeout: limits.list,
        kill_grace: limits.kill_grace,
        // Only the archive's name, kept so it is not logged.
        capture_stdout: Some(MAX_LIST_JSON),
        env: &env,
        quiet: true,
    };
    let finished = match run.run().await {
        Ok(finished) => finished,
        Err(BorgError::Passphrase(e)) => {
            return Err(RepoProblem::PassphraseUnavailable {
                repo,
                from: passphrase_source(client),
                said: borg_pull_core::error::Chain(&e).to_string(),
            })
        }
        Err(e) => {
            return Err(RepoProblem::BorgUnavailable {
                borg: server.borg.clone(),
                repo,
                said: e.to_string(),
            })
        }
    };
    if finished.timed_out {
        return Err(RepoProblem::TimedOut {
            what,
            repo,
            secs: limits.list.as_secs(),
        });
    }
    let said = finished.last_error.unwrap_or_default();
    judge(finished.rc, said, repo, client, what)
}

/// What borg's exit code and last message mean.
fn judge(
    rc: i32,
    said: String,
    repo: PathBuf,
    client: &Client,
    what: &'static str,
) -> Result<RepoOpens, RepoProblem> {
    let lower = said.to_ascii_lowercase();
    // borg 1.2 exits 2 for all of these; its messages are stable across 1.x and 2.
    let says = |needle: &str| lower.contains(needle);
    match rc {
        0 | 1 => Ok(RepoOpens::Yes),
        rc::PASSPHRASE_WRONG => Err(RepoProblem::WrongPassphrase {
            repo,
            from: passphrase_source(client),
            said,
        }),
        rc::PASSCOMMAND_FAILURE => Err(RepoProblem::PassphraseUnavailable {
            repo,
            from: passphrase_source(client),
            said,
        }),
        rc::REPO_DOES_NOT_EXIST => Err(RepoProblem::Missing { repo }),
        rc::INVALID_REPOSITORY | rc::INVALID_REPOSITORY_CONFIG => {
            Err(RepoProblem::NotARepository { repo, said })
        }
        rc::LOCK_TIMEOUT | rc::LOCK_FAILED => Ok(RepoOpens::Locked { said }),
        2 if says("passphrase") && says("incorrect") => Err(RepoProblem::WrongPassphrase {
            repo,
            from: passphrase_source(client),
            said,
        }),
        2 if says("passcommand") => Err(RepoProblem::PassphraseUnavailable {
            repo,
            from: passphrase_source(client),
            said,
        }),
        2 if says("does not exist") => Err(RepoProblem::Missing { repo }),
        2 if says("is not a valid repository") => Err(RepoProblem::NotARepository { repo, said }),
        2 if says("lock") && says("timeout") => Ok(RepoOpens::Locked { said }),
        rc => Err(RepoProblem::Borg {
            what,
            repo,
            rc,
            said: if said.is_empty() {
                said
            } else {
                format!(": {said}")
            },
        }),
    }
}

/// What a relay's `--version` said, compared with this server's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVersion {
    /// `borg-pull-relay VERSION`, the same as the server's.
    Same(String),
    /// `borg-pull-relay VERSION`, another one. It still works while the relay only moves bytes.
    Different(String),
    /// A borg-pull-relay from before `--version` existed (it answered with its usage).
    Older,
    /// Something else: the first line it printed, escaped.
    NotOurs(String),
}

/// Judges what `RELAY --version` printed (stdout and stderr) against `ours`.
pub fn relay_version(output: &[u8], ours: &str) -> RelayVersion {
    let text = String::from_utf8_lossy(output);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    match first.strip_prefix("borg-pull-relay ") {
        Some(version) if version.trim() == ours => RelayVersion::Same(version.trim().to_owned()),
        Some(version) if !version.trim().is_empty() && !version.contains(char::is_whitespace) => {
            RelayVersion::Different(borg_pull_core::text::escape_for_log(version.trim().as_bytes()))
        }
        _ if text.contains("Usage: borg-pull-relay") => RelayVersion::Older,
        _ => RelayVersion::NotOurs(borg_pull_core::text::escape_truncated(first.as_bytes(), 200)),
    }
}

/// Why the relay `run` would install cannot be checked on this server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalRelayProblem {
    /// It could not be run (missing, not executable).
    #[error("cannot run the relay to install, {}: {cause}", .path.display())]
    Spawn {
        /// The file.
        path: PathBuf,
        /// Why (named in the message, so not a source).
        cause: std::io::Error,
    },
    /// It did not answer `--version` in time.
    #[error("the relay to install, {}, did not answer --version within {}s", .path.display(), .secs)]
    TimedOut {
        /// The file.
        path: PathBuf,
        /// The deadline.
        secs: u64,
    },
}

/// Runs the relay `run` would install (on this server) with `--version`, bounded by
/// [`RELAY_VERSION_TIMEOUT`]; returns what it printed.
pub async fn local_relay_version(path: &Path) -> Result<Vec<u8>, LocalRelayProblem> {
    local_relay_version_within(path, RELAY_VERSION_TIMEOUT).await
}

async fn local_relay_version_within(path: &Path, timeout: Duration) -> Result<Vec<u8>, LocalRelayProblem> {
    let mut cmd = tokio::process::Command::new(path);
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|cause| LocalRelayProblem::Spawn {
        path: path.to_owned(),
        cause,
    })?;
    // Dropping the future on timeout kills it (kill_on_drop) and tokio reaps it.
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            text.truncate(4096);
            Ok(text)
        }
        Ok(Err(cause)) => Err(LocalRelayProblem::Spawn {
            path: path.to_owned(),
            cause,
        }),
        Err(_) => Err(LocalRelayProblem::TimedOut {
            path: path.to_owned(),
            secs: timeout.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_versions_are_told_apart() {
        assert_eq!(
            relay_version(b"borg-pull-relay 0.1.0\n", "0.1.0"),
            RelayVersion::Same("0.1.0".into())
        );
        assert_eq!(
            relay_version(b"borg-pull-relay 0.2.0\n", "0.1.0"),
            RelayVersion::Different("0.2.0".into())
        );
        let old = b"error: the following required arguments were not provided:\n  --socket <PATH>\n\n\
Usage: borg-pull-relay --socket <PATH> [SSH_ARGS]...\n";
        assert_eq!(relay_version(old, "0.1.0"), RelayVersion::Older);
        assert_eq!(
            relay_version(b"cat (GNU coreutils) 9.1\n", "0.1.0"),
            RelayVersion::NotOurs("cat (GNU coreutils) 9.1".into())
        );
        assert_eq!(relay_version(b"", "0.1.0"), RelayVersion::NotOurs(String::new()));
    }

    #[test]
    fn list_subcommand_follows_the_generation() {
        let v = |s| BorgVersion::parse(s).unwrap();
        assert_eq!(list_command(Some(&v("borg 1.2.4"))), "list");
        assert_eq!(list_command(Some(&v("borg 2.0.0b5"))), "rlist");
        assert_eq!(list_command(Some(&v("borg 2.0.0b25"))), "repo-list");
        assert_eq!(list_command(None), "list");
    }
}
