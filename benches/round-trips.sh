#!/usr/bin/env bash
# Round trips of set-up and clean-up, and wall time, of `borg-pull-server pull` against borg's
# pull-mode recipe (`socat UNIX-LISTEN:S,fork EXEC:"borg serve ..."` + `ssh -R CSOCK:S client
# 'borg create --rsh "sh -c \'exec socat STDIO UNIX-CONNECT:CSOCK\'" ...; rm -f CSOCK'`), both
# through the user-space delay proxy (benches/delay_proxy.rs) at RTT_MS, against a private OpenSSH
# sshd on loopback (scripts/private-sshd.sh; login user borg-pull-test). Must run as root.
#
#   bash benches/round-trips.sh [PULL_BIN]      # PULL_BIN: a borg-pull-server binary (its
#                                               # borg-pull-relay next to it); default: build this
#                                               # tree (release) into $CARGO_TARGET_DIR
#   BEFORE_BIN=/work/target-before/release/borg-pull-server bash benches/round-trips.sh PULL_BIN
#                                               # a second ("before") build in the same run
#   QUICK=1 ...                                 # 1 round instead of 3 (about a third of the time)
#   RTT_MS=100 ROUNDS=3 BIG_MB=33 HANDSHAKE=1 KEEP_TMP=1 TOOLS="pull before recipe"   # defaults
#
# Workloads: `tiny` (5 files of 1-4 KiB) and `big` (BIG_MB MB of random, incompressible data in 2
# files), each backed up by `borg create` into a fresh `-e none` repository per run (fresh
# BORG_BASE_DIR on both sides). Rounds are interleaved, the order of the tools rotating.
#
# Counting (benches/round_trips.py has the details): the proxy logs every chunk it reads, per
# direction, with the time; sshd runs with LogLevel DEBUG1 and every line of its log gets the time
# it was written (phase markers on the client's side: NEWKEYS received, Accepted publickey, exec
# requests); a wrapper around `borg serve` on the server records when it starts, one around borg
# on the client (the same for every tool) when borg exits. A round trip is a message one side waits for after sending: the counter follows the
# longest chain of "sent after the other side's message arrived" through the chunks. With
# HANDSHAKE=1 (default) the proxy also charges TCP's handshake (1 RTT before the client may send,
# the server accepting 1.5 RTT after connect) as a real network does; HANDSHAKE=0 is the proxy
# of benches/pull-vs-openssh.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source=../scripts/private-sshd.sh
. "$REPO_ROOT/scripts/private-sshd.sh"
QUICK=${QUICK:-0}
RTT_MS=${RTT_MS:-100}
ROUNDS=${ROUNDS:-$([ "$QUICK" = 1 ] && echo 1 || echo 3)}
BIG_MB=${BIG_MB:-33}
HANDSHAKE=${HANDSHAKE:-1}
WORKS=${WORKS:-tiny big}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}

