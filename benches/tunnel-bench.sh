#!/usr/bin/env bash
# Tunnel throughput per SSH channel window at an emulated RTT, against a private OpenSSH sshd on
# loopback (its own config, keys and port; nothing of the machine's ssh set-up is touched).
#   bash benches/tunnel-bench.sh [MIB=256] [RTT_MS=20] [WINDOW_MIB...=2 4 16 32]
# Runs borg-pull-tunnel's examples/window_bench.rs: a real pull whose client command streams MIB of
# zeros through borg-pull-relay and whose "borg serve" is a sink, so only the tunnel is measured.
# As root it logs in as the unprivileged user borg-pull-test (created by the tests if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/private-sshd.sh
MIB=${1:-256}; RTT=${2:-20}; shift $(( $# < 2 ? $# : 2 )) || true
WINDOWS=("$@"); [ ${#WINDOWS[@]} -gt 0 ] || WINDOWS=(2 4 16 32)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build -q --release -p borg-pull-tunnel --example window_bench -p borg-pull-cli --bin borg-pull-relay
BIN=$CARGO_TARGET_DIR/release
USER_NAME=$(id -un)
if [ "$(id -u)" = 0 ]; then
  USER_NAME=borg-pull-test
  id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"
fi
T=$(mktemp -d /tmp/borg-pull-tunnel-bench.XXXXXXXX)
chmod 755 "$T"
SSHD_PID=
trap '[ -z "$SSHD_PID" ] || kill "$SSHD_PID" 2>/dev/null; rm -rf "$T"' EXIT
# pull makes its private socket directory under the session's TMPDIR; /tmp may not be
# world-writable (it is 0755 on some VMs), so give the login user a directory of its own.
private_sshd_prepare "$T" <<CONF
SetEnv TMPDIR=$T/session-tmp
CONF
mkdir -p "$T/session-tmp"; chown "$USER_NAME" "$T/session-tmp"
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
SSHD_PID=$!
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log"
"$BIN/examples/window_bench" "$USER_NAME@127.0.0.1" "$PORT" "$T/client_key" "$(realpath "$BIN/borg-pull-relay")" \
  "$MIB" "$RTT" "${WINDOWS[@]}"
