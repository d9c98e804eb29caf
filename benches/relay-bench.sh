#!/usr/bin/env bash
# borg-pull-relay against socat, interleaved in one run of the shared relay harness
# (throughput, round trip, start-to-first-byte), then peak RSS of both (benches/relay-rss.py)
# (shared/bench/relay-bench.sh, expected beside the clone as ../shared). Not run by CI.
#
# Usage:  benches/relay-bench.sh ['EXTRA_RELAY_CMD' ...]      ({sock} = socket path)
# Env:    REPS, TP_BYTES, RT_N, SERVER, BASELINE_ROOT ... as in the harness header;
#         SHARED_BENCH=/path/to/shared/bench to use a harness elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
if [ ! -f "$SHARED/relay-bench.sh" ]; then
    echo "relay-bench: harness $SHARED/relay-bench.sh not found (a copy of shared/ belongs beside the" \
        "clone; or set SHARED_BENCH=/path/to/shared/bench)" >&2
    exit 1
fi
cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p borg-pull-cli --bin borg-pull-relay
TARGET="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
RELAY="$TARGET/release/borg-pull-relay"
bash "$SHARED/relay-bench.sh" 'socat STDIO UNIX-CONNECT:{sock}' "$RELAY --socket {sock}" "$@"
# The harness does not measure memory: peak RSS of the same relays, same run.
python3 "$ROOT/benches/relay-rss.py" 'socat STDIO UNIX-CONNECT:{sock}' "$RELAY --socket {sock}"
