#!/usr/bin/env python3
"""Peak RSS of each relay while it carries a bulk transfer, side by side in one run.

The shared harness times throughput and latency but not memory; a relay sits on every backup, so
its footprint matters too. For each relay command ({sock} = socket path) this starts a sink on a
fresh UNIX socket, pipes BYTES through the relay, and reads the relay's peak RSS (VmHWM, the
kernel's high-water mark of the exec'd image, so no sampling gaps) while the relay waits for the
sink's reply. wait4's ru_maxrss would not do: it keeps the forking python's RSS from before exec.
Rounds are interleaved.

Usage: relay-rss.py 'RELAY_CMD' ['RELAY_CMD' ...]     env: RSS_BYTES (256 MiB), RSS_REPS (3)
"""
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading

BYTES = int(os.environ.get("RSS_BYTES", 256 << 20))
REPS = int(os.environ.get("RSS_REPS", 3))
CHUNK = 1 << 16


def sink(listener, got_eof, may_reply):
    conn, _ = listener.accept()
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    got_eof.set()
    may_reply.wait()
    conn.sendall(b"%d\n" % total)
    conn.close()


def run_once(cmd, sock_path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(1)
    got_eof, may_reply = threading.Event(), threading.Event()
    server = threading.Thread(target=sink, args=(listener, got_eof, may_reply))
    server.start()
    argv = shlex.split(cmd.replace("{sock}", sock_path))
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            os.close(fd)
        os.execvp(argv[0], argv)
    os.close(stdin_r)
    os.close(stdout_w)
    block = b"x" * CHUNK
    left = BYTES
    while left > 0:
        left -= os.write(stdin_w, block[: min(CHUNK, left)])
    os.close(stdin_w)
    got_eof.wait()
    with open(f"/proc/{pid}/status") as status_file:
        hwm = next(int(line.split()[1]) for line in status_file if line.startswith("VmHWM:"))
    may_reply.set()
    reply = b""
    while True:
        data = os.read(stdout_r, 4096)
        if not data:
            break
        reply += data
    os.close(stdout_r)
    _, status = os.waitpid(pid, 0)
    server.join()
    listener.close()
    os.unlink(sock_path)
    if status != 0 or int(reply or b"0") != BYTES:
        sys.exit(f"relay-rss: {cmd!r} failed: status {status}, sink counted {reply!r}")
    return hwm  # KiB


def main():
    cmds = sys.argv[1:]
    if not cmds:
        sys.exit(__doc__)
    results = {cmd: [] for cmd in cmds}
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = os.path.join(tmp, "rss.sock")
        for _ in range(REPS):
            for cmd in cmds:
                results[cmd].append(run_once(cmd, sock_path))
    print(f"\npeak RSS while relaying {BYTES >> 20} MiB (median of {REPS}, VmHWM)")
    print("| relay | peak RSS KiB |")
    print("|---|---|")
    for cmd, values in results.items():
        print(f"| `{cmd}` | {int(statistics.median(values))} |")


if __name__ == "__main__":
    main()
