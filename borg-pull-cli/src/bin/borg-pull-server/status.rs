//! `borg-pull-server status`: the newest archive of every client of a fleet config and its age,
//! read from the repositories on this server only, as a table, JSON, and a node_exporter textfile
//! (`borg_pull_fleet::status` and `borg_pull_fleet::metrics` do the work).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use borg_pull_cli::exit::{self, Code};
use borg_pull_cli::{hint, runtime};
use borg_pull_fleet::config::Fleet;
use borg_pull_fleet::history::{history_table, History};
use borg_pull_fleet::metrics::write_textfile_with_status;
use borg_pull_fleet::state::StateStore;
use borg_pull_fleet::status::{status, status_table, ClientStatus};

/// Exit codes of `status` (from the shared table), shown in its `--help`.
pub fn after_help() -> String {
    format!(
        "No client is contacted: each repository is read on this server with `borg list --json \
--last 1`
(with the client's passphrase_file or passcommand), and the last run's result comes from
[server] state_dir. A client is stale when its repository has no archive or its newest archive
is older than its max_age. Use it from cron or as a monitoring check.

Exit codes:
    0  every client is fresh
{}

{}

{}",
        exit::lines(exit::STATUS).trim_end(),
        exit::range_note(),
        crate::log_note(),
    )
}

/// Arguments of `borg-pull-server status`.
///
/// Prints, per client of the config: the newest archive, its time and age, the client's max_age,
/// whether it is stale, and the last run's result; then its health by the schedule (ok, due,
/// failing: the last attempt failed, overdue: no success within max_age), its last success and
/// its age, when `run --due` pulls it next, and its failures in a row.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The fleet config (TOML: [server], [defaults], [[client]]).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Print the statuses as JSON on stdout instead of a table (times in Unix seconds).
    #[arg(long)]
    json: bool,

    /// Also write the node_exporter textfile (atomically, mode 0644): FILE, or without one the
    /// config's [server] prometheus. Without this option no textfile is written (`run` writes
    /// it every night).
    #[arg(long, value_name = "FILE")]
    prometheus: Option<Option<PathBuf>>,

    /// Print client NAME's run history instead (every run `run` recorded, oldest first: start,
    /// duration, bytes sent, borg's --stats sizes, rc, error; with --json the records). No
    /// repository is read.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["prometheus", "html", "notify"])]
    history: Option<String>,

    /// Also write the status page (one self-contained HTML file, atomically, mode 0644): FILE,
    /// or without one the config's [server] html. `run` writes it at its end when [server] html
    /// is set.
    #[arg(long, value_name = "FILE")]
    html: Option<Option<PathBuf>>,

    /// Also send the config's [notify] `overdue` alerts: once per client with no successful
    /// backup within its max_age, then again only after a day or once it recovered (recorded in
    /// [server] state_dir). For cron; the exit code does not depend on the alerts being sent.
    #[arg(long)]
    notify: bool,
}

/// Runs `status`; prints errors and maps the result to the exit code table.
pub fn run(args: StatusArgs) -> ExitCode {
    if let Some(name) = &args.history {
        return match history(&args, name) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, err)) => {
                eprintln!("borg-pull-server: error: {}", hint::render(err.as_ref()));
                code.into()
            }
        };
    }
    match report(&args) {
        Ok(statuses) => exit_code(&statuses).map_or(ExitCode::SUCCESS, ExitCode::from),
        Err((code, err)) => {
            eprintln!("borg-pull-server: error: {}", hint::render(err.as_ref()));
            code.into()
        }
    }
}

/// The code for what was found: an unreadable repository first, then a stale client.
fn exit_code(statuses: &[ClientStatus]) -> Option<Code> {
    if statuses.iter().any(|s| s.error.is_some()) {
        Some(exit::REPO_UNREADABLE)
    } else if statuses.iter().any(|s| s.stale) {
        Some(exit::STALE)
    } else {
        None
    }
}

fn report(args: &StatusArgs) -> Result<Vec<ClientStatus>, (Code, anyhow::Error)> {
    let fleet = load_config(&args.config).map_err(|e| (exit::USAGE, e))?;
    let textfile = match &args.prometheus {
        None => None,
        Some(Some(path)) => Some(path.clone()),
        Some(None) => Some(fleet.server.prometheus.clone().ok_or_else(|| {
            let error = anyhow::anyhow!(
                "--prometheus without a FILE writes the config's textfile, but {} sets no \
                 [server] prometheus: give --prometheus=FILE or set it in the config",
                args.config.display()
            );
            (exit::USAGE, error)
        })?),
    };
    let page = match &args.html {
        None => None,
        Some(Some(path)) => Some(path.clone()),
        Some(None) => Some(fleet.server.html.clone().ok_or_else(|| {
            let error = anyhow::anyhow!(
                "--html without a FILE writes the config's status page, but {} sets no \
                 [server] html: give --html=FILE or set it in the config",
                args.config.display()
            );
            (exit::USAGE, error)
        })?),
    };
    let store = StateStore::open(&fleet.server.state_dir).map_err(|e| (exit::OS_ERROR, e.into()))?;
    let statuses = runtime::block_on(status(&fleet, &store)).map_err(|e| (exit::OS_ERROR, e.into()))?;
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&statuses).map_err(|e| (exit::FAILURE, e.into()))?;
        json.push('\n');
        json
    } else {
        status_table(&statuses)
    };
    // A closed stdout (`| head -1`) is not an error; the exit code still tells the result.
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err((exit::OS_ERROR, e.into())),
        _ => {}
    }
    if let Some(path) = &textfile {
        write_textfile_with_status(path, &fleet, &store, &statuses)
            .map_err(|e| (exit::OS_ERROR, e.into()))?;
    }
    if let Some(path) = &page {
        borg_pull_fleet::page::write_fleet_page(path, &fleet, &store)
            .map_err(|e| (exit::OS_ERROR, e.into()))?;
    }
    if args.notify {
        runtime::block_on(borg_pull_fleet::notify::from_status(&fleet, &store))
            .map_err(|e| (exit::OS_ERROR, e.into()))?;
    }
    Ok(statuses)
}

