//! OpenSSH's real sftp-server as a child speaking SFTP on its stdin/stdout.

use std::path::Path;
use std::process::Stdio;

use borg_pull_sftp::{Client, Limits};
use tokio::process::{Child, Command};

/// Where Debian's openssh-sftp-server puts it.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// A running sftp-server and a client on it. The child is killed on drop (and still awaited by
/// tokio's orphan reaper).
pub struct RealServer {
    pub client: Client,
    pub child: Child,
}

/// Starts sftp-server with `args` (e.g. `-R`) in `dir`. A missing sftp-server fails the test:
/// it is a dependency, never a reason to skip.
pub async fn start(dir: &Path, args: &[&str], limits: Limits) -> RealServer {
    assert!(
        Path::new(SFTP_SERVER).exists(),
        "{SFTP_SERVER} is missing: install Debian's openssh-sftp-server (scripts/install-deps)"
    );
    let mut child = Command::new(SFTP_SERVER)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sftp-server");
    let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = Client::start(stream, limits)
        .await
        .expect("sftp session with sftp-server");
    RealServer { client, child }
}
