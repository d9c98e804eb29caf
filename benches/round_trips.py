#!/usr/bin/env python3
"""Helper of benches/round-trips.sh: counts network round trips per phase of one run, and prints
the tables.

    round_trips.py run RUN.json      # analyse one run (paths in RUN.json), print one JSON line
    round_trips.py table RUNS.jsonl  # markdown tables over all runs (medians over the rounds)
    round_trips.py trace RUN.json    # every chunk with its depth, beside sshd's markers
    round_trips.py selftest          # the counter on made-up exchanges

Inputs of one run (all timestamps CLOCK_REALTIME ns):
* the delay proxy's log (benches/delay_proxy.rs, DELAY_PROXY_LOG): `CONN EVENT NS BYTES` per chunk
  read from the ssh client (c2s: the time the ssh client sent it) or from sshd (s2c: the time sshd
  sent it). A chunk arrives ONE_WAY later (c2s: or at the proxy's connect to sshd, if later);
* sshd's LogLevel DEBUG3 log, each line prefixed with the time it was written (phase markers on the
  backup client's side, the same sshd for every tool);
* stamps written by a wrapper around `borg serve` on the server side (start and exit), and by
  one around borg on the client (its exit; the same wrapper for every tool);
* t0/t1: the tool's start and exit, taken by the script.

Round trips: every chunk gets a depth, the number of one-way trips on the longest chain of
"could have been caused by" before it: a chunk sent by one side is after a chunk of the other side
if it was sent after that one arrived (depth + 1); later chunks of the same direction keep at least
the depth of earlier ones. In a ping-pong protocol (key exchange, auth, requests waiting for their
reply) this is exactly the number of one-way latencies the exchange waits for; pipelined messages
(sent without waiting) share a depth. It is an upper bound where both sides talk on their own
(borg's start-up, data), so those phases are reported but are not the set-up/clean-up figures.
Round trips = one-way trips / 2 (halves happen: a message that needs no reply costs half a trip
on the critical path, e.g. the exit status that ends OpenSSH's session). The depth at a phase marker
is taken in the frame of the side that logged it (sshd: c2s chunks arrived, s2c chunks sent by
then; server side: the other way round). With DELAY_PROXY_HANDSHAKE=1 TCP's handshake is charged
by the proxy and counted here as 1 round trip ("connect").
"""
import json
import re
import statistics
import sys

RX = {
    "sshd_accept": re.compile(r"Connection from 127\.0\.0\.1 port (\d+)"),
    "kex_done": re.compile(r"SSH2_MSG_NEWKEYS received"),
    "auth_done": re.compile(r"Accepted publickey for"),
    "global": re.compile(r"server_input_global_request: rtype (\S+) want_reply (\d)"),
    "open": re.compile(r"server_input_channel_open: ctype (\S+)"),
    "req": re.compile(r"server_input_channel_req: channel (\d+) request (\S+) reply (\d)"),
    "command": re.compile(r"mm_audit_run_command entering command (.*)"),
    "exit": re.compile(r"session_exit_message: session (\d+) channel (\d+)"),
    "kexalg": re.compile(r"kex: algorithm: (\S+)"),
    "userauth": re.compile(r"userauth-request for user \S+ service \S+ method (\S+)"),
    "pktest": re.compile(r"userauth_pubkey: publickey test pkalg"),
    "closed": re.compile(r"Connection closed by|Received disconnect from|Disconnected from"),
}


def load_proxy(path, t0, t1):
    """The chunks of the one connection accepted between t0 and t1 (the run's connection)."""
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 4:
                rows.append((int(p[0]), p[1], int(p[2]), int(p[3])))
    conns = [c for c, ev, t, _ in rows if ev == "accept" and t0 <= t <= t1]
    if len(conns) != 1:
        raise SystemExit(f"expected one proxy connection in the run, found {len(conns)}")
    conn = conns[0]
    return [(ev, t, n) for c, ev, t, n in rows if c == conn]


def depths(chunks, one_way):
    """[(dir, sent_ns, arrived_ns, depth)] in the order sent, and the proxy's accept/connect."""
    accept = next(t for ev, t, _ in chunks if ev == "accept")
    connect = next((t for ev, t, _ in chunks if ev == "connect"), accept)
    data = sorted(((ev, t, n) for ev, t, n in chunks if ev in ("c2s", "s2c") and n > 0), key=lambda x: x[1])
    out = []
    last = {"c2s": 0, "s2c": 0}  # depth of the latest chunk sent in each direction
    arrived = {"c2s": [], "s2c": []}  # (arrival, depth) per direction, in send order
    for ev, t, n in data:
        arr = t + one_way
        if ev == "c2s":
            arr = max(arr, connect)
        other = "s2c" if ev == "c2s" else "c2s"
        d = last[ev]
        for a, dd in arrived[other]:
            if a <= t:
                d = max(d, dd + 1)
        last[ev] = d
        arrived[ev].append((arr, d))
        out.append((ev, t, arr, d))
    return accept, connect, out


