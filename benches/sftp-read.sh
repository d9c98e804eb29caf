#!/usr/bin/env bash
# Reading one file over SFTP from OpenSSH's sftp-server (a local child on stdin/stdout, no ssh),
# with N reads outstanding: borg-pull-sftp (examples/sftp-read.rs) beside `cat` of the same file,
# OpenSSH's own sftp client (`sftp -D`, same N and read size) and, with RUSSH_SFTP=1, russh-sftp's
# client (benches/russh-sftp-read, its own workspace; needs crates.io once). The runs interleave
# (every tool at every N in each repetition); the table shows the median MiB/s of each cell.
# Wall time of each whole process (start-up included, a few ms). With RTT_MS, every client talks
# to sftp-server through examples/delayed-sftp-server.rs, which holds each byte RTT_MS/2 each way.
# Not run by CI.
#
# Usage:  benches/sftp-read.sh
# Env:    SIZE_MIB (256), REPS (5), OUTSTANDING ("1 4 16 64"), READ_SIZE (65536), RTT_MS (0),
#         SFTP_SERVER (/usr/lib/openssh/sftp-server), RUSSH_SFTP (0), BENCH_DIR (a temp dir)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SIZE_MIB="${SIZE_MIB:-256}"
REPS="${REPS:-5}"
OUTSTANDING="${OUTSTANDING:-1 4 16 64}"
READ_SIZE="${READ_SIZE:-65536}"
SFTP_SERVER="${SFTP_SERVER:-/usr/lib/openssh/sftp-server}"
RUSSH_SFTP="${RUSSH_SFTP:-0}"
RTT_MS="${RTT_MS:-0}"
for need in "$SFTP_SERVER" "$(command -v sftp || true)"; do
    if [ -z "$need" ] || [ ! -x "$need" ]; then
        echo "sftp-read: needs OpenSSH's sftp-server and sftp client (Debian: openssh-sftp-server," \
            "openssh-client)" >&2
        exit 1
    fi
done

TARGET="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p borg-pull-sftp \
    --example sftp-read --example delayed-sftp-server
OURS="$TARGET/release/examples/sftp-read"
SERVER="$SFTP_SERVER"
if [ "$RTT_MS" != 0 ]; then
    # The wrapper runs $SFTP_SERVER itself; `sftp -D` passes no arguments, so both go by env.
    export DELAY_MS="$RTT_MS" SFTP_SERVER
    SERVER="$TARGET/release/examples/delayed-sftp-server"
fi
RUSSH=""
if [ "$RUSSH_SFTP" = 1 ]; then
    CARGO_TARGET_DIR="$TARGET/russh-sftp-read" cargo build --quiet --release \
        --manifest-path "$ROOT/benches/russh-sftp-read/Cargo.toml"
    RUSSH="$TARGET/russh-sftp-read/release/russh-sftp-read"
fi

DIR="${BENCH_DIR:-$(mktemp -d)}"
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$DIR"' EXIT
FILE="$DIR/data"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$FILE"
cat "$FILE" >/dev/null # in the page cache for every run alike
RESULTS="$DIR/results.tsv"
: >"$RESULTS"

# One timed run: appends "tool<TAB>N<TAB>seconds".
timed() {
    local tool="$1" n="$2"
    shift 2
    local start end
    start=$(date +%s%N)
    "$@" >/dev/null
    end=$(date +%s%N)
    printf '%s\t%s\t%s\n' "$tool" "$n" "$(((end - start) / 1000))e-6" >>"$RESULTS"
}

sftp_get() {
    echo "get $FILE /dev/null" | sftp -q -D "$SERVER" -R "$1" -B "$READ_SIZE" -b - >/dev/null
}

for rep in $(seq 1 "$REPS"); do
    echo "sftp-read: repetition $rep of $REPS" >&2
    timed cat - cat "$FILE"
    for n in $OUTSTANDING; do
        timed borg-pull-sftp "$n" "$OURS" "$FILE" "$n" "$READ_SIZE" "$SERVER"
        timed "openssh sftp" "$n" sftp_get "$n"
        if [ -n "$RUSSH" ]; then
            timed russh-sftp "$n" "$RUSSH" "$FILE" "$n" "$READ_SIZE" "$SERVER"
        fi
    done
done

python3 - "$RESULTS" "$SIZE_MIB" "$READ_SIZE" "$OUTSTANDING" "$RTT_MS" <<'PY'
import statistics, sys
path, size_mib, read_size, outstanding, rtt = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5]
runs = {}
for line in open(path):
    tool, n, secs = line.rstrip("\n").split("\t")
    runs.setdefault((tool, n), []).append(size_mib / float(secs))
tools = [t for t in ("borg-pull-sftp", "russh-sftp", "openssh sftp") if any(k[0] == t for k in runs)]
print(f"MiB/s reading {size_mib:.0f} MiB through sftp-server at {rtt} ms RTT, reads of {read_size} bytes "
      f"(median of {len(runs[('cat', '-')])} interleaved runs)\n")
print("| outstanding | " + " | ".join(tools) + " |")
print("|---:|" + "---:|" * len(tools))
for n in outstanding:
    print(f"| {n} | " + " | ".join(f"{statistics.median(runs[(t, n)]):.3g}" for t in tools) + " |")
print(f"\n`cat` of the same file: {statistics.median(runs[('cat', '-')]):.0f} MiB/s")
PY
