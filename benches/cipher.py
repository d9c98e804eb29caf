#!/usr/bin/env python3
"""Helper of benches/cipher.sh: the markdown tables (medians over the rounds) of its results.

    cipher.py RESULTS.tsv

RESULTS.tsv has one line per run, tab-separated, with a header line (see cipher.sh).
"""
import statistics
import sys

GiB = 1 << 30


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def rng(xs, fmt):
    return f"{fmt.format(min(xs))}..{fmt.format(max(xs))}" if xs else "-"


def main(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    rows = [dict(zip(lines[0], l)) for l in lines[1:]]
    for r in rows:
        for k in ("round", "bytes", "xfer_ns", "wall_ns", "cpu_sshd_ns", "cpu_server_ns", "cpu_ends_ns"):
            r[k] = int(r[k])
    bad = [r for r in rows if r["ok"] != "yes"]
    good = [r for r in rows if r["ok"] == "yes"]
    out = []

    tun = {}
    for r in good:
        if r["kind"] == "tunnel":
            tun.setdefault((r["dir"], r["cipher"], r["tool"]), []).append(r)
    if tun:
        out.append("| direction | cipher | tool | MB/s median (min..max) | CPU s/GiB, both sides: median (min..max) "
                   "| of which client's sshd / server side | runs |")
        out.append("|---|---|---|---|---|---|---|")
        corder = {"chacha20-poly1305": 0, "aes128-gcm": 1, "aes256-gcm": 2}
        summary = {}
        for key in sorted(tun, key=lambda k: (k[0], corder.get(k[1], 9), k[2] != "pull")):
            d, c, tool = key
            rs = tun[key]
            mbs = [r["bytes"] / (r["xfer_ns"] / 1e9) / 1e6 for r in rs]
            gib = lambda r: r["bytes"] / GiB
            cpu = [(r["cpu_sshd_ns"] + r["cpu_server_ns"]) / 1e9 / gib(r) for r in rs]
            sshd = med([r["cpu_sshd_ns"] / 1e9 / gib(r) for r in rs])
            srv = med([r["cpu_server_ns"] / 1e9 / gib(r) for r in rs])
            summary[key] = (med(mbs), med(cpu), sshd, srv)
            label = "client -> server" if d == "c2s" else "server -> client"
            tname = "pull (russh)" if tool == "pull" else "ssh -c (OpenSSH)"
            out.append(f"| {label} | {c} | {tname} | **{med(mbs):.0f}** ({rng(mbs, '{:.0f}')}) "
                       f"| **{med(cpu):.2f}** ({rng(cpu, '{:.2f}')}) | {sshd:.2f} / {srv:.2f} | {len(rs)} |")
        out.append("")
        base = "chacha20-poly1305"
        ratios = [(d, c) for (d, c, t) in summary if t == "pull" and c != base and (d, base, "pull") in summary]
        if ratios:
            out.append(f"| direction | pull: cipher vs {base} | throughput | CPU per GiB, both sides | client's sshd | server side (ours) |")
            out.append("|---|---|---|---|---|---|")
            for d, c in sorted(ratios, key=lambda k: (k[0], corder.get(k[1], 9))):
                a, b = summary[(d, c, "pull")], summary[(d, base, "pull")]
                label = "client -> server" if d == "c2s" else "server -> client"
                out.append(f"| {label} | {c} | **{a[0] / b[0]:.2f}x** | **{a[1] / b[1]:.2f}x** "
                           f"| {a[2] / b[2]:.2f}x | {a[3] / b[3]:.2f}x |")
            out.append("")

    bc = {}
    for r in good:
        if r["kind"] == "borg":
            bc.setdefault(r["cipher"], []).append(r)
    if bc:
        local = med([r["wall_ns"] / 1e9 for r in bc.get("local", [])]) if "local" in bc else None
        out.append("| borg create | wall s median (min..max) | x local | CPU s, all processes: median (min..max) "
                   "| of which client's sshd side / server side | runs |")
        out.append("|---|---|---|---|---|---|")
        order = {"local": 0, "rpc": 1, "chacha20-poly1305": 2, "aes256-gcm": 3, "aes128-gcm": 4, "auto": 5}
        for what in sorted(bc, key=lambda w: order.get(w, 9)):
            rs = bc[what]
            wall = [r["wall_ns"] / 1e9 for r in rs]
            cpu = [(r["cpu_sshd_ns"] + r["cpu_server_ns"] + r["cpu_ends_ns"]) / 1e9 for r in rs]
            sshd = med([r["cpu_sshd_ns"] / 1e9 for r in rs])
            srv = med([r["cpu_server_ns"] / 1e9 for r in rs])
            name = {"local": "local (no ssh; the limit)",
                    "rpc": "borg serve through a local pipe (no ssh; the remote floor)"}.get(what, f"pull --cipher {what}")
            x = f"{med(wall) / local:.2f}x" if local else "-"
            side = "- / -" if what in ("local", "rpc") else f"{sshd:.2f} / {srv:.2f}"
            out.append(f"| {name} | **{med(wall):.2f}** ({rng(wall, '{:.2f}')}) | {x} | **{med(cpu):.2f}** "
                       f"({rng(cpu, '{:.2f}')}) | {side} | {len(rs)} |")
        out.append("")
    out.append(f"failed runs (excluded above): {len(bad)}")
    for r in bad:
        out.append(f"  FAILED: {r['kind']} {r['tool']} {r['cipher']} {r['dir']} round={r['round']}: {r['note']}")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