/// `--history NAME`: the client's records as a table or JSON.
fn history(args: &StatusArgs, name: &str) -> Result<(), (Code, anyhow::Error)> {
    let fleet = load_config(&args.config).map_err(|e| (exit::USAGE, e))?;
    if !fleet.clients.iter().any(|c| c.name == name) {
        let error = anyhow::anyhow!(
            "--history {name:?}: {} has no client of that name; give one of its [[client]] names",
            args.config.display()
        );
        return Err((exit::USAGE, error));
    }
    let records = History::at(&fleet.server.state_dir).load(name);
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&records).map_err(|e| (exit::FAILURE, e.into()))?;
        json.push('\n');
        json
    } else {
        history_table(&records)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err((exit::OS_ERROR, e.into())),
        _ => Ok(()),
    }
}

fn load_config(path: &Path) -> anyhow::Result<Fleet> {
    Ok(borg_pull_fleet::config::load(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser as _};
    use std::time::Duration;

    #[test]
    fn help_lists_exactly_the_table() {
        let mut cli = crate::Cli::command();
        let help = cli
            .find_subcommand_mut("status")
            .unwrap()
            .render_long_help()
            .to_string();
        let listed: Vec<u8> = help
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .filter(|&c| c != 0)
            .collect();
        let table: Vec<u8> = exit::STATUS.iter().map(|c| c.code).collect();
        assert_eq!(listed, table, "{help}");
    }

    fn client(stale: bool, error: bool) -> ClientStatus {
        ClientStatus {
            name: "c".into(),
            repo: "/r".into(),
            newest_archive: None,
            newest_time: None,
            age: None,
            max_age: Duration::from_secs(3600),
            stale,
            last_run: None,
            retention: Default::default(),
            error: error.then(|| "borg list exited with 2".to_owned()),
            repository_size: None,
            standing: borg_pull_fleet::schedule::Standing {
                health: borg_pull_fleet::schedule::Health::Ok,
                last_success: None,
                next_due: None,
                due_now: true,
                failures_in_a_row: 0,
            },
            last_success_age: None,
        }
    }

    /// `--prometheus` with and without a FILE, wherever it stands.
    #[test]
    fn prometheus_takes_an_optional_file() {
        let parse = |args: &[&str]| {
            let cli = crate::Cli::try_parse_from(
                ["borg-pull-server", "status", "--config", "f.toml"]
                    .iter()
                    .chain(args),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.command {
                crate::Command::Status(status) => (status.prometheus, status.json),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(parse(&[]), (None, false));
        assert_eq!(parse(&["--prometheus"]), (Some(None), false));
        assert_eq!(parse(&["--prometheus", "--json"]), (Some(None), true));
        assert_eq!(
            parse(&["--prometheus=/t.prom"]),
            (Some(Some("/t.prom".into())), false)
        );
        assert_eq!(
            parse(&["--prometheus", "/t.prom", "--json"]),
            (Some(Some("/t.prom".into())), true)
        );
    }

    /// `--html` with and without a FILE; `--history` alone (it reads no repository).
    #[test]
    fn html_takes_an_optional_file_and_history_stands_alone() {
        let parse = |args: &[&str]| {
            crate::Cli::try_parse_from(
                ["borg-pull-server", "status", "--config", "f.toml"]
                    .iter()
                    .chain(args),
            )
            .map(|cli| match cli.command {
                crate::Command::Status(status) => (status.html, status.history),
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(parse(&["--html"]).unwrap(), (Some(None), None));
        assert_eq!(
            parse(&["--html=/w/s.html", "--json"]).unwrap(),
            (Some(Some("/w/s.html".into())), None)
        );
        assert_eq!(
            parse(&["--history", "web1", "--json"]).unwrap(),
            (None, Some("web1".into()))
        );
        assert!(parse(&["--history", "web1", "--html"]).is_err());
        assert!(parse(&["--history", "web1", "--prometheus"]).is_err());
    }

    #[test]
    fn unreadable_wins_over_stale() {
        assert_eq!(exit_code(&[]), None);
        assert_eq!(exit_code(&[client(false, false)]), None);
        assert_eq!(
            exit_code(&[client(false, false), client(true, false)]),
            Some(exit::STALE)
        );
        assert_eq!(
            exit_code(&[client(true, true), client(true, false)]),
            Some(exit::REPO_UNREADABLE)
        );
    }
}
