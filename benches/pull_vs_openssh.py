#!/usr/bin/env python3
"""Helper of benches/pull-vs-openssh.sh: generates the backup data set and prints the tables.

    pull_vs_openssh.py gen DIR MB          # data for the borg create runs (sentinel written last)
    pull_vs_openssh.py table RESULTS.tsv   # markdown tables (medians over the rounds)

RESULTS.tsv has one line per run, tab-separated, with a header line (see the .sh script).
"""
import os
import random
import statistics
import sys

MiB = 1 << 20
GiB = 1 << 30


def gen(root, total_mb):
    """~total_mb MB: 40 % random files, 40 % compressible (1 KiB random + 3 KiB zeros per 4 KiB,
    so lz4 shrinks it ~4x and no two chunks are equal), 20 % small files (4-64 KiB, half random,
    half compressible) in directories of 100. A small sentinel is written last, so no data file is
    the newest-ctime one (borg never caches that one)."""
    rnd = random.Random(20261126)
    total = total_mb * 1000 * 1000

    def compressible(n):
        out = bytearray()
        while len(out) < n:
            out += os.urandom(1024) + bytes(3072)
        return bytes(out[:n])

    def write(path, data):
        with open(path, "wb") as f:
            f.write(data)

    os.makedirs(root, exist_ok=True)
    for kind, share, make in (("random", 0.4, os.urandom), ("compressible", 0.4, compressible)):
        d = os.path.join(root, kind)
        os.makedirs(d, exist_ok=True)
        left, i = int(total * share), 0
        while left > 0:
            n = min(left, rnd.randint(1, 16) * MiB)
            write(os.path.join(d, f"f{i:04d}"), make(n))
            left -= n
            i += 1
    left, i = int(total * 0.2), 0
    while left > 0:
        d = os.path.join(root, "small", f"d{i // 100:03d}")
        os.makedirs(d, exist_ok=True)
        n = min(left, rnd.randint(4, 64) * 1024)
        write(os.path.join(d, f"s{i:05d}"), (os.urandom if i % 2 else compressible)(n))
        left -= n
        i += 1
    write(os.path.join(root, "zz-sentinel"), b"written last\n")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def rng(xs, fmt):
    return f"{fmt.format(min(xs))}..{fmt.format(max(xs))}" if xs else "-"


