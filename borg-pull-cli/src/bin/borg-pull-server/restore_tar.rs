//! `borg-pull-server restore-tar`: arguments, signals, a call to
//! `borg_pull_tunnel::jobs::restore_tar::restore_tar`, exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_cli::{exit, hint, signals};
use borg_pull_tunnel::jobs::pull::PullEnv;
use borg_pull_tunnel::jobs::restore_tar::{restore_tar, RestoreOptions, RestoreOutcome};
use borg_pull_tunnel::jobs::sftp_restore::{restore_sftp, SftpRestoreOutcome};
use borg_pull_tunnel::local::passphrase::Passphrase;
use borg_pull_tunnel::Error;

use crate::connect_args::ConnectArgs;

/// Exit codes of `restore-tar` and what tar can restore, shown in its `--help`.
pub fn after_help() -> String {
    format!(
        "What tar restores: borg export-tar writes the GNU tar format, a lossy conversion (borg's
docs): no ACLs, extended attributes (xattrs) or BSD flags, no atime/ctime, mtimes in whole
seconds; sparse files arrive with their holes filled (export-tar has no --sparse). Hard links,
symlinks, modes and owners are kept; owners by name unless --numeric-owner, and only when tar
runs as root (then also with -p, exact modes). For ACLs, xattrs, sparse files and exact times,
run borg extract on the client instead: pull --remote-dir DIR -- extract ::NAME.

Exit codes: the worse of borg export-tar's and tar's own codes (0 success, 1 warning, 2 error,
128+N killed by signal N), each named in the last message; if tar ends before the archive was
sent in full, borg export-tar is stopped and the code is tar's (2 if tar said 0).
Failures of borg-pull-server itself:
{}

{}

On the client: a POSIX login shell and tar (GNU tar or one that takes -C, -x, -f - and, with
--numeric-owner, --numeric-owner); no borg and no relay. DIR must exist and be writable by the
login user.

--via sftp: nothing runs on the client; each entry is written over its SFTP server (a key
limited to `restrict,command=\"internal-sftp\"` is enough; `internal-sftp -R` is read-only and
refused). Directories, files, symlinks (created last), hard links (hardlink@openssh.com), modes
and mtimes are restored; owners by number, only when the login user is root there. Not restored
over SFTP: ACLs, xattrs, BSD flags, devices and FIFOs (skipped, exit 1), the times and owners
of symlinks. Exit: 0 restored, 1 a warning, borg's code if it failed, {unsafe} unsafe names
refused, {refused} writes refused by the client. Logging goes to stderr; {var} (e.g. {var}=debug) overrides -v.",
        exit::lines(exit::RESTORE).trim_end(),
        exit::range_note(),
        var = borg_pull_cli::runtime::LOG_VAR,
        unsafe = exit::RESTORE_UNSAFE_NAMES.code,
        refused = exit::RESTORE_WRITES_REFUSED.code,
    )
}

/// Arguments of `borg-pull-server restore-tar`.
///
/// Runs `borg export-tar REPO::NAME - [PATH...]` on this server and streams the tar into
/// `tar -C DIR -x -f -` on the client over SSH: borg's `borg export-tar ... - | ssh root@host
/// 'tar -C DIR -x'` recipe, in-process. The client needs no borg and no relay, e.g.
/// `borg-pull-server restore-tar --repo /srv/borg/c1 --archive c1-2024-05-01 --remote-dir /
/// --numeric-owner root@c1 etc home/alice`.
#[derive(Debug, clap::Args)]
pub struct RestoreTarArgs {
    #[command(flatten)]
    connect: ConnectArgs,

    /// The repository on this server (absolute path).
    #[arg(long, value_name = "REPO")]
    repo: PathBuf,

    /// The archive to restore.
    #[arg(long, value_name = "NAME")]
    archive: OsString,

    /// The directory on the client tar unpacks into (`/` for a full restore); it must exist.
    #[arg(long, value_name = "DIR")]
    remote_dir: OsString,

    /// The borg program on this server (runs `borg export-tar`).
    #[arg(long, value_name = "PATH", default_value = "borg")]
    borg: PathBuf,

