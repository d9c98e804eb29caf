#!/usr/bin/env bash
# Scale of `borg-pull-server run` (issue 8): server RSS and open fds while many clients are pulled
# by one process. One private OpenSSH sshd on loopback (its own config, keys and port in a temp
# dir; nothing of the machine's ssh set-up is touched) stands for every client: each `[[client]]`
# entry has the same host and port but its own repository and its own client-side BORG_BASE_DIR.
# Real borg on both ends. Not run by CI; compare figures only within one run.
#
#   bash benches/fleet-scale.sh                 # builds borg-pull-cli (release) first
#   PREBUILT=DIR bash benches/fleet-scale.sh    # borg-pull-server and borg-pull-relay from DIR
#   CLIENTS=32 DATA_MB=2 SEQ=500 SEQ_TRIAL=20 SEQ_MAX_S=900 SEQ_FIT_S=600 SEQ_DATA_KB=256 \
#     VERIFY_EVERY=25 KEEP_TMP= bash benches/fleet-scale.sh   # the defaults
#
# 1. CLIENTS clients at once: one `run --jobs CLIENTS` of CLIENTS clients, each backing up the same
#    DATA_MB MB of random data plus 100 small files into its own fresh `-e none` repository.
#    A sampler reads the run process's /proc every 0.2 s: VmRSS, VmHWM (/proc/PID/status), open
#    fds (/proc/PID/fd), its `borg serve` children (descendants with `serve` in argv) and the RSS
#    of the whole tree (the process plus its borg serve children). Every repository is then listed
#    with `borg list --short` on the server: exactly one archive each, and the JSON summary says
#    rc 0 and no error for every client. "fds, first sample" is what the sampler sees once python
#    is up (under 0.1 s after the spawn): by then `run` has already opened the clients' sockets.
# 2. Sequential pulls in one process: a config of SEQ clients (SEQ repositories: one `borg init`,
#    copied with a fresh repository id each, so borg's per-id cache and security dirs never see a
#    "relocated" repository) pulled by one `run --jobs 1` of SEQ_DATA_KB KB each. A trial of
#    SEQ_TRIAL pulls first times one pull; if SEQ pulls would take longer than SEQ_MAX_S seconds,
#    SEQ becomes what fits in SEQ_FIT_S (at least 150) and the table says so. The sampler reads
#    every 0.5 s, and counts finished pulls from the state files (`STATE_DIR/NAME.json`, written
#    when a client's pull ends). Reported: mean RSS and fds over the samples taken while pulls
#    51-100 ran ("after the first 50") and while the last 50 ran, the least-squares slope of RSS and
#    fds against finished pulls over every sample after the first 50 pulls (per 100 pulls), pulls/s.
#    Verified: the JSON summary (rc 0, no error, an archive name for every client) and `borg list`
#    of every VERIFY_EVERY-th repository and the last one (listing all 500 takes minutes).
#
# As root the clients log in as the unprivileged user borg-pull-test (created if missing, with
# `-p '*'`, as the tests and the other benches do); the relay, the data and the client-side
# TMPDIR/BORG_BASE_DIRs are in the temp dir, readable (or owned) by that user. The repositories
# stay root's: the server's `borg serve` runs as the server process's user. As another user, that
# user logs in to itself. Everything is removed at exit (KEEP_TMP=1 keeps the temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source-path=SCRIPTDIR source=../scripts/private-sshd.sh disable=SC1091
. "$REPO_ROOT/scripts/private-sshd.sh"
CLIENTS=${CLIENTS:-32}
DATA_MB=${DATA_MB:-2}
SEQ=${SEQ:-500}
SEQ_TRIAL=${SEQ_TRIAL:-20}
SEQ_MAX_S=${SEQ_MAX_S:-900}
SEQ_FIT_S=${SEQ_FIT_S:-600}
SEQ_DATA_KB=${SEQ_DATA_KB:-256}
VERIFY_EVERY=${VERIFY_EVERY:-25}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}

