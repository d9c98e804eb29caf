#!/usr/bin/env bash
# The SSH cipher's cost: pull's tunnel with each cipher it can be given (--cipher) against OpenSSH
# `ssh -c` with the same ciphers, and a whole fresh `borg create` with chacha20-poly1305 (what russh
# negotiated before) against the default (`auto`), in ONE run with interleaved rounds, against a
# private OpenSSH sshd on loopback (its own config, keys and port; nothing of the machine's ssh
# set-up is touched). Must run as root (cgroups, sshd, login user borg-pull-test).
#
#   bash benches/cipher.sh
#   MIB=1024 ROUNDS=3 DATA_MB=600 BORG_ROUNDS=5 CIPHERS="chacha20-poly1305 aes128-gcm aes256-gcm" \
#     CREATE="local chacha20-poly1305 auto" bash benches/cipher.sh          # the defaults
#   PREBUILT=DIR ...   (borg-pull-server and borg-pull-relay from DIR instead of building this tree)
#   KEEP_TMP=1 ...     (keep the temporary directory: every run's output and sshd's log)
#   SKIP_TUNNEL=1 / SKIP_BORG=1 (one part only)
#
# 1. Tunnel, loopback (no delay: the cipher is what the CPU spends; benches/pull-vs-openssh.sh has
#    the RTT rows), client -> server (c2s, as in a create) and server -> client (s2c, as in an
#    extract), MIB MiB per run, for each cipher of CIPHERS:
#    * pull:    borg-pull-server pull --cipher C --borg SINK --remote-borg SH -- -c 'SRC | $BORG_RSH'
#               (SINK and SH answer --version as the real borg does: pull asks both first)
#    * openssh: socat -t 60 UNIX-LISTEN:S,fork EXEC:SINK on the server, then
#               ssh -c C@openssh.com -R CSOCK:S user@127.0.0.1 'SRC | socat -t 60 STDIO UNIX-CONNECT:CSOCK'
#    (the SINK trick of benches/pull-vs-openssh.sh: `wc -c` or `head -c N /dev/zero` stand in for
#    borg serve, and `head -c` / `wc -c` for borg on the client). MB/s = bytes / transfer time
#    (timed on the client around the data command). CPU per GiB per side, from a cgroup each:
#    `sshd` (our sshd and everything it forks: privsep, session, shell, relay/socat) and `server`
#    (borg-pull-server, or ssh + the server's socat); the byte sources/sinks move themselves into
#    a third cgroup `ends`, not counted. Every byte count is checked, and every connection's
#    cipher is read back from sshd's debug log (a run that negotiated another cipher fails).
# 2. A fresh `borg create` of DATA_MB MB (benches/pull_vs_openssh.py gen: random, compressible and
#    small files; re-read before every run) into a fresh `-e none` repository per run (fresh
#    BORG_BASE_DIR on both ends), for each of CREATE: `local` (borg create into a local
#    repository as the login user, no ssh: the limit), `rpc` (borg create ssh://x/REPO with a
#    BORG_RSH that runs `borg serve` locally through a pipe: borg's remote protocol and a second
#    Python process, no SSH at all: the floor of any remote method), or a --cipher value for pull
#    (`auto` is the default, what a pull without --cipher does). Wall seconds and CPU seconds of every process
#    (both cgroups), medians over BORG_ROUNDS.
# Rounds rotate the order of the tools. The table's header has the machine's load, the commit,
# the tool versions and the exact command.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source-path=SCRIPTDIR source=../scripts/private-sshd.sh
. "$REPO_ROOT/scripts/private-sshd.sh"
MIB=${MIB:-1024}
ROUNDS=${ROUNDS:-3}
DATA_MB=${DATA_MB:-600}
BORG_ROUNDS=${BORG_ROUNDS:-5}
CIPHERS=${CIPHERS:-chacha20-poly1305 aes128-gcm aes256-gcm}
CREATE=${CREATE:-local chacha20-poly1305 auto}
SKIP_TUNNEL=${SKIP_TUNNEL:-0}
SKIP_BORG=${SKIP_BORG:-0}
COMMAND="MIB=$MIB ROUNDS=$ROUNDS DATA_MB=$DATA_MB BORG_ROUNDS=$BORG_ROUNDS CIPHERS=\"$CIPHERS\" CREATE=\"$CREATE\" SKIP_TUNNEL=$SKIP_TUNNEL SKIP_BORG=$SKIP_BORG${PREBUILT:+ PREBUILT=$PREBUILT} bash benches/cipher.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}

