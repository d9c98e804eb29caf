//! `borg-pull-server check-config`: validate a fleet config and, with `--connect`, try each client
//! the way `run` will meet it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use borg_pull_cli::{exit, hint};
use borg_pull_fleet::check::{self, RelayVersion, RepoOpens};
use borg_pull_fleet::config::{Client, Fleet, ViaConfig};
use borg_pull_fleet::limits::BorgLimits;
use borg_pull_tunnel::jobs::pull::{PullEnv, PullOptions, RelayBinary};
use borg_pull_tunnel::ssh::exec::shell_quote;
use borg_pull_tunnel::ssh::incoming::RefuseAll;
use borg_pull_tunnel::{Error, RemoteProgram};
use tokio_util::sync::CancellationToken;

/// How long the check's commands on a client may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a program on the client may take to print its version (`timeout` there, where there
/// is one): borg's Python start-up takes about a second; past this it hangs.
const VERSION_TIMEOUT_SECS: u64 = 10;

/// This build's version: what `borg-pull-relay --version` prints after its name.
const OURS: &str = env!("CARGO_PKG_VERSION");

/// Starts each line the check script reports, so the client's login noise (motd, a shell rc
/// that prints) is never read as a report.
const MARK: &str = "borg-pull-check:";

/// Exit codes of `check-config`, shown in its `--help`.
pub fn after_help() -> String {
    "Exit codes: 0 the config is valid (and with --connect every client passed; warnings, e.g. a \
relay of another version or a repository locked by a running backup, do not fail it); 200 the \
config is invalid (the message names the file, line and key) or a NAME is not in it; with \
--connect the worst code of a failing client, as `run` would exit with it (e.g. 210 host key, \
211 authentication, 213 cannot connect, 214 relay/borg missing or not ours, forwarding refused, \
nowhere to install the relay), 212 the passphrase the config gives does not open the repository \
(or cannot be read), 209 the repository on this server is missing or not a borg repository, 203 \
this server's borg cannot run."
        .into()
}

/// Arguments of `borg-pull-server check-config`.
///
/// Validates the config; with --connect also logs in to each client (host key, authentication),
/// checks that the relay (or ssh, for via agent/tcp) and borg are there and prints their
/// versions (a relay of another version than this server's is a warning), with install_relay
/// that the relay to install is here and the client has a writable place for it, that the
/// client's sshd grants the forward the method needs, and that the repository on this server
/// opens with the passphrase the config gives. One line per client, then its warnings.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The fleet config.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Also connect to every client and check it.
    #[arg(long)]
    connect: bool,

    /// Only these clients (default: all), by name, as for `run`.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
}

/// Runs the check.
pub fn run(args: CheckConfigArgs) -> ExitCode {
    let fleet = match borg_pull_fleet::config::load(&args.config) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("borg-pull-server: error: {e}");
            return exit::for_config_error(&e).into();
        }
    };
    let clients = match borg_pull_fleet::run::select(&fleet, &args.names) {
        Ok(clients) => clients,
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
    if let Some(notify) = fleet.notify.describe() {
        println!("{}: notify: {notify}", fleet.path.display());
    }
    // [notify] URLs often carry tokens: the file then deserves a secret's mode.
    if fleet.notify.has_urls() {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&fleet.path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                println!(
                    "{}: warning: readable by every user (mode {mode:04o}) while its [notify] URLs may \
                     hold tokens: chmod o-rwx {}",
                    fleet.path.display(),
                    fleet.path.display()
                );
            }
        }
    }
    if !args.connect {
        return ExitCode::SUCCESS;
    }
    match borg_pull_cli::runtime::block_on(connect_all(&fleet, &clients)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("borg-pull-server: error: cannot start the async runtime: {e}");
            exit::FAILURE.into()
        }
    }
}

