//! `borg serve` inherits only allowlisted environment variables, never the server's secrets.
//!
//! The secrets must be in the environment of the process running `borg serve`, but setting this
//! process's environment is unsound while other tests' threads read it (they share one binary):
//! the test runs itself again as a child process, given the secrets with `Command::env`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use borg_pull_core::supervise::{LimitPolicy, Supervisor, SupervisorLimits};
use borg_pull_core::ServeConfig;
use borg_pull_testkit::{assert_ok, TestCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SECRETS: &[&str] = &[
    "BORG_PASSPHRASE",
    "BORG_PASSCOMMAND",
    "BORG_PASSPHRASE_FD",
    "BORG_NEW_PASSPHRASE",
    "BORG_PULL_IDENTITY_PASSPHRASE",
    "SSH_ORIGINAL_COMMAND",
    "BORG_REPO_PERMISSIONS",
    "BORG_RSH",
    "BORG_LOGGING_CONF",
    "LISTEN_FDNAMES",
    "SOME_OTHER_TOKEN",
];

/// Runs a fake borg that dumps its environment (NUL-separated) through serve_stream and the
/// Supervisor; returns the dumps.
async fn dumps(dir: &std::path::Path) -> Vec<String> {
    let script = dir.join("fake-borg");
    fs::write(
        &script,
        "#!/bin/sh\ncat /proc/$$/environ > \"$1.env\"\nexec cat >/dev/null\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    // The fake's "$1" is `serve`, so it writes serve.env in its working directory: ours.
    let config = ServeConfig {
        borg: script,
        ..ServeConfig::new("/srv/repo").unwrap()
    };
    let mut out = Vec::new();

    let (mut client, server) = tokio::io::duplex(1024);
    let direct = tokio::spawn({
        let config = config.clone();
        async move { borg_pull_core::serve::serve_stream(&config, server, CancellationToken::new()).await }
    });
    client.shutdown().await.unwrap();
    let _ = client.read_to_end(&mut Vec::new()).await;
    direct.await.unwrap().unwrap();
    out.push(fs::read_to_string("serve.env").unwrap());
    fs::remove_file("serve.env").unwrap();

    let limits = SupervisorLimits {
        max_active: 1,
        max_total: None,
        policy: LimitPolicy::Refuse,
    };
    let sup = Supervisor::new(config, limits);
    let (mut client, server) = tokio::io::duplex(1024);
    sup.try_admit().unwrap().spawn(server, tracing::Span::none());
    client.shutdown().await.unwrap();
    let _ = client.read_to_end(&mut Vec::new()).await;
    sup.drain(Duration::from_secs(30)).await;
    out.push(fs::read_to_string("serve.env").unwrap());
    out
}

/// Set only in the copy of this test binary that the test starts: that copy does the checking.
const CHILD: &str = "BORG_PULL_TEST_SERVE_ENV_CHILD";
const TEST: &str = "serve_env::borg_serve_never_sees_the_servers_secrets";

#[test]
fn borg_serve_never_sees_the_servers_secrets() {
    if std::env::var_os(CHILD).is_some() {
        return check_in_child();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = TestCommand::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(SECRETS.iter().map(|name| (name, "s3cret")))
        .env("LC_TIME", "C")
        .env("BORG_HOST_ID", "test-host")
        .env("HOME", dir.path())
        // The fake borg writes its dump into its working directory, inherited from ours.
        .current_dir(dir.path());
    let out = child.output();
    assert_ok(&out, "the test run again with the secrets in its environment");
    // Not a vacuous pass: the child found and ran this very test.
    assert!(out.stdout_text().contains("1 passed"), "{}", out.describe());
}

/// In the child: serve_stream and the Supervisor start the fake borg from an environment holding
/// the secrets; none may reach it.
fn check_in_child() {
    let dir = std::env::current_dir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for env in runtime.block_on(dumps(&dir)) {
        let vars: Vec<&str> = env.split('\0').filter(|v| !v.is_empty()).collect();
        for name in SECRETS {
            assert!(
                !vars.iter().any(|v| v.starts_with(&format!("{name}="))),
                "{name} leaked to borg serve: {vars:?}"
            );
        }
        assert!(!env.contains("s3cret"), "{vars:?}");
        for kept in ["LC_TIME=C", "BORG_HOST_ID=test-host"] {
            assert!(vars.contains(&kept), "{kept} missing: {vars:?}");
        }
        assert!(vars.iter().any(|v| v.starts_with("PATH=")), "{vars:?}");
        assert!(vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
    }
}