def table(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    head, rows = lines[0], [dict(zip(lines[0], l)) for l in lines[1:]]
    for r in rows:
        for k in ("rtt", "round", "bytes", "xfer_ns", "wall_ns", "cpu_ns", "cpu_sshd_ns",
                  "cpu_server_ns", "cpu_ends_ns", "rc"):
            if k in r:
                r[k] = int(r[k])
    bad = [r for r in rows if r["ok"] not in ("yes", "skipped")]
    skipped = sorted({(r["tool"], r.get("note", "")) for r in rows if r["ok"] == "skipped"})
    rounds = sorted({r["round"] for r in rows if r["ok"] != "skipped"})

    def group(kind):
        g = {}
        for r in rows:
            if r["kind"] == kind and r["ok"] == "yes":
                g.setdefault((r["rtt"], r["dir"], r["tool"]), []).append(r)
        return g

    out = []
    tun = group("tunnel")
    if tun:
        out.append("| RTT | direction | tool | MB/s median (min..max) | CPU s/GiB median (min..max) "
                   "| of which sshd side / server side | whole command s (incl. setup) | runs |")
        out.append("|---|---|---|---|---|---|---|---|")
        ratios = []
        torder = {"pull": 0, "before": 1, "openssh": 2}
        for key in sorted(tun, key=lambda k: (k[0], {"c2s": 0, "s2c": 1, "setup": 2}[k[1]], torder.get(k[2], 9))):
            rtt, d, tool = key
            rs = tun[key]
            wall = [r["wall_ns"] / 1e9 for r in rs]
            if d == "setup":
                cpu = [r["cpu_ns"] / 1e9 for r in rs]
                out.append(f"| {rtt} ms | setup only (0 bytes) | {tool} | - | CPU s per run {med(cpu):.3f} "
                           f"({rng(cpu, '{:.3f}')}) | - | {med(wall):.2f} ({rng(wall, '{:.2f}')}) | {len(rs)} |")
                continue
            mbs = [r["bytes"] / (r["xfer_ns"] / 1e9) / 1e6 for r in rs]
            cpg = [r["cpu_ns"] / 1e9 / (r["bytes"] / GiB) for r in rs]
            sshd = med([r["cpu_sshd_ns"] / 1e9 / (r["bytes"] / GiB) for r in rs])
            srv = med([r["cpu_server_ns"] / 1e9 / (r["bytes"] / GiB) for r in rs])
            out.append(f"| {rtt} ms | {'client -> server' if d == 'c2s' else 'server -> client'} | {tool} "
                       f"| **{med(mbs):.0f}** ({rng(mbs, '{:.0f}')}) | **{med(cpg):.2f}** ({rng(cpg, '{:.2f}')}) "
                       f"| {sshd:.2f} / {srv:.2f} | {med(wall):.2f} | {len(rs)} |")
            if tool in ("pull", "before") and (rtt, d, "openssh") in tun:
                o = tun[(rtt, d, "openssh")]
                omb = med([r["bytes"] / (r["xfer_ns"] / 1e9) / 1e6 for r in o])
                ocpu = med([r["cpu_ns"] / 1e9 / (r["bytes"] / GiB) for r in o])
                ratios.append((rtt, d, tool, med(mbs) / omb, med(cpg) / ocpu))
        out.append("")
        out.append("| RTT | direction | tool | tool / OpenSSH throughput | tool / OpenSSH CPU per GiB | target |")
        out.append("|---|---|---|---|---|---|")
        for rtt, d, tool, tr, cr in ratios:
            target = 1.0 if rtt == 0 else 2.0
            verdict = "met" if tr >= target else "MISSED"
            out.append(f"| {rtt} ms | {'client -> server' if d == 'c2s' else 'server -> client'} | {tool} "
                       f"| **{tr:.2f}x** | {cr:.2f}x | >= {target:.0f}x: {verdict} |")
        out.append("")
        # pull against the "before" build (BEFORE_BIN), same run: the regression check.
        pairs = [k for k in sorted(tun) if k[2] == "pull" and (k[0], k[1], "before") in tun]
        if pairs:
            out.append("| RTT | direction | pull / before: throughput | CPU per GiB (setup: CPU s) | whole command s |")
            out.append("|---|---|---|---|---|")
            for rtt, d, _ in pairs:
                p, b = tun[(rtt, d, "pull")], tun[(rtt, d, "before")]
                wall = med([r["wall_ns"] for r in p]) / med([r["wall_ns"] for r in b])
                if d == "setup":
                    cpu = med([r["cpu_ns"] for r in p]) / med([r["cpu_ns"] for r in b])
                    out.append(f"| {rtt} ms | setup only (0 bytes) | - | {cpu:.2f}x | {wall:.2f}x |")
                    continue
                tp = med([r["bytes"] / r["xfer_ns"] for r in p]) / med([r["bytes"] / r["xfer_ns"] for r in b])
                cpu = med([r["cpu_ns"] / r["bytes"] for r in p]) / med([r["cpu_ns"] / r["bytes"] for r in b])
                out.append(f"| {rtt} ms | {'client -> server' if d == 'c2s' else 'server -> client'} "
                           f"| **{tp:.2f}x** | {cpu:.2f}x | {wall:.2f}x |")
            out.append("")
    bc = group("borg")
    if bc:
        order = {"local": 0, "pull": 1, "before": 2, "socat": 3, "agent": 4, "recipe-agent": 5,
                 "tcp": 6, "recipe-tcp": 7}
        names = {"local": "borg create /local/repo (no ssh; the limit)",
                 "pull": "borg-pull-server pull (--via socket)",
                 "before": "borg-pull-server pull (before)",
                 "socat": "ssh -R + socat (docs' recipe)",
                 "agent": "borg-pull-server pull --via agent",
                 "recipe-agent": "ssh-agent + ssh -A (docs' recipe)",
                 "tcp": "borg-pull-server pull --via tcp",
                 "recipe-tcp": "ssh -A -R PORT:localhost:22 (docs' recipe)"}
        out.append("| method | RTT | wall s median (min..max) | MB/s (data / wall) | CPU s median (all processes) | runs |")
        out.append("|---|---|---|---|---|---|")
        for key in sorted(bc, key=lambda k: (order.get(k[2], 9), k[0])):
            rtt, _, tool = key
            rs = bc[key]
            wall = [r["wall_ns"] / 1e9 for r in rs]
            cpu = [(r["cpu_ns"] + r["cpu_ends_ns"]) / 1e9 for r in rs]
            mbs = "-"
            if rs[0]["bytes"] > 0:
                mbs = f"{rs[0]['bytes'] / med(wall) / 1e6:.1f}"
            out.append(f"| {names.get(tool, tool)} | {'-' if tool == 'local' else f'{rtt} ms'} | **{med(wall):.2f}** "
                       f"({rng(wall, '{:.2f}')}) | {mbs} | {med(cpu):.2f} | {len(rs)} |")
        out.append("")
        wall_of = {k: med([r["wall_ns"] / 1e9 for r in v]) for k, v in bc.items()}
        local = [v for k, v in wall_of.items() if k[2] == "local"]
        # Each of ours against the docs' recipe of the same method.
        recipe_of = {"pull": "socat", "before": "socat", "agent": "recipe-agent", "tcp": "recipe-tcp"}
        for (rtt, d, tool), w in sorted(wall_of.items(), key=lambda kv: (kv[0][0], order.get(kv[0][2], 9))):
            rec = recipe_of.get(tool)
            if rec is None or (rtt, d, rec) not in wall_of:
                continue
            s = wall_of[(rtt, d, rec)]
            extra = ""
            if local:
                extra = (f"; time over the local repository: {tool} +{w - local[0]:.2f} s, "
                         f"{rec} +{s - local[0]:.2f} s")
            label = rec if rec.startswith("recipe-") else f"{rec} recipe"
            out.append(f"borg create at {rtt} ms: {tool} {w:.2f} s vs {label} {s:.2f} s = "
                       f"**{s / w:.2f}x** as fast{extra}")
            if tool == "pull" and (rtt, d, "before") in wall_of:
                b = wall_of[(rtt, d, "before")]
                out.append(f"borg create at {rtt} ms: pull {w:.2f} s vs before {b:.2f} s = **{w / b:.2f}x** the time")
        out.append("")
    out.append(f"rounds: {len(rounds)}; failed runs (excluded above): {len(bad)}")
    for r in bad:
        out.append(f"  FAILED: {r['kind']} {r['tool']} {r['dir']} rtt={r['rtt']} round={r['round']}: {r.get('note', '')}")
    for tool, note in skipped:
        out.append(f"  {tool}: skipped: {note}")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(sys.argv[2])
    else:
        sys.exit(__doc__)
