//! What runs on the machine, read from /proc: children and descendants of a process, processes
//! left behind by a test, connections waiting on a listening socket.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The pids of the direct children of `pid` (spawned by any of its threads), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether process `pid` still exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// How many connections wait, not yet accepted, on the listening socket at `path` (`ss -xl`).
pub fn pending_connections(path: &Path) -> Option<u32> {
    let out = Command::new("ss").args(["-xlnH"]).output().ok()?;
    let wanted = path.to_str()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Netid State Recv-Q Send-Q Local-Address Port Peer-Address Port
        if fields.contains(&wanted) {
            fields.get(2)?.parse().ok()
        } else {
            None
        }
    })
}

/// PIDs and command lines of processes whose argv mentions `needle` (sshd itself excluded).
pub fn processes_mentioning(needle: &[u8]) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.is_empty() || cmdline.starts_with(b"/usr/sbin/sshd") || cmdline.starts_with(b"sshd:") {
            continue;
        }
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// All descendants of `pid` (children first found through /proc/PID/stat's ppid).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The ppid is the second field after the parenthesised command name.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok())
        {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Waits (30 s at most, then panics listing them) until no process's argv mentions `dir`: borg
/// serve, relays, the client's borg, wrappers of this test.
pub fn assert_no_process_mentions(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