def depth_at(chunks, t, frame):
    """Depth known at time t on one side: 'sshd' (c2s arrived, s2c sent), 'server' (the ssh
    client: c2s sent, s2c arrived) or 'received' (c2s arrived: for what sshd logs when a message
    arrives; its reply, sent before the log line got its time stamp, must not count)."""
    d = 0
    for ev, sent, arr, dd in chunks:
        if frame == "received":
            ok = ev == "c2s" and arr <= t
        elif frame == "sshd":
            ok = arr <= t if ev == "c2s" else sent <= t
        else:
            ok = sent <= t if ev == "c2s" else arr <= t
        if ok:  # a chunk that arrived has made one more trip than when it was sent
            arrived = frame == "received" or (frame == "sshd") == (ev == "c2s")
            d = max(d, dd + 1 if arrived else dd)
    return d


def load_sshd(path, t0, t1):
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            ts, _, text = line.rstrip("\n").partition(" ")
            try:
                t = int(ts)
            except ValueError:
                continue
            if not t0 <= t <= t1:
                continue
            for name, rx in RX.items():
                m = rx.search(text)
                if m:
                    events.append((t, name, m.groups()))
    return events


def auth_methods(ev):
    """userauth requests in order; a publickey request without signature is a query (sshd logs
    'publickey test' for it), answered by PK_OK: one round trip that a signed request avoids."""
    out = []
    for t, n, g in ev:
        if n == "userauth":
            out.append(g[0])
        elif n == "pktest" and out:
            out[-1] += " (query, no signature)"
    return out


def analyse(run):
    t0, t1, one_way = run["t0"], run["t1"], run["one_way_ms"] * 1_000_000
    handshake = 2 if run.get("handshake") else 0
    accept, connect, ch = depths(load_proxy(run["proxy_log"], t0, t1), one_way)
    ev = load_sshd(run["sshd_log"], t0, t1 + 2_000_000_000)
    stamps = {}
    for path in (run["stamps"], run["client_stamps"]):
        with open(path) as f:
            for line in f:
                k, v = line.split()
                stamps.setdefault(k, int(v))
    serve_start, serve_end = stamps.get("start"), stamps.get("end")
    if serve_start is None:
        raise SystemExit("borg serve never started")

    def first(name, after=0):
        return next(((t, g) for t, n, g in ev if n == name and t >= after), (None, None))[0]

    kex = first("kex_done")
    auth = first("auth_done")
    # Exec requests, in order, with their command text and channel.
    execs = []
    pending = None
    for t, n, g in ev:
        if n == "req" and g[1] in ("exec", "shell", "subsystem"):
            pending = {"t": t, "channel": g[0], "command": ""}
            execs.append(pending)
        elif n == "command" and pending is not None and not pending["command"]:
            pending["command"] = g[0]
    borg = [e for e in execs if e["t"] < serve_start]
    if not borg or kex is None or auth is None:
        raise SystemExit(f"markers missing in sshd's log (kex {kex}, auth {auth}, execs {len(execs)})")
    borg = borg[-1]
    borg_exit = stamps.get("client_end")  # written on the client by a wrapper, just before borg's exit
    if borg_exit is None:
        raise SystemExit("no stamp of borg's exit on the client")

    def requests(a, b):
        execs_n = sum(1 for e in execs if a <= e["t"] < b)
        globs = [g[0].replace("@openssh.com", "") for t, n, g in ev if n == "global" and a <= t < b and g[1] == "1"]
        opens = sum(1 for t, n, g in ev if n == "open" and g[0] == "session" and a <= t < b)
        return {"execs": execs_n, "sessions": opens, "global_requests": globs}

    marks = [
        ("launch", accept, 0, "server"),  # process start to its TCP connect: no network
        ("connect", connect, handshake, "server"),  # the ssh client may send from here
        ("kex", kex, None, "received"),
        ("auth", auth, None, "received"),
        ("setup", borg["t"], None, "received"),
        ("start", serve_start, None, "server"),
        ("data", borg_exit, None, "sshd"),
        ("cleanup", t1, None, "server"),
    ]
    phases = {}
    prev_t, prev_d = t0, 0
    for name, t, fixed, frame in marks:
        d = fixed if fixed is not None else depth_at(ch, t, frame) + handshake
        phases[name] = {"rt": (d - prev_d) / 2, "s": (t - prev_t) / 1e9}
        prev_t, prev_d = t, d
    return {
        "tool": run["tool"], "work": run["work"], "round": run["round"], "wall_s": (t1 - t0) / 1e9,
        "phases": phases,
        "setup_requests": requests(auth, borg["t"] + 1),
        "cleanup_requests": requests(borg_exit, t1 + 2_000_000_000),
        "execs": len(execs),
        "kex_algorithm": next((g[0] for t, n, g in ev if n == "kexalg"), "?"),
        "auth_methods": auth_methods(ev),
        "bytes_c2s": sum(n for e, t, n in load_proxy(run["proxy_log"], t0, t1) if e == "c2s"),
    }


