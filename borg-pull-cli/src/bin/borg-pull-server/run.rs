//! `borg-pull-server run`: every client of a fleet config, N at a time, then a summary.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use borg_pull_cli::{exit, hint, signals};
use borg_pull_fleet::progress::{Display, LiveDisplay};
use borg_pull_fleet::run::{self, OutputSink};
use borg_pull_tunnel::jobs::pull::PullEnv;

/// Exit codes of `run`, shown in its `--help`.
pub fn after_help() -> String {
    format!(
        "Exit code: the worst of the clients' results. Any borg-pull error of a client (our codes, \
listed below; the highest when several clients failed) is worse than every borg code; among \
borg's codes a higher one is worse (2 error > 1 warning > 0 success). A client that failed never \
stops the others; each one's result is in the summary.
{}

Configuration errors exit 200 naming the file, line and key. Ctrl-C (SIGINT/SIGTERM) stops every \
running client as `pull` does (borg gets SIGINT and a grace period) and skips those not started \
(202); a second one exits at once.",
        exit::lines(exit::PULL).trim_end(),
    )
}

/// Arguments of `borg-pull-server run`.
///
/// Pulls every client of the config (or the NAMEs given), at most --jobs at once, with borg's
/// output lines prefixed `NAME: `, then prints a summary table (client, archive, start, duration,
/// bytes sent, borg's rc, retention, our error) on stdout, or with --json a JSON array (borg's
/// output then goes to stderr). When the job made an archive, prune/compact/check run on this
/// server as configured; otherwise the summary says why not. On a terminal a live display shows
/// each running client (phase, time, borg's latest progress line); in logs borg's progress
/// lines appear at most once a minute per client. With --due (the hourly timer) only the clients
/// due now are pulled, by their every, window, blackout and retry (borg-pull.toml(5)); the
/// summary ends with how many were due.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The fleet config (TOML: [server], [defaults], [[client]]).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Clients pulled at once (default: [server] jobs, else 4).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,

    /// Print the summary as JSON on stdout (no secret is in it: the config holds only the paths
    /// and commands that give the passphrases).
    #[arg(long)]
    json: bool,

    /// Only these clients (default: all), by name.
    #[arg(value_name = "NAME")]
    names: Vec<String>,

    /// Pull only the clients that are due now: no success within their `every`, the back-off
    /// after a failure passed, inside their `window` and outside their `blackout` (the hourly
    /// timer runs this). The others are logged, one line each with their state and next due time,
    /// and are not failures.
    #[arg(long)]
    due: bool,
}

/// The message and code of a failed client.
fn classify(e: &borg_pull_tunnel::Error) -> (u8, String) {
    (exit::for_pull_error(e).code, hint::render_fleet(e))
}

/// Runs the fleet; the exit code is the worst result ([`run::worst_code`]).
pub fn run(args: RunArgs) -> ExitCode {
    match borg_pull_cli::runtime::block_on(run_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

async fn run_async(args: RunArgs) -> ExitCode {
    let shutdown = match signals::install(SIGNAL_MESSAGES) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot install signal handlers: {e}");
            return exit::OS_ERROR.into();
        }
    };
    signals::exit_on_forced(&shutdown);
    let fleet = match borg_pull_fleet::config::load(&args.config) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("borg-pull-server: error: {e}");
            return exit::for_config_error(&e).into();
        }
    };
    if let Err(e) = run::select(&fleet, &args.names) {
        eprintln!("borg-pull-server: error: {e}");
        return exit::USAGE.into();
    }
    let jobs = args.jobs.map_or(fleet.server.jobs, usize::from);
    // With --json stdout carries only the JSON: borg's stdout lines go to stderr too.
    let sink = if args.json {
        OutputSink::new(Box::new(std::io::stderr()), Box::new(std::io::stderr()))
    } else {
        OutputSink::stdio()
    };
    // A person watching: the live display on stderr (borg's stdout lines, and with --json the
    // JSON, still go where they went).
    let sink = if std::io::stderr().is_terminal() {
        let live = if args.json {
            LiveDisplay::new(
                Box::new(std::io::stderr()),
                Box::new(std::io::stderr()),
                true,
                Box::new(borg_pull_fleet::progress::terminal_size),
            )
        } else {
            LiveDisplay::stderr()
        };
        sink.with_display(Display::Live(live))
    } else {
        sink
    };
    let env = PullEnv::from_process();
    let (results, not_due) = if args.due {
        let (results, not_due) =
            run::run_due(&fleet, &args.names, jobs, &env, classify, shutdown.graceful, sink).await;
        (results, Some(not_due))
    } else {
        let results = run::run(&fleet, &args.names, jobs, &env, classify, shutdown.graceful, sink).await;
        (results, None)
    };
    let summary = if args.json {
        match serde_json::to_string_pretty(&results) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("borg-pull-server: error: cannot write the JSON summary: {e}");
                return exit::FAILURE.into();
            }
        }
    } else {
        let mut table = run::summary_table(&results);
        if let Some(not_due) = not_due {
            table.push_str(&run::due_line(results.len(), not_due));
        }
        table
    };
    use std::io::Write as _;
    // A closed stdout (`| head`) is not an error of the run.
    let _ = std::io::stdout().lock().write_all(summary.as_bytes());
    ExitCode::from(run::worst_code(&results))
}

/// The first SIGINT/SIGTERM stops every running pull cleanly; the second exits at once.
const SIGNAL_MESSAGES: signals::Messages = signals::Messages {
    first: "stopping borg on every client and cleaning up (again to exit at once)",
    second: "exiting at once",
};
