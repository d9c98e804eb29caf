//! `borg-pull-server authorize`: the authorized_keys line that limits a key to `borg serve` of one
//! repository, printed or installed (`borg_pull_tunnel::local::authorized_keys` does the work).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use borg_pull_cli::exit::{self, Code};
use borg_pull_cli::hint;
use borg_pull_tunnel::local::authorized_keys::{install, read_public_key, ForcedCommand};
use borg_pull_tunnel::Error;

use crate::UsageError;

/// Exit codes of `authorize` (from the shared table), shown in its `--help`.
pub fn after_help() -> String {
    format!(
        "The line is printed on stdout; with --install, whether it was added or already there is
said on stderr. The key's user can then only run `borg serve` for REPO (append-only unless
--allow-delete), whatever command its ssh client asks for; `restrict` turns off forwarding,
agent forwarding, X11 and ptys.

Exit codes:
    0  success (with --install: added, or already present)
{}

{}

{}",
        exit::lines(exit::AUTHORIZE).trim_end(),
        exit::range_note(),
        crate::log_note(),
    )
}

/// Arguments of `borg-pull-server authorize`.
///
/// Prints the authorized_keys line that lets the key in FILE.pub run only
/// `borg serve --append-only --restrict-to-repository REPO`:
/// `command="borg serve ...",restrict ssh-ed25519 AAAA... COMMENT`, quoted for sshd and for the
/// login user's shell (repository paths with spaces, quotes, `$` or backslashes are fine).
/// With --install it is appended to this user's authorized_keys instead of editing it by hand.
#[derive(Debug, clap::Args)]
pub struct AuthorizeArgs {
    /// The one repository the key may use (absolute path; borg serve --restrict-to-repository).
    #[arg(long, value_name = "REPO")]
    repo: PathBuf,

    /// The public key to authorise: one OpenSSH line `TYPE BASE64 COMMENT`, e.g. id_ed25519.pub.
    #[arg(long, value_name = "FILE.pub")]
    key: PathBuf,

    /// Let the key delete, prune and compact: borg serve without --append-only.
    #[arg(long)]
    allow_delete: bool,

    /// The borg program the forced command runs on this server (looked up on the login user's
    /// PATH unless it contains a `/`).
    #[arg(long, value_name = "PROGRAM", default_value = "borg")]
    borg: PathBuf,

    /// Append the line to the authorized_keys file (created 0600, its directory 0700, when
    /// missing). Idempotent: an identical entry for the key is left alone; an entry for the key
    /// with other options is an error naming its line, never changed.
    #[arg(long)]
    install: bool,

    /// The file --install edits (default $HOME/.ssh/authorized_keys).
    #[arg(long, value_name = "FILE", requires = "install")]
    authorized_keys: Option<PathBuf>,
}

/// What `authorize` did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Printed,
    Added(PathBuf),
    AlreadyPresent(PathBuf),
}

/// Runs `authorize`; prints errors with their hint and maps them to the exit code table.
pub fn run(args: AuthorizeArgs) -> ExitCode {
    match authorize(&args) {
        Ok(outcome) => {
            match outcome {
                Outcome::Printed => {}
                Outcome::Added(file) => eprintln!("borg-pull-server: added to {}", file.display()),
                Outcome::AlreadyPresent(file) => {
                    eprintln!("borg-pull-server: already present in {}", file.display())
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("borg-pull-server: error: {}", render(&err));
            exit_code(&err).into()
        }
    }
}

fn authorize(args: &AuthorizeArgs) -> anyhow::Result<Outcome> {
    let mut forced = ForcedCommand::new(&args.repo)?;
    forced.borg = args.borg.clone().into_os_string();
    forced.allow_delete = args.allow_delete;
    let (key, comment) = read_public_key(&args.key)?;
    let line = forced.line(&key, &comment)?;
    let outcome = if args.install {
        let file = match &args.authorized_keys {
            Some(file) => file.clone(),
            None => default_authorized_keys()?,
        };
        if install(&file, &line)? {
            Outcome::Added(file)
        } else {
            Outcome::AlreadyPresent(file)
        }
    } else {
        Outcome::Printed
    };
    // A closed stdout (`| head -0`) is not an error; the line is also in the file with --install.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(outcome)
}

fn default_authorized_keys() -> anyhow::Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if Path::new(&home).is_absolute() => {
            Ok(Path::new(&home).join(".ssh").join("authorized_keys"))
        }
        _ => Err(UsageError(
            "HOME is not set (or not absolute), so there is no default authorized_keys file; \
             pass --authorized-keys FILE"
                .to_owned(),
        )
        .into()),
    }
}

/// The message with the hint that names this subcommand's flags.
fn render(err: &anyhow::Error) -> String {
    let message = hint::render(err.as_ref());
    let flag_hint = err
        .chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .and_then(hint::authorize);
    hint::append(message, flag_hint)
}

fn exit_code(err: &anyhow::Error) -> Code {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return exit::USAGE;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return exit::for_authorize_error(e);
        }
        if cause.is::<std::io::Error>() {
            return exit::OS_ERROR;
        }
    }
    exit::FAILURE
}