/// Checks the clients one after the other; returns the worst code (0 when all passed).
async fn connect_all(fleet: &Fleet, clients: &[&Client]) -> u8 {
    let env = PullEnv::from_process();
    let mut worst = 0;
    for client in clients {
        let mut warnings = Vec::new();
        match check(fleet, client, &env, &mut warnings).await {
            Ok(what) => println!("{}: ok: {what}", client.name),
            Err((code, message)) => {
                println!("{}: FAILED ({code}): {message}", client.name);
                worst = worst.max(code);
            }
        }
        // After the client's line: its first line is always the verdict.
        for warning in warnings {
            println!("{}: warning: {warning}", client.name);
        }
    }
    worst
}

fn fail(e: Error) -> (u8, String) {
    (exit::for_pull_error(&e).code, hint::render_fleet(&e))
}

/// `s` shell-quoted, as text.
fn quoted(s: &std::ffi::OsStr) -> Result<String, (u8, String)> {
    shell_quote(std::os::unix::ffi::OsStrExt::as_bytes(s))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(fail)
}

/// The relay `run` installs on the client: readable here (run reads it), answering `--version`
/// as this server's relay. Returns it (for its cached name) and what to report.
async fn relay_to_install(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(RelayBinary, String), (u8, String)> {
    let read = path.to_owned();
    let binary = tokio::task::spawn_blocking(move || RelayBinary::read(&read))
        .await
        .map_err(|e| (exit::FAILURE.code, format!("reading the relay to install: {e}")))?
        .map_err(|e| {
            (
                exit::CLIENT_SETUP.code,
                format!(
                    "{} (install_relay = true copies the borg-pull-relay beside this program; \
                     install it there, as the package does)",
                    hint::render_fleet(&e)
                ),
            )
        })?;
    let executable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if !executable {
        warnings.push(format!(
            "the relay to install, {}, is not executable here: run still copies it (the copy is \
             made executable), but its version cannot be checked (chmod 755 it)",
            path.display()
        ));
        return Ok((binary, format!("relay to install {}", path.display())));
    }
    let output = check::local_relay_version(path)
        .await
        .map_err(|e| (exit::CLIENT_SETUP.code, e.to_string()))?;
    match check::relay_version(&output, OURS) {
        RelayVersion::Same(v) => Ok((
            binary,
            format!("relay to install {} (borg-pull-relay {v})", path.display()),
        )),
        RelayVersion::Different(v) => {
            warnings.push(format!(
                "the relay to install, {}, is borg-pull-relay {v}, this server is {OURS}",
                path.display()
            ));
            Ok((
                binary,
                format!("relay to install {} (borg-pull-relay {v})", path.display()),
            ))
        }
        RelayVersion::Older | RelayVersion::NotOurs(_) => Err((
            exit::CLIENT_SETUP.code,
            format!(
                "the relay to install, {}, is not this server's borg-pull-relay (`--version` printed {:?}): \
                 reinstall borg-pull (the relay belongs beside borg-pull-server)",
                path.display(),
                borg_pull_core::text::escape_truncated(&output, 200)
            ),
        )),
    }
}

/// The script's report lines (those after [`MARK`]) as `(word, rest)`.
fn reports(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(MARK))
        .map(|l| {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            (word.to_owned(), rest.trim().to_owned())
        })
        .collect()
}

