//! `borg serve` inherits only allowlisted environment variables, never the server's secrets.
//!
//! One test in its own binary: it sets variables of this process, which is only sound while no
//! other thread reads the environment.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use borg_pull_core::supervise::{LimitPolicy, Supervisor, SupervisorLimits};
use borg_pull_core::ServeConfig;
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

#[test]
fn borg_serve_never_sees_the_servers_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    for name in SECRETS {
        std::env::set_var(name, "s3cret");
    }
    std::env::set_var("LC_TIME", "C");
    std::env::set_var("BORG_HOST_ID", "test-host");
    std::env::set_var("HOME", dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for env in runtime.block_on(dumps(dir.path())) {
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
