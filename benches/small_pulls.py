#!/usr/bin/env python3
"""Helper of benches/small-pulls.sh: generates the data set and prints the table.

    small_pulls.py gen DIR MB FILES     # the data set (sentinel written last)
    small_pulls.py table RESULTS.tsv [RTT_MS]   # markdown table (medians over the rounds)

RESULTS.tsv: one line per run, tab-separated, header `method op round wall_ns rc ok note`.
"""
import os
import random
import statistics
import sys
import time

MiB = 1 << 20
BIG_FILES = 20


def gen(root, total_mb, files):
    """~total_mb MiB in `files` files: half of it in BIG_FILES big files (half random, half
    compressible), the other half in many small files (sizes random around the mean, alternately
    random and compressible: 1 KiB random + 3 KiB zeros per 4 KiB, so no two chunks are equal),
    100 to a directory. A small sentinel is written last, so no data file is the newest-ctime one
    (borg never caches that one, which would make "unchanged" re-read a big file). The data files'
    mtimes are set a minute back: over SFTP (and sshfs) mtimes are whole seconds, and borg leaves
    out of its files cache every file as new as the newest one, so a small set written within
    one second would be re-read by every "unchanged" run of sftp and sshfs."""
    rnd = random.Random(20261206)
    back = int(time.time()) - 60
    total = total_mb * MiB
    small_files = max(files - BIG_FILES - 1, 1)

    def compressible(n):
        out = bytearray()
        while len(out) < n:
            out += os.urandom(1024) + bytes(3072)
        return bytes(out[:n])

    def write(path, data):
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (back, back))

    os.makedirs(os.path.join(root, "big"), exist_ok=True)
    big = total // 2 // BIG_FILES
    for i in range(BIG_FILES):
        write(os.path.join(root, "big", f"b{i:02d}"), (os.urandom if i % 2 else compressible)(big))
    mean = (total - big * BIG_FILES) // small_files
    for i in range(small_files):
        d = os.path.join(root, "small", f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        n = max(1, int(mean * rnd.uniform(0.1, 1.9)))
        write(os.path.join(d, f"s{i:05d}"), (os.urandom if i % 2 else compressible)(n))
    with open(os.path.join(root, "zz-sentinel"), "wb") as f:
        f.write(b"written last\n")


OPS = [("fresh", "`create`, fresh"), ("unchanged", "`create`, unchanged"), ("list", "`list`")]
METHODS = [("local", "local borg"), ("push", "push over ssh"), ("recipe", "socat recipe"),
           ("before", "pull before"), ("pull", "pull"), ("sshfs", "sshfs + borg (docs)"),
           ("sftp", "pull --via sftp"), ("sshfs-rtt", "sshfs + borg, {rtt} ms RTT"),
           ("sftp-rtt", "pull --via sftp, {rtt} ms RTT")]
# issue 18's goals for `pull --via sftp`: (method, op, the method it is compared with, at most).
GOALS = [("sftp", "fresh", "pull", 1.3), ("sftp", "unchanged", "pull", 2.0),
         ("sftp-rtt", "unchanged", "sftp", 3.0)]


def table(path, rtt="?"):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    rows = [dict(zip(lines[0], l)) for l in lines[1:]]
    bad = [r for r in rows if r["ok"] != "yes"]
    runs = {}
    for r in rows:
        if r["ok"] == "yes":
            runs.setdefault((r["method"], r["op"]), []).append(int(r["wall_ns"]) / 1e9)
    present = [(m, name.format(rtt=rtt)) for m, name in METHODS if any(k[0] == m for k in runs)]
    rounds = len({r["round"] for r in rows})
    print(f"Medians of {rounds} interleaved rounds, wall seconds of the whole command "
          "(connect, log-in, borg on both ends, clean-up; for sshfs the mount and unmount too); "
          "ratios: to the socat recipe, for the fresh `create` also to local borg; sshfs and sftp "
          "to the socket pull; at a distance (-rtt) to the same method at 0 ms.\n")
    print("| | " + " | ".join(name for _, name in present) + " |")
    print("|---|" + "---|" * len(present))
    for op, label in OPS:
        cells = []
        recipe = runs.get(("recipe", op))
        local = runs.get(("local", op))
        for m, _ in present:
            xs = runs.get((m, op))
            if not xs:
                cells.append("-")
                continue
            med = statistics.median(xs)
            cell = f"{med:.2f} s"
            notes = []
            if m in ("pull", "before", "push") and recipe:
                notes.append(f"{med / statistics.median(recipe):.2f}x recipe")
            if op == "fresh" and m != "local" and local:
                notes.append(f"{med / statistics.median(local):.2f}x local")
            if m == "pull" and runs.get(("before", op)):
                notes.append(f"{med / statistics.median(runs[('before', op)]):.2f}x before")
            if m in ("sshfs", "sftp") and runs.get(("pull", op)):
                notes.append(f"{med / statistics.median(runs[('pull', op)]):.2f}x pull")
            if m.endswith("-rtt") and runs.get((m[:-4], op)):
                notes.append(f"{med / statistics.median(runs[(m[:-4], op)]):.2f}x at 0 ms")
            if notes:
                cell += " (" + "; ".join(notes) + ")"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("Ranges (min..max over the rounds):\n")
    for op, label in OPS:
        parts = []
        for m, name in present:
            xs = runs.get((m, op))
            if xs:
                parts.append(f"{m} {min(xs):.2f}..{max(xs):.2f}")
        print(f"- {label}: " + ", ".join(parts))
    goals = []
    for m, op, base, most in GOALS:
        xs, ys = runs.get((m, op)), runs.get((base, op))
        if xs and ys:
            ratio = statistics.median(xs) / statistics.median(ys)
            verdict = "met" if ratio <= most else "MISSED"
            goals.append(f"- {m} {op} / {base} {op}: {ratio:.2f}x (goal <= {most}x): {verdict}")
    if goals:
        print("\nGoals (issue 18):\n")
        print("\n".join(goals))
    if bad:
        print(f"\n**{len(bad)} failed run(s), not counted:**")
        for r in bad:
            print(f"- {r['method']} {r['op']} round {r['round']}: {r['note']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["gen"] and len(sys.argv) == 5:
        gen(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["table"] and len(sys.argv) in (3, 4):
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)