die() { echo "cipher.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (cgroups, sshd, login user)"
for p in socat borg ssh ssh-keygen /usr/sbin/sshd runuser python3; do
  command -v "$p" >/dev/null || die "missing $p"
done
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then CGROOT=/sys/fs/cgroup
elif [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then CGROOT=/sys/fs/cgroup/unified
else die "no cgroup2 hierarchy"; fi

RELEASE=${PREBUILT:-$CARGO_TARGET_DIR/release}
[ -n "${PREBUILT:-}" ] || cargo build -q --release --locked -p borg-pull-cli --bins
"$RELEASE/borg-pull-server" pull --help | grep -q -- --cipher || die "$RELEASE/borg-pull-server has no --cipher"
USER_NAME=borg-pull-test
id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"

T=$(mktemp -d /tmp/bpcipher.XXXXXXXX)
chmod 755 "$T"
CG=$CGROOT/$(basename "$T")
SSHD_PID='' SOCAT_PID=''
cleanup() {
  set +e
  for pid in $SOCAT_PID $SSHD_PID; do kill "$pid" 2>/dev/null; done
  for _ in $(seq 50); do
    live=$(cat "$CG"/*/cgroup.procs 2>/dev/null)
    [ -z "$live" ] && break
    # Only processes of this run are in these cgroups.
    # shellcheck disable=SC2086
    kill $live 2>/dev/null; sleep 0.1
  done
  for c in sshd server ends; do rmdir "$CG/$c" 2>/dev/null; done
  rmdir "$CG" 2>/dev/null
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$CG" "$CG/sshd" "$CG/server" "$CG/ends"
chown "$USER_NAME" "$CG/ends/cgroup.procs" "$CG/cgroup.procs"
mkdir -p "$T/bin" "$T/runs" "$T/ctmp" "$T/cbase" "$T/sbase" "$T/repos" "$T/lrepos" "$T/home"
chown "$USER_NAME" "$T/ctmp" "$T/cbase" "$T/lrepos"
BIN=$T/bin
# A snapshot of the binaries, so a rebuild cannot change them mid-run.
cp "$RELEASE/borg-pull-server" "$RELEASE/borg-pull-relay" "$BIN/"
export HOME=$T/home

# What `borg --version` says here, answered by the stand-ins without starting Python.
BORG_VERSION=$(borg --version)
cat >"$BIN/serve-c2s" <<EOF
#!/bin/sh
# "borg serve" stand-in (arguments ignored): count what arrives. pull asks the server's borg for
# its version first.
[ "\$1" != --version ] || exec echo "$BORG_VERSION"
[ -n "\${BPVS_COUNT:-}" ] || . "$BIN/bpvs.env"
echo \$\$ > $CG/ends/cgroup.procs
exec wc -c > "\$BPVS_COUNT"
EOF
cat >"$BIN/serve-s2c" <<EOF
#!/bin/sh
# "borg serve" stand-in (arguments ignored): send BPVS_BYTES zeros.
[ "\$1" != --version ] || exec echo "$BORG_VERSION"
[ -n "\${BPVS_BYTES:-}" ] || . "$BIN/bpvs.env"
echo \$\$ > $CG/ends/cgroup.procs
exec head -c "\$BPVS_BYTES" /dev/zero
EOF
cat >"$BIN/csrc" <<EOF
#!/bin/sh
echo \$\$ > $CG/ends/cgroup.procs
exec head -c "\$1" /dev/zero
EOF
cat >"$BIN/csnk" <<EOF
#!/bin/sh
echo \$\$ > $CG/ends/cgroup.procs
printf 'BPVS_COUNT '; exec wc -c
EOF
cat >"$BIN/cborg" <<EOF
#!/bin/sh
# The client's "borg": the real borg's version (pull checks it); sh runs the data command.
[ "\$1" != --version ] || exec echo "$BORG_VERSION"
exec /bin/sh "\$@"
EOF
cat >"$BIN/rsh-local" <<EOF
#!/bin/sh
# BORG_RSH of the rpc method: ignore the host, run the command (borg serve ...) here.
shift; exec sh -c "\$*"
EOF
cat >"$BIN/in-cg" <<EOF
#!/bin/sh
# in-cg CGROUP CMD...: run CMD in one of the run's cgroups
echo \$\$ > "$CG/\$1/cgroup.procs" && shift && exec "\$@"
EOF
chmod 755 "$BIN"/*

private_sshd_prepare "$T" <<CONF
KbdInteractiveAuthentication no
StreamLocalBindUnlink no
X11Forwarding no
PrintMotd no
MaxStartups 50
LogLevel DEBUG1
SetEnv TMPDIR=$T/ctmp
CONF
# shellcheck disable=SC2016
sh -c 'echo $$ > "$0/cgroup.procs" && exec /usr/sbin/sshd -f "$1" -D -e' "$CG/sshd" "$T/sshd_config" 2>"$T/sshd.log" &
SSHD_PID=$!
# shellcheck disable=SC2153 # PORT is set by private_sshd_prepare
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log" || die "sshd did not start"
private_sshd_known_hosts "$T" "$PORT"

cpu() { echo $(($(sed -n 's/^usage_usec //p' "$CG/$1/cpu.stat") * 1000)); }
now() { date +%s%N; }
live_pids() {
  local pid state
  # shellcheck disable=SC2013 # one pid a line
  for pid in $(cat "$CG/sshd/cgroup.procs" "$CG/server/cgroup.procs" "$CG/ends/cgroup.procs"); do
    [ "$pid" = "$SSHD_PID" ] && continue
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || continue
    [ -n "$state" ] && [ "$state" != Z ] && echo "$pid"
  done
  return 0
}
wait_quiet() {  # until the previous run's processes are gone (bounded: 10 s), then kill leftovers
  local left
  for _ in $(seq 200); do
    left=$(live_pids)
    [ -z "$left" ] && return 0
    sleep 0.05
  done
  echo "warning: processes still alive after 10 s, killing: $(echo "$left" | tr '\n' ' ')" >&2
  # shellcheck disable=SC2086
  kill $left 2>/dev/null || true
  sleep 0.2
}
# The ciphers sshd logged since byte $1 of its log (every key exchange, rekeys too: OpenSSH rekeys
# chacha20-poly1305 after 1 GiB), each once, space-separated.
logged_ciphers() { tail -c +"$(($1 + 1))" "$T/sshd.log" | sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' | sort -u | tr '\n' ' ' | sed 's/ $//'; }
# The SSH name pull's --cipher C gives (auto: this CPU's first choice; see borg-pull-tunnel/src/ssh/cipher.rs).
ssh_name() {
  case $1 in
    auto) if grep -qw aes /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then echo aes128-gcm@openssh.com; else echo chacha20-poly1305@openssh.com; fi ;;
    *) echo "$1@openssh.com" ;;
  esac
}

SSH_OPTS=(-F /dev/null -T -i "$T/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes -o ExitOnForwardFailure=yes
  -o ControlMaster=no -o ControlPath=none)
PULL_OPTS=(-i "$T/client_key" --known-hosts "$T/known_hosts" --relay "$BIN/borg-pull-relay")
RESULTS=$T/results.tsv
printf 'kind\ttool\tcipher\tdir\tround\tbytes\txfer_ns\twall_ns\tcpu_sshd_ns\tcpu_server_ns\tcpu_ends_ns\tok\tnote\n' >"$RESULTS"
N=0

# run_tunnel TOOL CIPHER DIR ROUND BYTES
run_tunnel() {
  local tool=$1 cipher=$2 dir=$3 round=$4 bytes=$5 id out err count ssock csock cmd rc=0 logpos
  N=$((N + 1)); id=$N-$tool-$cipher-$dir
  out=$T/runs/$id.out; err=$T/runs/$id.err; count=$T/runs/$id.count
  ssock=$T/runs/$id.ssock; csock=$T/ctmp/$id.sock
  local src="'$BIN/csrc' $bytes |" snk=""
  [ "$dir" = s2c ] && { src=": |"; snk="| '$BIN/csnk'"; }
  wait_quiet
  logpos=$(stat -c %s "$T/sshd.log")
  local s0 v0 e0 t0 t1
  s0=$(cpu sshd); v0=$(cpu server); e0=$(cpu ends); t0=$(now)
  if [ "$tool" = pull ]; then
    printf 'BPVS_COUNT=%s\nBPVS_BYTES=%s\n' "$count" "$bytes" >"$BIN/bpvs.env"
    # shellcheck disable=SC2016
    cmd='t0=$(date +%s%N); '"$src"' eval "$BORG_RSH" '"$snk"'; t1=$(date +%s%N); echo "BPVS_NS $((t1 - t0))"'
    BPVS_COUNT=$count BPVS_BYTES=$bytes "$BIN/in-cg" server "$BIN/borg-pull-server" pull "${PULL_OPTS[@]}" \
      --cipher "$cipher" -p "$PORT" --repo "$T/repos/none" --borg "$BIN/serve-$dir" --remote-borg "$BIN/cborg" \
      "$USER_NAME@127.0.0.1" -- -c "$cmd" >"$out" 2>"$err" || rc=$?
  else
    BPVS_COUNT=$count BPVS_BYTES=$bytes "$BIN/in-cg" server socat -t 60 "UNIX-LISTEN:$ssock,fork" "EXEC:$BIN/serve-$dir" 2>>"$err" &
    SOCAT_PID=$!
    for _ in $(seq 100); do [ -S "$ssock" ] && break; sleep 0.02; done
    # shellcheck disable=SC2016
    cmd='t0=$(date +%s%N); '"$src"' socat -t 60 STDIO UNIX-CONNECT:'"$csock"' '"$snk"'; t1=$(date +%s%N); echo "BPVS_NS $((t1 - t0))"; rm -f '"$csock"
    "$BIN/in-cg" server ssh "${SSH_OPTS[@]}" -c "$(ssh_name "$cipher")" -p "$PORT" -R "$csock:$ssock" "$USER_NAME@127.0.0.1" "$cmd" >"$out" 2>>"$err" || rc=$?
    kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null || true; SOCAT_PID=
    rm -f "$ssock"
  fi
  t1=$(now)
  wait_quiet
  local s1 v1 e1 xfer got ok=yes note="" seen
  s1=$(cpu sshd); v1=$(cpu server); e1=$(cpu ends)
  xfer=$(sed -n 's/^BPVS_NS //p' "$out" | tail -1)
  if [ "$dir" = c2s ]; then got=$(cat "$count" 2>/dev/null || true); else got=$(sed -n 's/^BPVS_COUNT //p' "$out" | tail -1); fi
  seen=$(logged_ciphers "$logpos")
  if [ "$rc" != 0 ] || [ -z "$xfer" ] || [ "$got" != "$bytes" ] || [ "$seen" != "$(ssh_name "$cipher")" ]; then
    ok=no; note="rc=$rc got=${got:-none} of $bytes cipher=[$seen]; $(tail -c 300 "$err" | tr '\n\t' '  ')"
    echo "run $id FAILED: $note" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' tunnel "$tool" "$cipher" "$dir" "$round" "$bytes" \
    "${xfer:-0}" $((t1 - t0)) $((s1 - s0)) $((v1 - v0)) $((e1 - e0)) "$ok" "$note" >>"$RESULTS"
  [ "$ok" = yes ] || return 0
  awk -v t="$tool" -v c="$cipher" -v d="$dir" -v n="$round" -v b="$bytes" -v x="$xfer" \
    -v s=$((s1 - s0)) -v v=$((v1 - v0)) 'BEGIN {
      printf "  %-7s %-17s %s round %s: %7.1f MB/s  CPU s/GiB sshd %.2f + server %.2f\n", t, c, d, n, b / (x / 1e9) / 1e6, s / 1e9 / (b / 1073741824), v / 1e9 / (b / 1073741824) }'
}

warm() { find "$T/data" -type f -print0 | xargs -0 cat >/dev/null; }

# run_borg WHAT ROUND: WHAT is `local`, `rpc` or a --cipher value for pull.
run_borg() {
  local what=$1 round=$2 id out err repo cb sb rc=0 logpos
  N=$((N + 1)); id=$N-borg-$what
  out=$T/runs/$id.out; err=$T/runs/$id.err
  cb=$T/cbase/$id; sb=$T/sbase/$id
  mkdir -p "$cb" "$sb"; chown "$USER_NAME" "$cb"
  if [ "$what" = local ] || [ "$what" = rpc ]; then
    repo=$T/lrepos/$id
    runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" borg init -e none "$repo" 2>>"$err"
  else
    repo=$T/repos/$id
    BORG_BASE_DIR=$sb borg init -e none "$repo" 2>>"$err"
  fi
  warm
  wait_quiet
  logpos=$(stat -c %s "$T/sshd.log")
  local s0 v0 e0 t0 t1
  s0=$(cpu sshd); v0=$(cpu server); e0=$(cpu ends); t0=$(now)
  if [ "$what" = local ]; then
    "$BIN/in-cg" server runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" \
      borg create "$repo::a" "$T/data" >"$out" 2>>"$err" || rc=$?
  elif [ "$what" = rpc ]; then
    "$BIN/in-cg" server runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" BORG_RSH="$BIN/rsh-local" BORG_RELOCATED_REPO_ACCESS_IS_OK=yes \
      borg create "ssh://x$repo::a" "$T/data" >"$out" 2>>"$err" || rc=$?
  else
    BORG_BASE_DIR=$sb "$BIN/in-cg" server "$BIN/borg-pull-server" pull "${PULL_OPTS[@]}" --cipher "$what" -p "$PORT" \
      --repo "$repo" --env BORG_BASE_DIR="$cb" --env BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
      "$USER_NAME@127.0.0.1" -- create ::a "$T/data" >"$out" 2>>"$err" || rc=$?
  fi
  t1=$(now)
  wait_quiet
  local s1 v1 e1 ok=yes note="" names seen
  s1=$(cpu sshd); v1=$(cpu server); e1=$(cpu ends)
  if [ "$what" = local ] || [ "$what" = rpc ]; then
    names=$(runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" BORG_RELOCATED_REPO_ACCESS_IS_OK=yes borg list --short "$repo" 2>>"$err" || true)
    seen=""
  else
    names=$(BORG_BASE_DIR=$sb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg list --short "$repo" 2>>"$err" || true)
    seen=$(logged_ciphers "$logpos")
  fi
  if [ "$rc" != 0 ] || [ "$names" != a ] || { [ "$what" != local ] && [ "$what" != rpc ] && [ "$seen" != "$(ssh_name "$what")" ]; }; then
    ok=no; note="rc=$rc archives=[${names}] cipher=[$seen]; $(tail -c 300 "$err" | tr '\n\t' '  ')"
    echo "run $id FAILED: $note" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' borg "$(case $what in local|rpc) echo "$what" ;; *) echo pull ;; esac)" \
    "$what" create "$round" "$DATA_BYTES" 0 $((t1 - t0)) $((s1 - s0)) $((v1 - v0)) $((e1 - e0)) "$ok" "$note" >>"$RESULTS"
  awk -v t="$what" -v n="$round" -v w=$((t1 - t0)) -v c=$((s1 - s0 + v1 - v0 + e1 - e0)) -v ok="$ok" 'BEGIN {
    printf "  borg create %-17s round %s: %.2f s wall, %.2f CPU s%s\n", t, n, w / 1e9, c / 1e9, ok == "yes" ? "" : " FAILED" }'
  rm -rf "$repo" "$cb" "$sb"
}

aes=$(grep -m1 -ow 'aes\|pclmulqdq\|vaes\|avx2\|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "# command: $COMMAND"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -r), $(nproc) cores ($(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -1); flags: $aes), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- borg-pull-core borg-pull-tunnel borg-pull-cli || echo ' (+ uncommitted changes)'); pull: $RELEASE/borg-pull-server (sha256 $(sha256sum "$BIN/borg-pull-server" | cut -c1-12));" \
  "$(ssh -V 2>&1); $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'); $(borg --version)"
# Warm-up (not counted): one 0-byte run per tool.
run_tunnel pull auto c2s 0 0 >/dev/null
run_tunnel openssh chacha20-poly1305 c2s 0 0 >/dev/null
sed -i '2,$d' "$RESULTS"

if [ "$SKIP_TUNNEL" != 1 ]; then
  echo "## tunnel, loopback, $MIB MiB per run, $ROUNDS interleaved rounds"
  tools=()
  for c in $CIPHERS; do tools+=("pull:$c" "openssh:$c"); done
  nt=${#tools[@]}
  for round in $(seq "$ROUNDS"); do
    for dir in c2s s2c; do
      for i in $(seq 0 $((nt - 1))); do
        t=${tools[$(((i + round - 1) % nt))]}
        run_tunnel "${t%%:*}" "${t#*:}" "$dir" "$round" $((MIB << 20))
      done
    done
  done
fi

if [ "$SKIP_BORG" != 1 ]; then
  echo "## borg create of $DATA_MB MB, fresh repository, $BORG_ROUNDS interleaved rounds"
  python3 benches/pull_vs_openssh.py gen "$T/data" "$DATA_MB"
  chmod -R a+rX "$T/data"
  echo "# data: $(du -sm "$T/data" | cut -f1) MiB in $(find "$T/data" -type f | wc -l) files"
  DATA_BYTES=$(du -sb "$T/data" | cut -f1)
  read -r -a methods <<<"$CREATE"
  n=${#methods[@]}
  for round in $(seq "$BORG_ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      run_borg "${methods[$(((i + round - 1) % n))]}" "$round"
    done
  done
fi

echo "# ciphers sshd negotiated over the whole run (connections per cipher): $(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sshd.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
echo
python3 benches/cipher.py "$RESULTS"
if [ -n "${KEEP_RESULTS:-}" ]; then cp "$RESULTS" "$KEEP_RESULTS"; fi
