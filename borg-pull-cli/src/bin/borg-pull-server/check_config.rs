//! `borg-pull-server check-config`: validate a fleet config and, with `--connect`, try each client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use borg_pull_cli::{exit, hint};
use borg_pull_fleet::config::{Client, Fleet, ViaConfig};
use borg_pull_tunnel::exec::shell_quote;
use borg_pull_tunnel::incoming::RefuseAll;
use borg_pull_tunnel::pull::PullEnv;
use borg_pull_tunnel::Error;
use tokio_util::sync::CancellationToken;

/// How long the check's commands on a client may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit codes of `check-config`, shown in its `--help`.
pub fn after_help() -> String {
    "Exit codes: 0 the config is valid (and with --connect every client passed); 200 the config \
is invalid (the message names the file, line and key); with --connect the worst code of a \
failing client, as `pull` would exit with it (e.g. 210 host key, 211 authentication, 213 cannot \
connect, 214 relay/borg missing or forwarding refused), or 201 when only the repository on this \
server is missing."
        .into()
}

/// Arguments of `borg-pull-server check-config`.
///
/// Validates the config; with --connect also logs in to each client (host key, authentication),
/// checks that the relay (or ssh, for via agent/tcp) and borg are there and prints their
/// versions, that the client's sshd grants the forward the method needs, and that the
/// repository exists on this server. One line per client.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The fleet config.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Also connect to every client and check it.
    #[arg(long)]
    connect: bool,
}

/// Runs the check.
pub fn run(args: CheckConfigArgs) -> ExitCode {
    let fleet = match borg_pull_fleet::config::load(&args.config) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("borg-pull-server: error: {e}");
            return exit::USAGE.into();
        }
    };
    println!(
        "{}: valid, {} client(s)",
        fleet.path.display(),
        fleet.clients.len()
    );
    if !args.connect {
        return ExitCode::SUCCESS;
    }
    match borg_pull_cli::runtime::block_on(connect_all(&fleet)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

/// Checks the clients one after the other; returns the worst code (0 when all passed).
async fn connect_all(fleet: &Fleet) -> u8 {
    let env = PullEnv::from_process();
    let mut worst = 0;
    for client in &fleet.clients {
        match check(fleet, client, &env).await {
            Ok(what) => println!("{}: ok: {what}", client.name),
            Err((code, message)) => {
                println!("{}: FAILED ({code}): {message}", client.name);
                worst = worst.max(code);
            }
        }
    }
    worst
}

async fn check(fleet: &Fleet, client: &Client, env: &PullEnv) -> Result<String, (u8, String)> {
    let fail = |e: Error| (exit::for_pull_error(&e).code, hint::render_fleet(&e));
    let options = client
        .pull_options(&fleet.server, env, CancellationToken::new())
        .await
        .map_err(fail)?;
    let session = borg_pull_tunnel::session::connect(&options.session, Arc::new(RefuseAll))
        .await
        .map_err(fail)?;
    let result = async {
        let (role, program, version_flag) = match &client.via {
            ViaConfig::Socket => ("relay", options.relay.clone(), "--version"),
            ViaConfig::Agent { .. } => ("ssh", "ssh".into(), "-V"),
        };
        let q = |s: &std::ffi::OsStr| {
            shell_quote(std::os::unix::ffi::OsStrExt::as_bytes(s))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let script = format!(
            "p={program}; b={borg}\n\
             command -v \"$p\" >/dev/null 2>&1 || {{ echo \"{role} $p not found\"; exit 3; }}\n\
             command -v \"$b\" >/dev/null 2>&1 || {{ echo \"borg $b not found\"; exit 4; }}\n\
             echo \"{role}: $(command -v \"$p\") $(\"$p\" {version_flag} 2>&1 | head -n 1)\"\n\
             echo \"borg: $(\"$b\" --version 2>&1 | head -n 1)\"\n\
             d=$(umask 077 && mktemp -d) && echo \"dir: $d\"\n",
            program = q(&program).map_err(fail)?,
            borg = q(&options.remote_borg).map_err(fail)?,
        );
        let captured = session.capture(&script, CHECK_TIMEOUT).await.map_err(fail)?;
        let text = String::from_utf8_lossy(&captured.stdout).into_owned();
        if captured.status != Some(0) {
            return Err((exit::CLIENT_SETUP.code, captured.output_text()));
        }
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|l| l.trim().to_owned())
                .unwrap_or_default()
        };
        let dir = line("dir: ");
        // The forward the method needs, requested and cancelled at once.
        let forward = match &client.via {
            ViaConfig::Socket => {
                let path = format!("{dir}/check.sock");
                let r = session.streamlocal_forward(&path).await;
                if r.is_ok() {
                    let _ = session.cancel_streamlocal_forward(&path).await;
                }
                r.map(|()| "UNIX socket forwarding allowed")
            }
            ViaConfig::Agent { tcp: true, .. } => {
                let r = session.tcpip_forward("127.0.0.1", 0).await;
                if let Ok(port) = r {
                    let _ = session.cancel_tcpip_forward("127.0.0.1", port).await;
                }
                r.map(|_| "TCP forwarding allowed")
            }
            ViaConfig::Agent { tcp: false, .. } => Ok("agent forwarding not checked"),
        };
        if !dir.is_empty() {
            if let Ok(quoted) = q(std::ffi::OsStr::new(&dir)) {
                let _ = session.capture(&format!("rm -rf {quoted}"), CHECK_TIMEOUT).await;
            }
        }
        let forward = forward.map_err(|e| (exit::CLIENT_SETUP.code, format!("forwarding refused: {}", hint::render_fleet(&e))))?;
        // borg 1.x repositories have a `config` file at their top.
        if !client.repo.join("config").is_file() {
            return Err((
                exit::FAILURE.code,
                format!(
                    "{}, {}, {forward}; but the repository {} does not exist on this server (borg init it first)",
                    line(&format!("{role}: ")),
                    line("borg: "),
                    client.repo.display()
                ),
            ));
        }
        Ok(format!(
            "{role} {}; {}; {forward}; repository {} present",
            line(&format!("{role}: ")),
            line("borg: "),
            client.repo.display()
        ))
    }
    .await;
    session.disconnect().await;
    result
}