/// The client side of the check: the script (programs, versions, the relay's cache, a private
/// directory) and the forward the method needs. Returns the pieces of the ok line.
async fn check_client(
    client: &Client,
    options: &PullOptions,
    install: Option<&RelayBinary>,
    session: &borg_pull_tunnel::ssh::session::Session,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, (u8, String)> {
    if client.via == ViaConfig::Sftp {
        // Nothing runs on the client: its SFTP server is all the method needs.
        let home = borg_pull_tunnel::jobs::sftp_pull::probe(session)
            .await
            .map_err(fail)?;
        return Ok(vec![format!("SFTP subsystem answers (working directory {home})")]);
    }
    let transport = match (&client.via, install) {
        (ViaConfig::Socket, None) => Some((RemoteProgram::Relay, options.relay.clone(), "--version")),
        (ViaConfig::Socket, Some(_)) => None,
        (ViaConfig::Agent { .. }, _) => Some((RemoteProgram::Ssh, "ssh".into(), "-V")),
        (ViaConfig::Sftp, _) => None,
    };
    let mut script = format!(
        "bp_m={MARK}; {check}\
         bp_v() {{ {{ if command -v timeout >/dev/null 2>&1; then timeout {secs} \"$@\"; else \"$@\"; fi; }} \
         </dev/null 2>&1 | dd bs=1024 count=1 2>/dev/null; }}\n",
        check = borg_pull_tunnel::jobs::pull::script::CHECK_FUNCTION,
        secs = VERSION_TIMEOUT_SECS,
    );
    // Each program as `pull` checks it (bp_check), in a subshell: one missing program does not
    // hide the next one's state.
    let mut programs = vec![(RemoteProgram::Borg, options.remote_borg.clone(), "--version")];
    programs.extend(transport.clone());
    for (role, program, flag) in &programs {
        script.push_str(&format!(
            "p={p}; if ( bp_check \"$p\" {role} ); then printf '%sfound {role} %s\\n' \"$bp_m\" \"$(command -v \"$p\")\"; \
             bp_v \"$p\" {flag} | sed \"s/^/${{bp_m}}{role}out /\"; echo; fi\n",
            p = quoted(program)?,
        ));
    }
    if let Some(binary) = install {
        // Where run puts the relay (remote.rs, RelayInstall::script): present already, or the
        // nearest existing directory on the way must be a writable one (run's mkdir -p).
        script.push_str(&format!(
            "c=\"${{XDG_CACHE_HOME:-${{HOME:-/nonexistent}}/.cache}}/borg-pull\"; \
             if [ -x \"$c/{name}\" ]; then printf '%scached %s\\n' \"$bp_m\" \"$c/{name}\"; else \
             t=$c; n=0; while [ ! -e \"$t\" ] && [ \"$n\" -lt 256 ]; do t=${{t%/*}}; [ -n \"$t\" ] || t=/; n=$((n+1)); done; \
             if [ -d \"$t\" ] && [ -w \"$t\" ] && [ -x \"$t\" ]; then printf '%swritable %s\\n' \"$bp_m\" \"$c\"; \
             else printf '%sunwritable %s\\n' \"$bp_m\" \"$t\"; printf '%scachedir %s\\n' \"$bp_m\" \"$c\"; fi; \
             {{ command -v sha256sum || command -v shasum; }} >/dev/null 2>&1 || printf '%snosha\\n' \"$bp_m\"; fi\n",
            name = binary.name(),
        ));
    }
    script.push_str("d=$(umask 077 && mktemp -d) && printf '%sdir %s\\n' \"$bp_m\" \"$d\"\n");
    let captured = session.capture(&script, CHECK_TIMEOUT).await.map_err(fail)?;
    let found = reports(&captured.stdout);
    let get = |word: &str| {
        found
            .iter()
            .find(|(w, _)| w == word)
            .map(|(_, rest)| rest.clone())
    };
    let all = |word: &str| -> Vec<String> {
        found
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, rest)| rest.clone())
            .collect()
    };
    let dir = get("dir").unwrap_or_default();
    // The forward the method needs, requested and cancelled at once.
    let forward = match &client.via {
        _ if dir.is_empty() => Ok("forwarding not checked"),
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
        ViaConfig::Sftp => Ok("forwarding not needed"),
    };
    // Cleaned up before judging, whatever the verdict.
    if !dir.is_empty() {
        if let Ok(q) = quoted(std::ffi::OsStr::new(&dir)) {
            let _ = session.capture(&format!("rm -rf {q}"), CHECK_TIMEOUT).await;
        }
    }
    let mut parts = Vec::new();
    let missing = all("missing");
    for (role, program, _) in &programs {
        let why = missing.iter().find_map(|m| m.strip_prefix(&format!("{role} ")));
        if let Some(why) = why {
            let e = Error::RemoteProgramMissing {
                program: program.to_string_lossy().into_owned(),
                role: *role,
                peer: borg_pull_tunnel::error::Peer::new(client.host.clone(), client.port),
                why: borg_pull_core::text::escape_for_log(why.as_bytes()),
            };
            let (code, mut message) = fail(e);
            if *role == RemoteProgram::Relay {
                message.push_str("; or set install_relay = true (run then copies this server's relay there)");
            }
            return Err((code, message));
        }
    }
    if dir.is_empty() {
        return Err((
            exit::CLIENT_SETUP.code,
            format!(
                "cannot make a private directory on the client (mktemp -d in ${{TMPDIR:-/tmp}}): {}",
                captured.output_text()
            ),
        ));
    }
    let found_path = |role: RemoteProgram| {
        all("found")
            .into_iter()
            .find_map(|f| {
                f.strip_prefix(&format!("{role} "))
                    .map(|p| borg_pull_core::text::escape_for_log(p.as_bytes()))
            })
            .unwrap_or_default()
    };
    let output_of = |role: RemoteProgram| all(&format!("{role}out")).join("\n");
    if let Some((role, program, _)) = &transport {
        let path = found_path(*role);
        match role {
            RemoteProgram::Relay => match check::relay_version(output_of(*role).as_bytes(), OURS) {
                RelayVersion::Same(v) => parts.push(format!("relay {path} (borg-pull-relay {v})")),
                RelayVersion::Different(v) => {
                    warnings.push(format!(
                        "the relay on the client, {path}, is borg-pull-relay {v}, this server is {OURS}: \
                         it works while the relay only moves bytes; update it (or set install_relay = true)"
                    ));
                    parts.push(format!("relay {path} (borg-pull-relay {v})"));
                }
                RelayVersion::Older => {
                    warnings.push(format!(
                        "the relay on the client, {path}, is a borg-pull-relay older than --version, this \
                         server is {OURS}: it works while the relay only moves bytes; update it (or set \
                         install_relay = true)"
                    ));
                    parts.push(format!("relay {path} (an older borg-pull-relay)"));
                }
                RelayVersion::NotOurs(said) => {
                    let given = borg_pull_core::text::escape_for_log(program.as_encoded_bytes());
                    let found = if given == path {
                        String::new()
                    } else {
                        format!(" ({path})")
                    };
                    return Err((
                        exit::CLIENT_SETUP.code,
                        format!(
                            "the relay {given} on the client{found} is not borg-pull-relay: its --version \
                             printed {said:?}; set relay = PATH to borg-pull-relay there, or install_relay = true"
                        ),
                    ));
                }
            },
            _ => {
                let version = output_of(*role);
                let first = version.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                parts.push(format!(
                    "{role} {path} {}",
                    borg_pull_core::text::escape_for_log(first.as_bytes())
                ));
            }
        }
    }
    if install.is_some() {
        let shown = |s: String| borg_pull_core::text::escape_for_log(s.as_bytes());
        if let Some(cached) = get("cached") {
            parts.push(format!("its copy {} is on the client", shown(cached)));
        } else if let Some(writable) = get("writable") {
            if get("nosha").is_some() {
                return Err((
                    exit::CLIENT_SETUP.code,
                    "the client has neither sha256sum nor shasum, which run needs to verify the relay \
                     it installs: install coreutils there, or set install_relay = false and install \
                     borg-pull-relay on the client"
                        .into(),
                ));
            }
            parts.push(format!("run installs it into {} (writable)", shown(writable)));
        } else {
            let blocked = get("unwritable").map(shown).unwrap_or_default();
            let wanted = get("cachedir").map(shown).unwrap_or_default();
            return Err((
                exit::CLIENT_SETUP.code,
                format!(
                    "run cannot install the relay on the client: it goes into {wanted}, but {blocked} is not a \
                     directory the login user can write (fix its owner or mode, set XDG_CACHE_HOME for the \
                     login user, or set install_relay = false and relay = PATH)"
                ),
            ));
        }
    }
    let borg_version = output_of(RemoteProgram::Borg);
    let first = borg_version.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    client_borg_matches(client, options, first).map_err(fail)?;
    parts.push(borg_pull_core::text::escape_for_log(first.as_bytes()));
    let forward = forward.map_err(|e| {
        (
            exit::CLIENT_SETUP.code,
            format!("forwarding refused: {}", hint::render_fleet(&e)),
        )
    })?;
    parts.push(forward.into());
    Ok(parts)
}