PHASES = [
    ("launch", "launch: the tool's start to its TCP connect (no network)"),
    ("connect", "connect (TCP handshake, charged by the proxy)"),
    ("kex", "banners + key exchange (to sshd's NEWKEYS received)"),
    ("auth", "authentication (to sshd's \"Accepted publickey\")"),
    ("setup", "after auth up to borg's exec request at sshd (sessions, helper execs, forward)"),
    ("start", "borg's exec -> `borg serve` starts on the server (borg start-up on the client, forwarded channel open)*"),
    ("data", "borg's session, to borg's exit on the client (borg's own RPCs)*"),
    ("cleanup", "clean-up: borg exited on the client -> the tool exits (exit status, cancel forward, rm, disconnect)"),
]
SETUP = ("launch", "connect", "kex", "auth", "setup")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_rt(x):
    return "-" if x != x else (f"{x:.0f}" if x == int(x) else f"{x:.1f}")


def table(path):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    ok = [r for r in runs if "phases" in r]
    bad = [r for r in runs if "phases" not in r]
    order = {"pull": 0, "before": 1, "recipe": 2}
    tools = sorted({r["tool"] for r in ok}, key=lambda t: order.get(t, 9))
    works = sorted({r["work"] for r in ok}, key=lambda w: ({"tiny": 0, "big": 1}.get(w, 9), w))
    names = {"pull": "pull", "before": "pull (before)", "recipe": "ssh -R + socat (recipe)"}
    out = []
    out.append("Round trips per phase, median over the rounds (in brackets: median seconds of the phase)")
    out.append("")
    cols = [(t, w) for t in tools for w in works]
    out.append("| phase | " + " | ".join(f"{names.get(t, t)}, {w}" for t, w in cols) + " |")
    out.append("|---|" + "---|" * len(cols))

    def cell(tw, key):
        t, w = tw
        rs = [r for r in ok if r["tool"] == t and r["work"] == w]
        rt = med([r["phases"][key]["rt"] for r in rs])
        s = med([r["phases"][key]["s"] for r in rs])
        return f"{fmt_rt(rt)} ({s:.2f} s)"

    for key, label in PHASES:
        out.append(f"| {label} | " + " | ".join(cell(c, key) for c in cols) + " |")

    def total(tw, keys):
        t, w = tw
        rs = [r for r in ok if r["tool"] == t and r["work"] == w]
        rt = med([sum(r["phases"][k]["rt"] for k in keys) for r in rs])
        s = med([sum(r["phases"][k]["s"] for k in keys) for r in rs])
        return f"**{fmt_rt(rt)}** ({s:.2f} s)"

    out.append("| **set-up: start to borg's exec at sshd** | " + " | ".join(total(c, SETUP) for c in cols) + " |")
    out.append("| **set-up + clean-up** | " + " | ".join(total(c, SETUP + ("cleanup",)) for c in cols) + " |")
    out.append("")
    out.append("| sshd's log, one run of each tool | " + " | ".join(names.get(t, t) for t in tools) + " |")
    out.append("|---|" + "---|" * len(tools))

    def reqs(t, key):
        rs = [r for r in ok if r["tool"] == t]
        r = rs[len(rs) // 2]
        q = r[key]
        g = ", ".join(q["global_requests"]) or "none"
        return f"{q['sessions']} session(s), {q['execs']} exec(s); global requests wanting a reply: {g}"

    def authm(t):
        rs = [r for r in ok if r["tool"] == t]
        r = rs[len(rs) // 2]
        return f"{r['kex_algorithm']}; auth requests: {', '.join(r['auth_methods'])}"

    out.append("| key exchange; userauth requests in order (sshd's log) | " + " | ".join(authm(t) for t in tools) + " |")
    out.append("| requests after auth, up to and incl. borg's exec (sshd's log) | " + " | ".join(reqs(t, "setup_requests") for t in tools) + " |")
    out.append("| requests after borg's exit (sshd's log) | " + " | ".join(reqs(t, "cleanup_requests") for t in tools) + " |")
    out.append("")
    out.append("\\* includes work on the hosts (borg's start-up, borg's data), where the count is an upper bound; the same borg for every tool.")
    out.append("")
    out.append("Wall time of the whole command, seconds, median (min..max)")
    out.append("")
    ratio_cols = [(t, "recipe") for t in tools if t != "recipe" and "recipe" in tools]
    if "pull" in tools and "before" in tools:
        ratio_cols.append(("pull", "before"))
    out.append("| workload | " + " | ".join(names.get(t, t) for t in tools) + " | " +
               " | ".join(f"{a} / {b}" for a, b in ratio_cols) + " |")
    out.append("|---|" + "---|" * (len(tools) + len(ratio_cols)))
    for w in works:
        cells, walls = [], {}
        for t in tools:
            xs = [r["wall_s"] for r in ok if r["tool"] == t and r["work"] == w]
            walls[t] = med(xs)
            cells.append(f"**{med(xs):.2f}** ({min(xs):.2f}..{max(xs):.2f}), n={len(xs)}" if xs else "-")
        ratios = [f"**{walls[a] / walls[b]:.2f}x**" for a, b in ratio_cols]
        out.append(f"| {w} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    out.append("")
    out.append(f"runs: {len(ok)} ok, {len(bad)} failed")
    for r in bad:
        out.append(f"  FAILED: {r.get('tool')} {r.get('work')} round {r.get('round')}: {r.get('error', '')}")
    print("\n".join(out))


def selftest():
    """The counter on made-up exchanges whose round trips are known (one_way 50 ms)."""
    ow = 50_000_000

    def count(events):  # [(dir, sent_ms)] -> depth known at the end on the ssh client's side
        chunks = [("accept", 0, 0), ("connect", 0, 0)] + [(d, int(t * 1e6), 10) for d, t in events]
        _, _, ch = depths(chunks, ow)
        return depth_at(ch, 10**12, "server") / 2

    # 3 requests, each waiting for its reply (reply sent 1 ms after the request arrived): 3.
    pingpong = []
    t = 0
    for _ in range(3):
        pingpong += [("c2s", t), ("s2c", t + 51)]
        t += 102
    assert count(pingpong) == 3, count(pingpong)
    # The same 3 requests pipelined (sent together), replies together: 1.
    assert count([("c2s", 0), ("c2s", 0.1), ("c2s", 0.2), ("s2c", 51), ("s2c", 51.5)]) == 1
    # The peer talking on its own (sent before the request could arrive) is no reply: 1.
    assert count([("c2s", 0), ("s2c", 10), ("s2c", 51)]) == 1
    # A reply after 300 ms of work on the peer is still one round trip.
    assert count([("c2s", 0), ("s2c", 350)]) == 1
    # A message nobody answers (the exit status): half a round trip on the receiver's side.
    assert count([("s2c", 0)]) == 0.5
    print("selftest ok")


def trace(run):
    """Debug aid: every chunk with its depth, and the sshd markers (relative seconds)."""
    t0, t1 = run["t0"], run["t1"]
    accept, connect, ch = depths(load_proxy(run["proxy_log"], t0, t1), run["one_way_ms"] * 1_000_000)
    rows = [(s, f"{e} depth {d}") for e, s, a, d in ch]
    rows += [(t, f"sshd {n} {' '.join(g)}") for t, n, g in load_sshd(run["sshd_log"], t0, t1 + 2_000_000_000)]
    for t, text in sorted(rows):
        print(f"{(t - t0) / 1e9:8.3f} {text}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run = json.load(open(sys.argv[2]))
        try:
            print(json.dumps(analyse(run)))
        except (SystemExit, Exception) as e:  # a failed analysis is a failed run, not a crash
            print(json.dumps({"tool": run["tool"], "work": run["work"], "round": run["round"], "error": str(e)}))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "selftest":
        selftest()
    elif len(sys.argv) == 3 and sys.argv[1] == "trace":
        trace(json.load(open(sys.argv[2])))
    else:
        sys.exit(__doc__)
