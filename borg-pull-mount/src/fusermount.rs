//! Mounting and unmounting as a non-root user through Debian's setuid `fusermount3`, the way
//! libfuse does it.
//!
//! fuser's own fallback opens /dev/fuse first and gives up when that is refused (0600 on some
//! systems), so we do not depend on it: `fusermount3` opens the device and mounts it (as root),
//! then hands the open device back over a socket we gave it (`_FUSE_COMMFD`), as SCM_RIGHTS.

use std::io::{IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use rustix::net::{
    recvmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags,
    SocketType,
};

use crate::limits::{FUSERMOUNT_DEADLINE, FUSERMOUNT_STDERR};

const PROGRAM: &str = "fusermount3";

/// The environment variable naming the socket `fusermount3` sends the device on.
const COMM_FD: &str = "_FUSE_COMMFD";

/// Mounts at `mountpoint` with `options` (`-o` syntax: the ones fusermount3 allows a user; never
/// allow_other) and returns the open /dev/fuse of the new mount.
pub(crate) fn mount(mountpoint: &Path, options: &str) -> std::io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // The child's end must survive exec, and a dup has no CLOEXEC (the original, dropped here,
    // has). A child another thread spawns meanwhile may inherit it too; we never wait for the
    // socket's EOF, only for fusermount3's exit, so such a copy cannot hang us.
    let inherited = rustix::io::dup(&theirs)?;
    drop(theirs);
    let mut command = Command::new(PROGRAM);
    command
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env(COMM_FD, inherited.as_raw_fd().to_string());
    let run = run(command);
    drop(inherited);
    let status = run?;
    // Without auto_unmount fusermount3 exits right after sending: the device is already queued.
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(
        &ours,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|errno| {
        std::io::Error::other(format!(
            "{PROGRAM} exited ({status}) without handing over the FUSE device: {errno}"
        ))
    })?;
    // At most one descriptor fits the buffer; any other message is dropped (closing its fds).
    let device = control.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    device.ok_or_else(|| {
        std::io::Error::other(format!(
            "{PROGRAM} exited ({status}) without handing over the FUSE device"
        ))
    })
}

/// Unmounts `mountpoint` lazily (`-z`: a reader still inside keeps it alive until it lets go).
pub(crate) fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    let mut command = Command::new(PROGRAM);
    command.args(["-u", "-z", "-q", "--"]).arg(mountpoint);
    run(command).map(drop)
}

/// Runs `command` to its end within [`FUSERMOUNT_DEADLINE`] (killed after it); its failure
/// becomes an error carrying its stderr.
fn run(mut command: Command) -> std::io::Result<ExitStatus> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = wait(&mut child)?;
    let mut stderr = Vec::new();
    if let Some(pipe) = child.stderr.take() {
        // Bounded; what it said is only for the message.
        let _ = pipe.take(FUSERMOUNT_STDERR).read_to_end(&mut stderr);
    }
    if status.success() {
        return Ok(status);
    }
    let said = String::from_utf8_lossy(&stderr);
    let said = said.trim();
    Err(std::io::Error::other(if said.is_empty() {
        format!("{PROGRAM} failed ({status})")
    } else {
        format!("{PROGRAM} failed ({status}): {said}")
    }))
}

/// Waits for `child` until [`FUSERMOUNT_DEADLINE`], then kills it.
fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    let mut status = None;
    let found = crate::wait::wait_until(FUSERMOUNT_DEADLINE, || {
        status = child.try_wait().transpose();
        status.is_some()
    });
    match status {
        Some(status) if found => status,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{PROGRAM} did not finish within {FUSERMOUNT_DEADLINE:?}; killed"),
            ))
        }
    }
}