    /// File holding the repository passphrase (first line). Otherwise this server's
    /// BORG_PASSPHRASE or BORG_PASSCOMMAND is used. It reaches borg export-tar through its
    /// environment, never through an argv.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// tar --numeric-owner on the client: owners by the archive's uid/gid, not by user and group
    /// names (for a client whose users differ, e.g. a rescue system).
    #[arg(long)]
    numeric_owner: bool,

    /// The tar program on the client.
    #[arg(long, value_name = "PATH", default_value = "tar")]
    remote_tar: OsString,

    /// How the entries reach the client: `tar` (its tar unpacks the stream) or `sftp` (each
    /// entry written over its SFTP server; nothing runs there).
    #[arg(long, value_name = "METHOD", default_value = "tar")]
    via: RestoreVia,

    /// The client: [USER@]HOST.
    #[arg(value_name = "[USER@]HOST")]
    destination: String,

    /// Only these paths of the archive (as borg export-tar takes them; patterns allowed).
    #[arg(value_name = "PATH")]
    paths: Vec<OsString>,
}

/// `--via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RestoreVia {
    /// tar on the client unpacks the stream.
    Tar,
    /// Each entry is written over the client's SFTP server.
    Sftp,
}

/// Runs `restore-tar`; returns the worse of borg's and tar's codes, or our own (200 and up).
pub fn run(args: RestoreTarArgs) -> ExitCode {
    if args.via == RestoreVia::Sftp {
        return run_sftp(args);
    }
    match borg_pull_cli::runtime::block_on(run_async(args)) {
        Ok(Ok(outcome)) => {
            let code = outcome.code();
            let summary = outcome.summary();
            if code == 0 {
                tracing::info!("{summary}");
            } else {
                eprintln!("borg-pull-server: {summary}");
            }
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        Ok(Err(e)) => {
            eprintln!("borg-pull-server: error: {}", hint::render(&e));
            exit::for_pull_error(&e).into()
        }
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

/// `--via sftp`: borg's code, ours for entries refused, or our own failure's.
fn run_sftp(args: RestoreTarArgs) -> ExitCode {
    let run = async {
        let options = options(args).await?;
        restore_sftp(options).await
    };
    match borg_pull_cli::runtime::block_on(run) {
        Ok(Ok(outcome)) => report_sftp(&outcome),
        Ok(Err(e)) => {
            eprintln!("borg-pull-server: error: {}", hint::render(&e));
            exit::for_pull_error(&e).into()
        }
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

fn report_sftp(outcome: &SftpRestoreOutcome) -> ExitCode {
    let code = exit::for_sftp_restore(outcome.verdict());
    let summary = outcome.summary();
    if code == 0 {
        tracing::info!("{summary}");
    } else {
        eprintln!("borg-pull-server: {summary}");
    }
    ExitCode::from(code)
}

async fn run_async(args: RestoreTarArgs) -> Result<RestoreOutcome, Error> {
    restore_tar(options(args).await?).await
}

/// The options of either way, with signals installed.
async fn options(args: RestoreTarArgs) -> Result<RestoreOptions, Error> {
    let shutdown = signals::install_for_one_job(SIGNAL_MESSAGES)?;
    let env = PullEnv::from_process();
    let mut options =
        RestoreOptions::with_env(&args.destination, &args.repo, args.archive, args.remote_dir, &env)?;
    options.max_runtime = args.connect.max_runtime;
    args.connect.apply(&mut options.session)?;
    options.borg = args.borg;
    options.paths = args.paths;
    options.numeric_owner = args.numeric_owner;
    options.remote_tar = args.remote_tar;
    options.passphrase = Passphrase::from_sources(&env.secret_sources(args.passphrase_file)).await?;
    options.cancel = shutdown.graceful;
    Ok(options)
}

/// The first SIGINT/SIGTERM stops borg export-tar and tar; the second exits at once.
const SIGNAL_MESSAGES: signals::Messages = signals::Messages {
    first: "stopping borg export-tar and tar on the client (again to exit at once)",
    second: "exiting at once",
};