die() { echo "fleet-scale: $*" >&2; exit 1; }
log() { echo "fleet-scale: $*" >&2; }
for p in borg ssh-keygen /usr/sbin/sshd python3; do command -v "$p" >/dev/null || die "missing $p"; done

RELEASE=${PREBUILT:-$CARGO_TARGET_DIR/release}
[ -n "${PREBUILT:-}" ] || cargo build -q --release --locked -p borg-pull-cli --bins
"$RELEASE/borg-pull-server" run --help >/dev/null 2>&1 || die "$RELEASE/borg-pull-server has no run subcommand"

if [ "$(id -u)" = 0 ]; then
  USER_NAME=borg-pull-test
  id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"
else
  USER_NAME=$(id -un)
fi
give() { [ "$(id -u)" != 0 ] || chown -R "$USER_NAME" "$@"; }

T=$(mktemp -d /tmp/fleet-scale.XXXXXXXX)
chmod 755 "$T"
SSHD_PID='' RUN_PID='' SAMPLER_PID=''
cleanup() {
  set +e
  for pid in $SAMPLER_PID $RUN_PID; do kill "$pid" 2>/dev/null; done
  for pid in $SAMPLER_PID $RUN_PID; do wait "$pid" 2>/dev/null; done
  [ -z "$SSHD_PID" ] || { kill "$SSHD_PID" 2>/dev/null; wait "$SSHD_PID" 2>/dev/null; }
  if [ -n "${KEEP_TMP:-}" ]; then
    echo "fleet-scale: kept $T" >&2
  else
    # Session processes of the sshd end with their connections; give them a moment.
    for _ in $(seq 50); do rm -rf "$T" 2>/dev/null && break; sleep 0.1; done
    [ ! -e "$T" ] || echo "fleet-scale: could not remove $T" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BIN=$T/bin
mkdir -p "$BIN" "$T/home" "$T/sbase" "$T/ctmp" "$T/cbase" "$T/repos"
# A snapshot of the binaries, so a rebuild by someone else cannot change them mid-run.
cp "$RELEASE/borg-pull-server" "$RELEASE/borg-pull-relay" "$BIN/"
chmod 755 "$BIN" "$BIN"/*
give "$T/ctmp" "$T/cbase"
export HOME=$T/home BORG_BASE_DIR=$T/sbase BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
unset BORG_PASSPHRASE BORG_PASSCOMMAND BORG_REPO SSH_AUTH_SOCK

# The sampler: SAMPLER PID INTERVAL OUT [STATE_DIR]; one line per sample until PID ends:
# seconds, VmRSS KiB, VmHWM KiB, fds, borg serve descendants, tree RSS KiB, finished pulls.
cat >"$BIN/sampler.py" <<'PY'
import os, sys, time

pid, interval, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
state_dir = sys.argv[4] if len(sys.argv) > 4 else None


def status(p):
    d = {}
    with open(f"/proc/{p}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "State"):
                d[k] = v.split()[0]
    return d


def descendants(root):
    kids = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(e))
    found, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


t0 = time.monotonic()
with open(out, "w", buffering=1) as f:
    while True:
        try:
            st = status(pid)
            if st.get("State") == "Z" or "VmRSS" not in st:
                break
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            break
        serves, tree = 0, int(st["VmRSS"])
        for c in descendants(pid):
            try:
                with open(f"/proc/{c}/cmdline", "rb") as g:
                    if b"serve" in g.read().split(b"\0"):
                        serves += 1
                tree += int(status(c).get("VmRSS", 0))
            except OSError:
                pass
        done = -1
        if state_dir and os.path.isdir(state_dir):
            done = sum(1 for n in os.listdir(state_dir) if n.endswith(".json"))
        f.write(f"{time.monotonic() - t0:.2f}\t{st['VmRSS']}\t{st['VmHWM']}\t{fds}\t{serves}\t{tree}\t{done}\n")
        time.sleep(interval)
PY

# make_repos DIR N: N repositories DIR/r0001..., copies of one `borg init -e none`, each with a
# fresh repository id.
borg init -e none "$T/template" >/dev/null 2>&1 || die "borg init failed"
make_repos() {
  python3 - "$T/template" "$1" "$2" <<'PY'
import os, re, shutil, sys
template, dest, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dest, exist_ok=True)
for i in range(1, n + 1):
    repo = os.path.join(dest, f"r{i:04d}")
    shutil.copytree(template, repo, symlinks=True)
    cfg = os.path.join(repo, "config")
    with open(cfg) as f:
        text = f.read()
    text, k = re.subn(r"(?m)^id = [0-9a-f]{64}$", "id = " + os.urandom(32).hex(), text)
    assert k == 1, cfg
    with open(cfg, "w") as f:
        f.write(text)
PY
}

# make_data DIR KB: KB KiB of random data plus 100 small files, readable by the login user.
make_data() {
  mkdir -p "$1/small"
  head -c "$(($2 * 1024))" /dev/urandom >"$1/random.bin"
  for i in $(seq 100); do printf 'file %s of the fleet bench\n' "$i" >"$1/small/f$i.txt"; done
  chmod -R a+rX "$1"
}

private_sshd_prepare "$T" <<CONF
KbdInteractiveAuthentication no
StreamLocalBindUnlink no
X11Forwarding no
PrintMotd no
MaxStartups 200
MaxSessions 20
SetEnv TMPDIR=$T/ctmp
CONF
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
SSHD_PID=$!
# shellcheck disable=SC2153 # PORT is set by private_sshd_prepare
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log" || die "sshd did not start"
private_sshd_known_hosts "$T" "$PORT"

# make_config NAME N DATA: $T/NAME.toml, N clients (repos $T/repos/NAME/r0001...), state
# $T/NAME.state, each client its own BORG_BASE_DIR on the client side.
make_config() {
  local name=$1 n=$2 data=$3 i c
  make_repos "$T/repos/$name" "$n"
  {
    printf '[server]\nstate_dir = "%s"\njobs = 1\n\n' "$T/$name.state"
    printf '[defaults]\nuser = "%s"\nidentity = "%s"\nknown_hosts = "%s"\nrelay = "%s"\n' \
      "$USER_NAME" "$T/client_key" "$T/known_hosts" "$BIN/borg-pull-relay"
    printf 'args = ["create", "--stats", "::bench-{now:%%Y-%%m-%%dT%%H:%%M:%%S.%%f}", "%s"]\n\n' "$data"
    for i in $(seq "$n"); do
      c=$(printf 'r%04d' "$i")
      mkdir -p "$T/cbase/$name/$c"
      printf '[[client]]\nname = "%s-%s"\nhost = "127.0.0.1"\nport = %s\nrepo = "%s"\n' \
        "$name" "$c" "$PORT" "$T/repos/$name/$c"
      printf 'env = { BORG_BASE_DIR = "%s", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK = "yes" }\n\n' \
        "$T/cbase/$name/$c"
    done
  } >"$T/$name.toml"
  give "$T/cbase/$name"
}

# run_fleet NAME JOBS INTERVAL: one `run --jobs JOBS --json` of $T/NAME.toml, sampled; sets
# RUN_RC and RUN_WALL (seconds); samples in $T/NAME.samples, JSON in $T/NAME.json.
run_fleet() {
  local name=$1 jobs=$2 interval=$3 t0 t1
  t0=$(date +%s%N)
  BORG_PULL_LOG=warn "$BIN/borg-pull-server" run --json --jobs "$jobs" --config "$T/$name.toml" \
    >"$T/$name.json" 2>"$T/$name.log" &
  RUN_PID=$!
  python3 "$BIN/sampler.py" "$RUN_PID" "$interval" "$T/$name.samples" "$T/$name.state" &
  SAMPLER_PID=$!
  RUN_RC=0
  wait "$RUN_PID" || RUN_RC=$?
  t1=$(date +%s%N)
  RUN_PID=''
  wait "$SAMPLER_PID" || true
  SAMPLER_PID=''
  RUN_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
  if [ "$RUN_RC" != 0 ]; then
    log "run of $name exited $RUN_RC; the last lines of its log:"
    tail -20 "$T/$name.log" >&2
  fi
}

# json_ok NAME N: prints how many of the N clients' results in $T/NAME.json have rc 0, no error
# and an archive.
json_ok() {
  python3 - "$T/$1.json" "$2" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except ValueError:
    rows = []
ok = [r for r in rows if r.get("borg_rc") == 0 and r.get("error") is None and r.get("archive")]
print(len(ok))
PY
}

# list_ok REPO...: prints how many of the repositories hold exactly one archive.
list_ok() {
  local r n=0
  for r in "$@"; do
    [ "$(borg list --short "$r" 2>/dev/null | wc -l)" = 1 ] && n=$((n + 1))
  done
  echo "$n"
}

COMMIT=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=''
if git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then DIRTY=", tree modified"; fi
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commit $COMMIT$DIRTY; borg-pull-server from $RELEASE (sha256 $(sha256sum "$BIN/borg-pull-server" | cut -c1-12)); $(borg --version); $(ssh -V 2>&1 | cut -d, -f1)"

# ---- 1. CLIENTS at once
log "1. $CLIENTS clients at once: $DATA_MB MB each"
make_data "$T/data1" $((DATA_MB * 1024))
make_config wide "$CLIENTS" "$T/data1"
run_fleet wide "$CLIENTS" 0.2
WIDE_RC=$RUN_RC WIDE_WALL=$RUN_WALL
WIDE_JSON=$(json_ok wide "$CLIENTS")
WIDE_LIST=$(list_ok "$T"/repos/wide/r*)
WIDE_STATS=$(awk -F'\t' 'NR == 1 { fd0 = $4 } { if ($2 > r) r = $2; if ($3 > h) h = $3; if ($4 > f) f = $4; if ($5 > s) s = $5; if ($6 > t) t = $6 }
  END { printf "%.1f\t%.1f\t%d\t%d\t%d\t%.0f\t%d", r / 1024, h / 1024, fd0, f, s, t / 1024, NR }' "$T/wide.samples")
IFS=$'\t' read -r W_RSS W_HWM W_FD0 W_FD W_SERVE W_TREE W_N <<<"$WIDE_STATS"

# ---- 2. sequential pulls in one process
log "2. trial: $SEQ_TRIAL sequential pulls of $SEQ_DATA_KB KiB"
make_data "$T/data2" "$SEQ_DATA_KB"
make_config trial "$SEQ_TRIAL" "$T/data2"
run_fleet trial 1 0.5
TRIAL_WALL=$RUN_WALL
[ "$(json_ok trial "$SEQ_TRIAL")" = "$SEQ_TRIAL" ] || die "trial run failed (rc $RUN_RC); see above"
SEQ_NOTE=""
read -r SEQ SEQ_NOTE < <(awk -v w="$TRIAL_WALL" -v k="$SEQ_TRIAL" -v n="$SEQ" -v max="$SEQ_MAX_S" -v fit="$SEQ_FIT_S" 'BEGIN {
  per = w / k; est = per * n
  if (est <= max) { printf "%d (trial: %.2f s per pull, estimate %.0f s)\n", n, per, est; exit }
  m = int(fit / per / 50) * 50; if (m < 150) m = 150
  printf "%d (not %d: trial %.2f s per pull, %d would take about %.0f s)\n", m, n, per, n, est }')
log "2. $SEQ sequential pulls $SEQ_NOTE"
make_config seq "$SEQ" "$T/data2"
run_fleet seq 1 0.5
SEQ_RC=$RUN_RC SEQ_WALL=$RUN_WALL
SEQ_JSON=$(json_ok seq "$SEQ")
VERIFY=()
for i in $(seq "$VERIFY_EVERY" "$VERIFY_EVERY" "$SEQ") "$SEQ"; do VERIFY+=("$(printf '%s/repos/seq/r%04d' "$T" "$i")"); done
mapfile -t VERIFY < <(printf '%s\n' "${VERIFY[@]}" | sort -u)
SEQ_LIST=$(list_ok "${VERIFY[@]}")
SEQ_STATS=$(python3 - "$T/seq.samples" "$SEQ" <<'PY'
import sys
n = int(sys.argv[2])
rows = [list(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")
def window(lo, hi, col):
    return mean([r[col] for r in rows if lo <= r[6] < hi])
def slope(col):
    pts = [(r[6], r[col]) for r in rows if 50 <= r[6] < n]
    if len(pts) < 2:
        return float("nan")
    mx, my = mean([p[0] for p in pts]), mean([p[1] for p in pts])
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx * 100 if sxx else float("nan")
hwm = max((r[2] for r in rows), default=0)
print("\t".join([
    f"{window(50, 100, 1) / 1024:.2f}", f"{window(n - 50, n, 1) / 1024:.2f}", f"{slope(1):+.1f}",
    f"{window(50, 100, 3):.1f}", f"{window(n - 50, n, 3):.1f}", f"{slope(3):+.2f}",
    f"{hwm / 1024:.1f}", f"{max((r[3] for r in rows), default=0):.0f}", str(len(rows)),
]))
PY
)
IFS=$'\t' read -r S_RSS_A S_RSS_B S_RSS_SLOPE S_FD_A S_FD_B S_FD_SLOPE S_HWM S_FDMAX S_N <<<"$SEQ_STATS"
SEQ_RATE=$(awk -v n="$SEQ" -v w="$SEQ_WALL" 'BEGIN { printf "%.2f", n / w }')

echo "# load at the end $(cut -d' ' -f1-3 /proc/loadavg); trial $SEQ_TRIAL pulls in $TRIAL_WALL s"
echo
echo "$CLIENTS clients at once, one \`run --jobs $CLIENTS\` ($DATA_MB MB random + 100 small files each; $W_N samples, every 0.2 s):"
echo
echo "| clients | wall s | peak VmRSS MiB | VmHWM MiB | fds, first sample | peak fds | peak borg serve children | peak RSS with children MiB | run rc | JSON rc 0 | borg list: 1 archive |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $CLIENTS | $WIDE_WALL | $W_RSS | $W_HWM | $W_FD0 | $W_FD | $W_SERVE | $W_TREE | $WIDE_RC | $WIDE_JSON/$CLIENTS | $WIDE_LIST/$CLIENTS |"
echo
echo "$SEQ sequential pulls in one process, one \`run --jobs 1\` of $SEQ clients ($SEQ_DATA_KB KiB + 100 small files each; $S_N samples, every 0.5 s); SEQ = $SEQ $SEQ_NOTE:"
echo
echo "| pulls | wall s | pulls/s | VmRSS MiB, pulls 51-100 | VmRSS MiB, last 50 | RSS slope KiB/100 pulls | fds, pulls 51-100 | fds, last 50 | fd slope /100 pulls | VmHWM MiB | peak fds | run rc | JSON rc 0 | borg list: 1 archive |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $SEQ | $SEQ_WALL | $SEQ_RATE | $S_RSS_A | $S_RSS_B | $S_RSS_SLOPE | $S_FD_A | $S_FD_B | $S_FD_SLOPE | $S_HWM | $S_FDMAX | $SEQ_RC | $SEQ_JSON/$SEQ | $SEQ_LIST/${#VERIFY[@]} checked |"