die() { echo "round-trips: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sshd, login user)"
for p in socat borg ssh ssh-keygen /usr/sbin/sshd python3 rustc; do
  command -v "$p" >/dev/null || die "missing $p"
done

python3 benches/round_trips.py selftest >/dev/null || die "the round-trip counter fails its self-test"
PULL_BIN=${1:-${PULL_BIN:-}}
BEFORE_BIN=${BEFORE_BIN:-}
TOOLS=${TOOLS:-pull${BEFORE_BIN:+ before} recipe}
has() { [[ " $TOOLS " == *" $1 "* ]]; }
if has pull && [ -z "$PULL_BIN" ]; then
  cargo build -q --release -p borg-pull-cli --bins
  PULL_BIN=$CARGO_TARGET_DIR/release/borg-pull-server
fi
has before && [ -z "$BEFORE_BIN" ] && die "TOOLS has before but BEFORE_BIN is not set"
has pull || PULL_BIN=
for b in ${PULL_BIN:+"$PULL_BIN"} ${BEFORE_BIN:+"$BEFORE_BIN"}; do
  [ -x "$b" ] && [ -x "$(dirname "$b")/borg-pull-relay" ] || die "$b or the borg-pull-relay next to it is missing"
  "$b" pull --help >/dev/null || die "$b has no working pull subcommand"
done
USER_NAME=borg-pull-test
id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"

T=$(mktemp -d /tmp/brt.XXXXXXXX)
chmod 755 "$T"
SSHD_PID= PROXY_PID= SOCAT_PID=
cleanup() {
  set +e
  for pid in $SOCAT_PID $PROXY_PID $SSHD_PID; do kill "$pid" 2>/dev/null; done
  # Session processes of our sshd (orphans included) are gone with it; give them a moment.
  for _ in $(seq 20); do pgrep -u "$USER_NAME" -f "$T" >/dev/null || break; sleep 0.1; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$T/bin/pull" "$T/bin/before" "$T/runs" "$T/ctmp" "$T/cbase" "$T/sbase" "$T/repos" "$T/home"
chown "$USER_NAME" "$T/ctmp" "$T/cbase"
BIN=$T/bin
# Snapshots of the binaries, so a rebuild by someone else cannot change them mid-run.
[ -z "$PULL_BIN" ] || cp "$PULL_BIN" "$(dirname "$PULL_BIN")/borg-pull-relay" "$BIN/pull/"
[ -z "$BEFORE_BIN" ] || cp "$BEFORE_BIN" "$(dirname "$BEFORE_BIN")/borg-pull-relay" "$BIN/before/"
chmod -R a+rX "$BIN"
rustc -O --edition 2021 benches/delay_proxy.rs -o "$BIN/delay-proxy"
export HOME=$T/home  # no ~/.ssh or borg state of root's is used
# `borg serve` on the server, recording when it starts and exits (the data phase's markers).
cat >"$BIN/borg-stamped" <<'EOS'
#!/bin/sh
echo "start $(date +%s%N)" >>"$RT_STAMPS"
borg "$@"
rc=$?
echo "end $(date +%s%N)" >>"$RT_STAMPS"
exit $rc
EOS
# borg on the client (every tool runs it), recording when borg exited (clean-up's start).
cat >"$BIN/borg-client" <<'EOS'
#!/bin/sh
borg "$@"
rc=$?
echo "client_end $(date +%s%N)" >>"$RT_CSTAMPS"
exit $rc
EOS
chmod 755 "$BIN/borg-stamped" "$BIN/borg-client"

private_sshd_prepare "$T" <<CONF
KbdInteractiveAuthentication no
StreamLocalBindUnlink no
X11Forwarding no
PrintMotd no
LogLevel DEBUG1
SetEnv TMPDIR=$T/ctmp
CONF
# Every line of sshd's log gets the time it was written.
cat >"$BIN/stamp.py" <<'EOS'
import sys, time
while True:
    line = sys.stdin.buffer.readline()
    if not line:
        break
    sys.stdout.buffer.write(b"%d " % time.time_ns() + line)
    sys.stdout.buffer.flush()
EOS
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2> >(exec python3 "$BIN/stamp.py" >"$T/sshd.log") &
SSHD_PID=$!
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log" || die "sshd did not start"
ONE_WAY=$((RTT_MS / 2))
export DELAY_PROXY_LOG=$T/proxy.log DELAY_PROXY_HANDSHAKE=$HANDSHAKE
coproc PROXY { exec "$BIN/delay-proxy" "$PORT" "$ONE_WAY"; }
PROXY_PID=$PROXY_PID
read -r PPORT <&"${PROXY[0]}"
[ -n "$PPORT" ] || die "delay proxy did not start"
unset DELAY_PROXY_LOG DELAY_PROXY_HANDSHAKE
private_sshd_known_hosts "$T" "$PORT" "$PPORT"

# The data: tiny = 5 small files; big = BIG_MB MB of random data in 2 files.
mkdir -p "$T/data/tiny" "$T/data/big"
for i in 1 2 3 4 5; do head -c $((i * 800)) /dev/urandom >"$T/data/tiny/f$i"; done
half=$((BIG_MB * 1000 * 1000 / 2))
head -c "$half" /dev/urandom >"$T/data/big/r1"
head -c $((BIG_MB * 1000 * 1000 - half)) /dev/urandom >"$T/data/big/r2"
chmod -R a+rX "$T/data"

quiet() {  # until no session of our sshd is left (bounded: 10 s)
  for _ in $(seq 100); do
    pgrep -x -P "$SSHD_PID" sshd >/dev/null || return 0  # (the log stamper is a child too)
    sleep 0.1
  done
  echo "warning: sshd sessions still alive after 10 s" >&2
}

SSH_OPTS=(-F /dev/null -T -i "$T/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes -o ExitOnForwardFailure=yes
  -o ControlMaster=no -o ControlPath=none)
RUNS=$T/runs.jsonl
: >"$RUNS"
N=0
CIPHER=${CIPHER:-chacha20-poly1305@openssh.com}

# run TOOL WORK ROUND: one `borg create` of $T/data/WORK; appends the analysis to $RUNS.
run() {
  local tool=$1 work=$2 round=$3 id repo cb sb out err stamps cstamps ssock csock cmd rc=0 t0 t1
  N=$((N + 1)); id=$N-$tool-$work
  out=$T/runs/$id.out; err=$T/runs/$id.err; stamps=$T/runs/$id.stamps
  repo=$T/repos/$id; cb=$T/cbase/$id; sb=$T/sbase/$id
  cstamps=$T/ctmp/$id.cstamps
  mkdir -p "$cb" "$sb"; chown "$USER_NAME" "$cb"; : >"$stamps"; : >"$cstamps"; chown "$USER_NAME" "$cstamps"
  BORG_BASE_DIR=$sb borg init -e none "$repo" 2>>"$err"
  cat "$T/data/$work"/* >/dev/null  # into the page cache (borg evicts what it read)
  quiet
  if [ "$tool" = recipe ]; then
    ssock=$T/runs/$id.ssock; csock=$T/ctmp/$id.sock
    RT_STAMPS=$stamps BORG_BASE_DIR=$sb socat "UNIX-LISTEN:$ssock,fork" \
      "EXEC:$BIN/borg-stamped serve --append-only --restrict-to-repo $repo" 2>>"$err" &
    SOCAT_PID=$!
    for _ in $(seq 100); do [ -S "$ssock" ] && break; sleep 0.02; done
    cmd="RT_CSTAMPS=$cstamps BORG_BASE_DIR=$cb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes $BIN/borg-client create --rsh \"sh -c 'exec socat STDIO UNIX-CONNECT:$csock'\" ssh://borg-server$repo::a $T/data/$work; rc=\$?; rm -f $csock; exit \$rc"
    t0=$(date +%s%N)
    ssh "${SSH_OPTS[@]}" -c "$CIPHER" -p "$PPORT" -R "$csock:$ssock" "$USER_NAME@127.0.0.1" "$cmd" \
      </dev/null >"$out" 2>>"$err" || rc=$?
    t1=$(date +%s%N)
    kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null || true; SOCAT_PID=
    rm -f "$ssock"
  else
    t0=$(date +%s%N)
    RT_STAMPS=$stamps BORG_BASE_DIR=$sb "$BIN/$tool/borg-pull-server" pull -i "$T/client_key" \
      --known-hosts "$T/known_hosts" --relay "$BIN/$tool/borg-pull-relay" --borg "$BIN/borg-stamped" \
      --remote-borg "$BIN/borg-client" --env RT_CSTAMPS="$cstamps" \
      -p "$PPORT" --repo "$repo" --env BORG_BASE_DIR="$cb" --env BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
      "$USER_NAME@127.0.0.1" -- create ::a "$T/data/$work" </dev/null >"$out" 2>>"$err" || rc=$?
    t1=$(date +%s%N)
  fi
  sleep 0.3  # sshd's last lines of the session
  local names
  names=$(BORG_BASE_DIR=$sb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg list --short "$repo" 2>>"$err" || true)
  printf '{"tool":"%s","work":"%s","round":%s,"t0":%s,"t1":%s,"one_way_ms":%s,"handshake":%s,"proxy_log":"%s","sshd_log":"%s","stamps":"%s","client_stamps":"%s"}\n' \
    "$tool" "$work" "$round" "$t0" "$t1" "$ONE_WAY" "$([ "$HANDSHAKE" = 1 ] && echo true || echo false)" \
    "$T/proxy.log" "$T/sshd.log" "$stamps" "$cstamps" >"$T/runs/$id.json"
  local line
  if [ "$rc" != 0 ] || [ "$names" != a ]; then
    line="{\"tool\":\"$tool\",\"work\":\"$work\",\"round\":$round,\"error\":\"rc=$rc archives=[$names]; $(tail -c 200 "$err" | tr '\n\t"\\' '    ')\"}"
  else
    line=$(python3 benches/round_trips.py run "$T/runs/$id.json")
  fi
  echo "$line" >>"$RUNS"
  python3 - "$line" <<'EOS'
import json, sys
r = json.loads(sys.argv[1])
if "phases" in r:
    p = r["phases"]
    s = sum(p[k]["rt"] for k in ("connect", "kex", "auth", "setup"))
    print(f"  {r['tool']:7} {r['work']:5} round {r['round']}: {r['wall_s']:.2f} s; round trips: set-up {s:g}, "
          f"clean-up {p['cleanup']['rt']:g}; " + ", ".join(f"{k} {v['rt']:g}" for k, v in p.items()))
else:
    print(f"  {r['tool']:7} {r['work']:5} round {r['round']}: FAILED {r.get('error', '')}")
EOS
  rm -rf "$repo" "$cb" "$sb"
}

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
binfo() {  # a binary's path, mtime and checksum (which build it was)
  echo "$1 (built $(date -u -r "$1" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$1" | cut -c1-12))"
}
echo "# tools: $TOOLS; this tree: $(git -C "$REPO_ROOT" rev-parse --short HEAD)"
[ -z "$PULL_BIN" ] || echo "# pull: $(binfo "$PULL_BIN")"
[ -z "$BEFORE_BIN" ] || echo "# before: $(binfo "$BEFORE_BIN")"
echo "# $(ssh -V 2>&1); $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'); $(borg --version)"
echo "# RTT $RTT_MS ms (delay proxy, TCP handshake charged: $HANDSHAKE); $ROUNDS round(s); tiny = 5 files, $(du -sk "$T/data/tiny" | cut -f1) KiB; big = $BIG_MB MB random in 2 files"
# Warm-up (not counted): one run of each tool, also fills the page cache with borg's Python.
for tool in $TOOLS; do run "$tool" tiny 0 >/dev/null; done
grep -q '"phases"' "$RUNS" || { cat "$RUNS"; die "the warm-up runs failed"; }
ciphers=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sshd.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
echo "# ciphers negotiated in the warm-up (connections per cipher):$ciphers"
: >"$RUNS"
tools=()
for t in pull before recipe; do has "$t" && tools+=("$t"); done
for round in $(seq "$ROUNDS"); do
  n=${#tools[@]}
  for w in $WORKS; do
    for i in $(seq 0 $((n - 1))); do
      run "${tools[$(((i + round - 1) % n))]}" "$w" "$round"
    done
  done
done
echo
python3 benches/round_trips.py table "$RUNS"
[ -z "${KEEP_RESULTS:-}" ] || cp "$RUNS" "$KEEP_RESULTS"
