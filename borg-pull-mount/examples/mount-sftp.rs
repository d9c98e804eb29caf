//! Mounts a directory served by an SFTP server reached without SSH, for benches and manual tries:
//! `mount-sftp TREE MOUNTPOINT [HOST:PORT]` (a TCP SFTP server, e.g. socat in front of OpenSSH's
//! sftp-server, as `sshfs -o directport` uses it; without it, sftp-server runs as a child). Prints
//! `mounted` when ready, unmounts when stdin closes, then prints the report to stderr.

use std::io::Read;
use std::process::Stdio;

use borg_pull_mount::{Mount, MountOptions};
use borg_pull_sftp::{Client, Limits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tree, mountpoint, rest @ ..] = args.as_slice() else {
        return Err("usage: mount-sftp TREE MOUNTPOINT [HOST:PORT]".into());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (client, _child) = match rest {
        [address] => rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok::<_, Box<dyn std::error::Error>>((Client::start(stream, Limits::default()).await?, None))
        })?,
        _ => rt.block_on(async {
            let mut child = tokio::process::Command::new("/usr/lib/openssh/sftp-server")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
            let client = Client::start(stream, Limits::default()).await?;
            Ok::<_, Box<dyn std::error::Error>>((client, Some(child)))
        })?,
    };
    let options = MountOptions::new(tree.as_bytes().to_vec());
    let mount = rt.block_on(Mount::start(client, mountpoint, options))?;
    println!("mounted");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let report = mount.report();
    mount.stop()?;
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    Ok(())
}
