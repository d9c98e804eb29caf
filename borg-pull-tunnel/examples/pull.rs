//! Embedding borg-pull-tunnel: one pull from a client into a local repository.
//!
//! ```text
//! cargo run -p borg-pull-tunnel --example pull -- USER@HOST PORT IDENTITY KNOWN_HOSTS RELAY REPO \
//!     create --stats '::{hostname}-{now}' /etc
//! ```
//!
//! borg's output streams to ours and its exit code becomes ours; Ctrl-C stops borg on the client
//! and cleans up. The repository passphrase (if any) comes from this process's `BORG_PASSPHRASE`
//! or `BORG_PASSCOMMAND`, exactly as in `borg-pull-server pull`.

use std::ffi::OsString;
use std::process::ExitCode;

use borg_pull_tunnel::jobs::pull::{pull, PullEnv, PullOptions};
use borg_pull_tunnel::local::passphrase::Passphrase;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.len() < 7 {
        eprintln!("usage: pull USER@HOST PORT IDENTITY KNOWN_HOSTS RELAY REPO BORG_ARGS...");
        return ExitCode::from(64);
    }
    match run(args).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("pull: {e}");
            ExitCode::from(if e.is_host_key() { 65 } else { 70 })
        }
    }
}

async fn run(args: Vec<OsString>) -> borg_pull_tunnel::Result<i32> {
    let text = |i: usize| args[i].to_string_lossy().into_owned();
    let env = PullEnv::from_process();
    let mut options = PullOptions::with_env(&text(0), &args[5], args[6..].to_vec(), &env)?;
    options.session.port = text(1)
        .parse()
        .map_err(|_| borg_pull_tunnel::Error::InvalidOption(format!("bad port {:?}", text(1))))?;
    options.session.identity = Some(args[2].clone().into());
    options.session.known_hosts = args[3].clone().into();
    options.relay = args[4].clone();
    options.passphrase = Passphrase::from_sources(&env.secret_sources(None)).await?;

    let cancel = options.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    pull(options).await
}