/// The client's borg against this server's, as `pull` refuses it (pull.rs, `check_client_borg`):
/// another major version or borg 2 generation fails; a version that cannot be read passes (borg
/// serve's own check then decides).
fn client_borg_matches(client: &Client, options: &PullOptions, reported: &str) -> Result<(), Error> {
    let server = options.serve.version.as_ref();
    let program = || options.remote_borg.to_string_lossy().into_owned();
    match (borg_pull_core::BorgVersion::parse(reported), server) {
        (Some(theirs), Some(ours)) if theirs.major != ours.major => Err(Error::BorgVersionMismatch {
            peer: borg_pull_tunnel::error::Peer::new(client.host.clone(), client.port),
            program: program(),
            client: theirs.to_string(),
            client_major: theirs.major,
            server: ours.to_string(),
            server_major: ours.major,
        }),
        (Some(theirs), Some(ours)) if theirs.generation() != ours.generation() => {
            Err(Error::BorgGenerationMismatch {
                peer: borg_pull_tunnel::error::Peer::new(client.host.clone(), client.port),
                program: program(),
                client: theirs.to_string(),
                client_generation: theirs.generation(),
                server: ours.to_string(),
                server_generation: ours.generation(),
            })
        }
        _ => Ok(()),
    }
}

async fn check(
    fleet: &Fleet,
    client: &Client,
    env: &PullEnv,
    warnings: &mut Vec<String>,
) -> Result<String, (u8, String)> {
    let options = client
        .pull_options(&fleet.server, env, CancellationToken::new())
        .await
        .map_err(fail)?;
    // As run: the relay is installed only for the socket method.
    let mut parts = Vec::new();
    let install = match (&options.install_relay, &client.via) {
        (Some(path), ViaConfig::Socket) => {
            let (binary, part) = relay_to_install(path, warnings).await?;
            parts.push(part);
            Some(binary)
        }
        _ => None,
    };
    let session = borg_pull_tunnel::ssh::session::connect(&options.session, Arc::new(RefuseAll))
        .await
        .map_err(fail)?;
    let on_client = check_client(client, &options, install.as_ref(), &session, warnings).await;
    session.disconnect().await;
    parts.extend(on_client?);
    let repo = client.repo.display();
    match check::repository(
        client,
        &fleet.server,
        options.serve.version.as_ref(),
        &BorgLimits::default(),
    )
    .await
    {
        Ok(RepoOpens::Yes) => parts.push(format!("repository {repo} opens")),
        Ok(RepoOpens::Locked { said }) => {
            warnings.push(format!(
                "the repository {repo} is locked ({said}), so its passphrase was not checked: a backup \
                 running now, or a stale lock that will make the next run fail (borg break-lock it once \
                 no borg uses it)"
            ));
            parts.push(format!("repository {repo} locked"));
        }
        Err(problem) => {
            let code = exit::for_repo_problem(&problem).code;
            return Err((code, format!("{}; but {problem}", parts.join("; "))));
        }
    }
    Ok(parts.join("; "))
}
