#!/usr/bin/env bash
# borg-pull-server pull against OpenSSH `ssh -R` + socat (borg's pull-mode recipe), in ONE run with
# interleaved rounds, against a private OpenSSH sshd on loopback (its own config, keys and port;
# nothing of the machine's ssh set-up is touched). Must run as root (cgroups, sshd, login user).
#
#   bash benches/pull-vs-openssh.sh
#   MIB=1024 ROUNDS=3 RTT_MS=20 DATA_MB=400 BORG_ROUNDS=3 BORG_RTTS="0 20" bash benches/pull-vs-openssh.sh   # the defaults
#   (KEEP_TMP=1 keeps the temporary directory with every run's stdout/stderr and sshd's log)
#   BEFORE_BIN=/path/to/old/borg-pull-server bash benches/pull-vs-openssh.sh
#   (a second, "before" build of pull, its borg-pull-relay next to it, as a third tool in the same
#   run: rows "before" beside "pull" and "openssh"; PREBUILT=DIR sets the "pull" build)
#   SKIP_TUNNEL=1 DATA_MB=100 METHODS="socket recipe-socat agent recipe-agent tcp recipe-tcp" bash benches/pull-vs-openssh.sh
#   (only borg create, the six methods side by side; see METHODS below)
#   TOOLS=openssh SKIP_TUNNEL=1 DATA_MB=20 BORG_ROUNDS=1 bash benches/pull-vs-openssh.sh
#   (only the docs' recipes with OpenSSH, local as the limit: no pull build needed)
#
# 1. Tunnel throughput, client -> server (c2s) and server -> client (s2c), MIB MiB per run, on
#    loopback and through a user-space delay proxy (benches/delay_proxy.rs, RTT_MS round trip)
#    between the ssh client and sshd, for both tools alike:
#    * pull:    borg-pull-server pull --borg SINK --remote-borg /bin/sh ... -- -c 'SRC | $BORG_RSH'
#               (SINK ignores its `serve ...` arguments: `wc -c` for c2s, `head -c N /dev/zero`
#               for s2c; on the client the relay is fed by `head -c` or drained by `wc -c`).
#    * openssh: server `socat -t 60 UNIX-LISTEN:S,fork EXEC:SINK`, then
#               ssh -c CIPHER -R CSOCK:S user@127.0.0.1 'SRC | socat -t 60 STDIO UNIX-CONNECT:CSOCK'.
#    MB/s = bytes / transfer time, timed on the client around the data command (relay or socat
#    start to exit: includes the connect through the forward and the spawn of the sink, excludes
#    ssh connect/auth). Every byte count is checked. "setup" rows are 0-byte runs (the whole
#    command: connect, auth, forward, clean-up).
# 2. A whole `borg create` (DATA_MB MB generated: random, compressible and small files, sentinel
#    last; re-read before every run because borg's fadvise(DONTNEED) drops it from the page cache)
#    into a fresh `-e none` repository per run: pull, the docs' socat recipe on the same sshd, and
#    `borg create /local/repo` (no ssh at all: the limit). Wall seconds, median over BORG_ROUNDS.
#    METHODS picks the methods of this part (default: all those TOOLS allows), any of
#      local         borg create /local/repo as the login user (no ssh; the limit)
#      socket        borg-pull-server pull (--via socket, the default method)       [TOOLS pull]
#      before        the same with the BEFORE_BIN build                             [TOOLS before]
#      agent         borg-pull-server pull --via agent --agent-key K --server-ssh U@127.0.0.1:P
#                    --server-host-key HOST.pub                                     [TOOLS pull]
#      tcp           borg-pull-server pull --via tcp (same options; P is the server's own sshd)
#      recipe-socat  the docs' socat recipe (above)                                 [TOOLS openssh]
#      recipe-agent  the docs' ssh-agent recipe: `eval $(ssh-agent)`, `ssh-add K`, `ssh -A client
#                    'BORG_RSH="ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=KH" borg
#                    create ssh://U@127.0.0.1:P/REPO::a DATA'`, `kill $SSH_AGENT_PID`
#      recipe-tcp    the docs' remote-forwarding recipe: the same agent, `ssh -A -R F:localhost:SSHD
#                    client 'BORG_RSH=... borg create ssh://U@localhost:F/REPO::a DATA'` (F a free
#                    port instead of the docs' 8022)
#    e.g. METHODS="socket recipe-socat agent recipe-agent tcp recipe-tcp". One sshd plays client and
#    server: the login key (client_key) is one line of its authorized_keys, and for the agent and
#    tcp methods the run adds a second line for a separate dedicated key (agent_key, the only key
#    the agent holds), `command="borg serve --append-only --restrict-to-repository REPO",restrict
#    ssh-ed25519 ...`, rewritten for each run's fresh repository and removed after it; that borg
#    serve runs as the login user (the repository is chowned to it). At RTT > 0 the agent methods'
#    second connection (client -> server's sshd) goes through the delay proxy too (it crosses the
#    network); the tcp methods' goes inside the first connection and then to the server's sshd
#    directly (the server-local hop). agent and tcp need a pull with `--via`: a build without it
#    prints "skipped: this build has no --via" for them and runs the rest.
#
# CPU: a cgroup per side, created for the run (cgroup2 cpu.stat usage_usec, which needs no
# controller and so also works on a hybrid v1/v2 host; v1 cpuacct.usage where there is no cgroup2): `sshd` holds our sshd, so every session process it forks (privsep monitor, user process,
# login shell, relay or socat, borg on the client) is charged there even if it is orphaned or
# never reaped; `server` holds borg-pull-server or ssh + the server-side socat (and borg serve).
# The byte source/sink processes (head, wc) move themselves into a third cgroup `ends`, reported
# apart and not counted as tunnel CPU (same for both tools). In the agent and tcp methods the
# server's `borg serve` is a session of the same sshd (the forced command), so it is charged to
# `sshd`, and the recipes' ssh-agent to `server`; the borg create rows add up all three cgroups.
# After each run we wait until no live process is left in `sshd` (besides the listener) or
# `server`, so their last CPU is counted. The delay proxy is outside all three (it plays the
# network). CPU includes the run's setup.
#
# The cipher: russh (ours) offers chacha20-poly1305@openssh.com first; the script reads the cipher
# sshd's debug log reports for the first pull and forces it on ssh with -c; at the end it checks
# every connection in the log used it. As root it logs in as the unprivileged user borg-pull-test
# (like the tests and benches/tunnel-bench.sh: backups log in unprivileged, and sshd then runs its
# usual privilege-separated session processes), created if missing with `-p '*'` (pitfall P3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source-path=SCRIPTDIR source=../scripts/private-sshd.sh
. "$REPO_ROOT/scripts/private-sshd.sh"
MIB=${MIB:-1024}
ROUNDS=${ROUNDS:-3}
RTT_MS=${RTT_MS:-20}
DATA_MB=${DATA_MB:-400}
BORG_ROUNDS=${BORG_ROUNDS:-3}
BORG_RTTS=${BORG_RTTS:-0 20}
SKIP_TUNNEL=${SKIP_TUNNEL:-0}
SKIP_BORG=${SKIP_BORG:-0}
BEFORE_BIN=${BEFORE_BIN:-}
TOOLS=${TOOLS:-pull${BEFORE_BIN:+ before} openssh}  # fewer only to try the script out; the comparison needs pull and openssh
has() { [[ " $TOOLS " == *" $1 "* ]]; }
if [ -z "${METHODS:-}" ]; then
  METHODS=local
  has pull && METHODS+=" socket agent tcp"
  has before && METHODS+=" before"
  has openssh && METHODS+=" recipe-socat recipe-agent recipe-tcp"
fi
has_m() { [[ " $METHODS " == *" $1 "* ]]; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}

die() { echo "pull-vs-openssh: $*" >&2; exit 1; }
for m in $METHODS; do
  case $m in local|socket|before|agent|tcp|recipe-socat|recipe-agent|recipe-tcp) ;; *) die "unknown method $m in METHODS" ;; esac
done
[ -z "$BEFORE_BIN" ] && has_m before && die "METHODS has before but BEFORE_BIN is not set"
# A pull build is needed for the tunnel part with pull and for the pull methods of borg create.
NEED_PULL=0
{ [ "$SKIP_TUNNEL" != 1 ] && has pull; } && NEED_PULL=1
{ [ "$SKIP_BORG" != 1 ] && { has_m socket || has_m agent || has_m tcp; }; } && NEED_PULL=1
[ "$(id -u)" = 0 ] || die "run as root (cgroups, sshd, login user)"
for p in socat borg ssh ssh-keygen ssh-agent ssh-add /usr/sbin/sshd runuser python3 rustc; do
  command -v "$p" >/dev/null || die "missing $p"
done
# CPU accounting: cgroup2's cpu.stat (always there, no controller needed), else v1 cpuacct.
CGROUP=${CGROUP:-auto}
if [ "$CGROUP" != v1 ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then CGROOT=/sys/fs/cgroup CGV=2
elif [ "$CGROUP" != v1 ] && [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then CGROOT=/sys/fs/cgroup/unified CGV=2
elif [ "$CGROUP" != v2 ] && [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then CGROOT=/sys/fs/cgroup/cpuacct CGV=1
else die "no cgroup2 hierarchy and no v1 cpuacct (CGROUP=$CGROUP)"; fi

# PREBUILT=DIR takes borg-pull-server and borg-pull-relay from DIR instead of building them.
RELEASE=${PREBUILT:-$CARGO_TARGET_DIR/release}
if [ "$NEED_PULL" = 1 ]; then
  [ -n "${PREBUILT:-}" ] || cargo build -q --release -p borg-pull-cli --bins
  "$RELEASE/borg-pull-server" pull --help >/dev/null || die "this borg-pull-server has no working pull subcommand"
fi
if [ -n "$BEFORE_BIN" ]; then
  [ -x "$(dirname "$BEFORE_BIN")/borg-pull-relay" ] || die "no borg-pull-relay next to $BEFORE_BIN"
  "$BEFORE_BIN" pull --help >/dev/null || die "$BEFORE_BIN has no working pull subcommand"
fi
USER_NAME=borg-pull-test
id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"
[ -d /run/sshd ] || mkdir -m 0755 /run/sshd

T=$(mktemp -d /tmp/bpvs.XXXXXXXX)
chmod 755 "$T"
CG=$CGROOT/$(basename "$T")
SSHD_PID='' PROXY_PID='' SOCAT_PID=''
cleanup() {
  set +e
  for pid in $SOCAT_PID $PROXY_PID $SSHD_PID; do kill "$pid" 2>/dev/null; done
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
# Client-side sources/sinks (login user) move themselves into `ends`: cgroup2 wants write access
# to the common ancestor's cgroup.procs too.
chown "$USER_NAME" "$CG/ends/cgroup.procs"; [ "$CGV" = 1 ] || chown "$USER_NAME" "$CG/cgroup.procs"

mkdir -p "$T/bin" "$T/runs" "$T/ctmp" "$T/cbase" "$T/sbase" "$T/repos" "$T/lrepos" "$T/home"
chown "$USER_NAME" "$T/ctmp" "$T/cbase" "$T/lrepos"
BIN=$T/bin
# A snapshot of the binaries, so a rebuild by someone else cannot change them mid-run.
[ "$NEED_PULL" = 0 ] || cp "$RELEASE/borg-pull-server" "$RELEASE/borg-pull-relay" "$BIN/"
mkdir "$BIN/before"
[ -z "$BEFORE_BIN" ] || cp "$BEFORE_BIN" "$(dirname "$BEFORE_BIN")/borg-pull-relay" "$BIN/before/"
rustc -O --edition 2021 benches/delay_proxy.rs -o "$BIN/delay-proxy"
export HOME=$T/home  # no ~/.ssh or borg state of root's is used

# Sources and sinks; each moves itself into the `ends` cgroup first.
cat >"$BIN/serve-c2s" <<EOF
#!/bin/sh
# "borg serve" stand-in (arguments ignored): count what arrives. Its environment is pull's
# allowlist (no BPVS_*), so the run's settings also come from a file.
[ -n "\${BPVS_COUNT:-}" ] || . "$BIN/bpvs.env"
echo \$\$ > $CG/ends/cgroup.procs
exec wc -c > "\$BPVS_COUNT"
EOF
cat >"$BIN/serve-s2c" <<EOF
#!/bin/sh
# "borg serve" stand-in (arguments ignored): send BPVS_BYTES zeros.
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
cat >"$BIN/in-cg" <<EOF
#!/bin/sh
# in-cg CGROUP CMD...: run CMD (exec: same pid, so \$! and kill reach it) in one of the run's cgroups
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

# The delay proxy: RTT_MS/2 each way, 127.0.0.1 only.
coproc PROXY { exec "$BIN/delay-proxy" "$PORT" $((RTT_MS / 2)); }
# shellcheck disable=SC2269 # coproc set it; named here so cleanup sees it
PROXY_PID=$PROXY_PID
read -r PPORT <&"${PROXY[0]}"
[ -n "$PPORT" ] || die "delay proxy did not start"
port_for() { if [ "$1" = 0 ]; then echo "$PORT"; else echo "$PPORT"; fi; }

private_sshd_known_hosts "$T" "$PORT" "$PPORT"
# The agent and tcp methods: a dedicated key (the only one the agent holds), given a forced
# command in authorized_keys for each run (auth_forced REPO; auth_login_only removes it again).
ssh-keygen -q -t ed25519 -N '' -C borg-pull-bench-agent-key -f "$T/agent_key"
cp "$T/authorized_keys" "$T/authorized_keys.login"
auth_forced() {
  { cat "$T/authorized_keys.login"
    printf 'command="borg serve --append-only --restrict-to-repository %s",restrict %s\n' "$1" "$(cut -d' ' -f1,2 "$T/agent_key.pub")"
  } >"$T/authorized_keys.new"
  mv "$T/authorized_keys.new" "$T/authorized_keys"
}
auth_login_only() { cp "$T/authorized_keys.login" "$T/authorized_keys.new" && mv "$T/authorized_keys.new" "$T/authorized_keys"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Does this pull have --via (agent, tcp)? Without it those methods are skipped.
VIA=0
if [ "$NEED_PULL" = 1 ] && "$BIN/borg-pull-server" pull --help | grep -q -- --via; then VIA=1; fi

cpu() {  # nanoseconds of CPU used so far by the processes of cgroup $1
  if [ "$CGV" = 2 ]; then echo $(($(sed -n 's/^usage_usec //p' "$CG/$1/cpu.stat") * 1000)); else cat "$CG/$1/cpuacct.usage"; fi
}
now() { date +%s%N; }
live_pids() {  # live (non-zombie) processes of the run, other than the sshd listener
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

SSH_OPTS=(-F /dev/null -T -i "$T/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes -o ExitOnForwardFailure=yes
  -o ControlMaster=no -o ControlPath=none)
PULL_OPTS=(-i "$T/client_key" --known-hosts "$T/known_hosts")
pull_bin() {  # the borg-pull-server of tool $1 (pull or before) and the options naming its relay
  local dir=$BIN; [ "$1" = before ] && dir=$BIN/before
  PULL_BIN=$dir/borg-pull-server
  PULL_OPTS_TOOL=("${PULL_OPTS[@]}" --relay "$dir/borg-pull-relay")
}

RESULTS=$T/results.tsv
printf 'kind\ttool\tdir\trtt\tround\tbytes\txfer_ns\twall_ns\tcpu_ns\tcpu_sshd_ns\tcpu_server_ns\tcpu_ends_ns\trc\tok\tnote\n' >"$RESULTS"
N=0

# run_tunnel TOOL DIR RTT ROUND BYTES: one tunnel run; appends a line to $RESULTS.
run_tunnel() {
  local tool=$1 dir=$2 rtt=$3 round=$4 bytes=$5 port id out err count ssock csock cmd rc=0
  port=$(port_for "$rtt")
  N=$((N + 1)); id=$N-$tool-$dir-$rtt
  out=$T/runs/$id.out; err=$T/runs/$id.err; count=$T/runs/$id.count
  ssock=$T/runs/$id.ssock; csock=$T/ctmp/$id.sock
  local d=$dir; [ "$dir" = setup ] && d=c2s
  local src="'$BIN/csrc' $bytes |" snk=""
  [ "$d" = s2c ] && { src=": |"; snk="| '$BIN/csnk'"; }
  wait_quiet
  local s0 v0 e0 t0 t1
  s0=$(cpu sshd); v0=$(cpu server); e0=$(cpu ends); t0=$(now)
  if [ "$tool" = pull ] || [ "$tool" = before ]; then
    pull_bin "$tool"
    printf 'BPVS_COUNT=%s\nBPVS_BYTES=%s\n' "$count" "$bytes" >"$BIN/bpvs.env"
    # shellcheck disable=SC2016
    cmd='t0=$(date +%s%N); '"$src"' eval "$BORG_RSH" '"$snk"'; t1=$(date +%s%N); echo "BPVS_NS $((t1 - t0))"'
    BPVS_COUNT=$count BPVS_BYTES=$bytes "$BIN/in-cg" server "$PULL_BIN" pull "${PULL_OPTS_TOOL[@]}" \
      -p "$port" --repo "$T/repos/none" --borg "$BIN/serve-$d" --remote-borg /bin/sh \
      "$USER_NAME@127.0.0.1" -- -c "$cmd" >"$out" 2>"$err" || rc=$?
  else
    BPVS_COUNT=$count BPVS_BYTES=$bytes "$BIN/in-cg" server socat -t 60 "UNIX-LISTEN:$ssock,fork" "EXEC:$BIN/serve-$d" 2>>"$err" &
    SOCAT_PID=$!
    for _ in $(seq 100); do [ -S "$ssock" ] && break; sleep 0.02; done
    # shellcheck disable=SC2016
    cmd='t0=$(date +%s%N); '"$src"' socat -t 60 STDIO UNIX-CONNECT:'"$csock"' '"$snk"'; t1=$(date +%s%N); echo "BPVS_NS $((t1 - t0))"; rm -f '"$csock"
    "$BIN/in-cg" server ssh "${SSH_OPTS[@]}" -c "$CIPHER" -p "$port" -R "$csock:$ssock" "$USER_NAME@127.0.0.1" "$cmd" >"$out" 2>>"$err" || rc=$?
    kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null || true; SOCAT_PID=
    rm -f "$ssock"
  fi
  t1=$(now)
  wait_quiet
  local s1 v1 e1 xfer got ok=yes note=""
  s1=$(cpu sshd); v1=$(cpu server); e1=$(cpu ends)
  xfer=$(sed -n 's/^BPVS_NS //p' "$out" | tail -1)
  if [ "$d" = c2s ]; then got=$(cat "$count" 2>/dev/null || true); else got=$(sed -n 's/^BPVS_COUNT //p' "$out" | tail -1); fi
  if [ "$rc" != 0 ] || [ -z "$xfer" ] || [ "$got" != "$bytes" ]; then
    ok=no; note="rc=$rc got=${got:-none} of $bytes; $(tail -c 300 "$err" | tr '\n\t' '  ')"
    echo "run $id FAILED: $note" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' tunnel "$tool" "$dir" "$rtt" "$round" "$bytes" \
    "${xfer:-0}" $((t1 - t0)) $((s1 - s0 + v1 - v0)) $((s1 - s0)) $((v1 - v0)) $((e1 - e0)) "$rc" "$ok" "$note" >>"$RESULTS"
  [ "$ok" = yes ] || return 0
  awk -v t="$tool" -v d="$dir" -v r="$rtt" -v n="$round" -v b="$bytes" -v x="$xfer" \
    -v c=$((s1 - s0 + v1 - v0)) -v w=$((t1 - t0)) 'BEGIN {
      if (b > 0) printf "  %-8s %-5s rtt %2s ms round %s: %7.1f MB/s  %.2f CPU s/GiB  (whole command %.2f s)\n", t, d, r, n, b / (x / 1e9) / 1e6, c / 1e9 / (b / 1073741824), w / 1e9
      else printf "  %-8s setup rtt %2s ms round %s: %.2f s, %.3f CPU s\n", t, r, n, w / 1e9, c / 1e9 }'
}

warm() { find "$T/data" -type f -print0 | xargs -0 cat >/dev/null; }

# run_borg TOOL RTT ROUND: one fresh `borg create` of $T/data; appends a line to $RESULTS.
# TOOL: local, pull (METHODS socket), before, agent, tcp, socat (recipe-socat), recipe-agent,
# recipe-tcp.
run_borg() {
  local tool=$1 rtt=$2 round=$3 port id out err repo cb sb ssock csock cmd kh fport rsh rc=0
  port=$(port_for "$rtt")
  N=$((N + 1)); id=$N-borg-$tool-$rtt
  out=$T/runs/$id.out; err=$T/runs/$id.err
  cb=$T/cbase/$id; sb=$T/sbase/$id
  mkdir -p "$cb" "$sb"; chown "$USER_NAME" "$cb"
  if [ "$tool" = local ]; then
    repo=$T/lrepos/$id
    runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" borg init -e none "$repo" 2>>"$err"
  else
    repo=$T/repos/$id
    BORG_BASE_DIR=$sb borg init -e none "$repo" 2>>"$err"
  fi
  case $tool in
    agent|tcp|recipe-agent|recipe-tcp)
      # borg serve runs as the login user here: sshd's forced command for the agent key.
      chown -R "$USER_NAME" "$repo"
      auth_forced "$repo"
      # The recipes' known_hosts on the client (ours: pull makes its own from --server-host-key).
      kh=$T/ctmp/$id.known_hosts fport=$(free_port)
      { cat "$T/known_hosts"; printf '[localhost]:%s %s\n' "$fport" "$(cut -d' ' -f1,2 "$T/host_key.pub")"; } >"$kh"
      chmod 644 "$kh"
      rsh="ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$kh" ;;
  esac
  warm
  wait_quiet
  local s0 v0 e0 t0 t1
  s0=$(cpu sshd); v0=$(cpu server); e0=$(cpu ends); t0=$(now)
  case $tool in
    local)
      "$BIN/in-cg" server runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" \
        borg create "$repo::a" "$T/data" >"$out" 2>>"$err" || rc=$? ;;
    pull|before)
      pull_bin "$tool"
      BORG_BASE_DIR=$sb "$BIN/in-cg" server "$PULL_BIN" pull "${PULL_OPTS_TOOL[@]}" -p "$port" --repo "$repo" \
        --env BORG_BASE_DIR="$cb" --env BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
        "$USER_NAME@127.0.0.1" -- create ::a "$T/data" >"$out" 2>>"$err" || rc=$? ;;
    socat)
      ssock=$T/runs/$id.ssock; csock=$T/ctmp/$id.sock
      BORG_BASE_DIR=$sb "$BIN/in-cg" server socat "UNIX-LISTEN:$ssock,fork" \
        "EXEC:borg serve --append-only --restrict-to-repo $repo" 2>>"$err" &
      SOCAT_PID=$!
      for _ in $(seq 100); do [ -S "$ssock" ] && break; sleep 0.02; done
      # The whole remote command is ONE argument (pitfall P9); the socket is removed after (P11).
      cmd="BORG_BASE_DIR=$cb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg create --rsh \"sh -c 'exec socat STDIO UNIX-CONNECT:$csock'\" ssh://borg-server$repo::a $T/data; rc=\$?; rm -f $csock; exit \$rc"
      "$BIN/in-cg" server ssh "${SSH_OPTS[@]}" -c "$CIPHER" -p "$port" -R "$csock:$ssock" "$USER_NAME@127.0.0.1" "$cmd" >"$out" 2>>"$err" || rc=$?
      kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null || true; SOCAT_PID=
      rm -f "$ssock" ;;
    agent|tcp)
      # agent: the client's ssh reaches the server's sshd over the network (the proxy at RTT > 0);
      # tcp: pull bridges the client's forwarded port to its own sshd, locally.
      local sport=$port; [ "$tool" = tcp ] && sport=$PORT
      BORG_BASE_DIR=$sb "$BIN/in-cg" server "$BIN/borg-pull-server" pull "${PULL_OPTS[@]}" -p "$port" --repo "$repo" \
        --via "$tool" --agent-key "$T/agent_key" --server-ssh "$USER_NAME@127.0.0.1:$sport" --server-host-key "$T/host_key.pub" \
        --env BORG_BASE_DIR="$cb" --env BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
        "$USER_NAME@127.0.0.1" -- create ::a "$T/data" >"$out" 2>>"$err" || rc=$? ;;
    recipe-agent|recipe-tcp)
      # The docs' recipes, as the docs run them: an ssh-agent for this run only (in the server's
      # cgroup) holding just the dedicated key, ssh -A to the client, borg's ssh back to the server.
      local fwd=() url=ssh://$USER_NAME@127.0.0.1:$port$repo::a
      if [ "$tool" = recipe-tcp ]; then fwd=(-R "$fport:localhost:$PORT"); url=ssh://$USER_NAME@localhost:$fport$repo::a; fi
      cmd="BORG_BASE_DIR=$cb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RSH=\"$rsh\" borg create $url $T/data"
      (
        eval "$("$BIN/in-cg" server ssh-agent -s -a "$T/runs/$id.agent")" >/dev/null
        r=0
        ssh-add -q "$T/agent_key" 2>>"$err" &&
          "$BIN/in-cg" server ssh "${SSH_OPTS[@]}" -A -c "$CIPHER" -p "$port" "${fwd[@]}" "$USER_NAME@127.0.0.1" "$cmd" >"$out" 2>>"$err" || r=$?
        kill "$SSH_AGENT_PID"
        exit "$r"
      ) || rc=$? ;;
  esac
  t1=$(now)
  wait_quiet
  local s1 v1 e1 ok=yes note="" names
  s1=$(cpu sshd); v1=$(cpu server); e1=$(cpu ends)
  case $tool in agent|tcp|recipe-agent|recipe-tcp) auth_login_only; rm -f "$kh" ;; esac
  if [ "$tool" = local ]; then
    names=$(runuser -u "$USER_NAME" -- env HOME="$cb" BORG_BASE_DIR="$cb" borg list --short "$repo" 2>>"$err" || true)
  else
    names=$(BORG_BASE_DIR=$sb BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg list --short "$repo" 2>>"$err" || true)
  fi
  if [ "$rc" != 0 ] || [ "$names" != a ]; then
    ok=no; note="rc=$rc archives=[${names}]; $(tail -c 300 "$err" | tr '\n\t' '  ')"
    echo "run $id FAILED: $note" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' borg "$tool" create "$rtt" "$round" "$DATA_BYTES" 0 \
    $((t1 - t0)) $((s1 - s0 + v1 - v0)) $((s1 - s0)) $((v1 - v0)) $((e1 - e0)) "$rc" "$ok" "$note" >>"$RESULTS"
  awk -v t="$tool" -v r="$rtt" -v n="$round" -v w=$((t1 - t0)) -v c=$((s1 - s0 + v1 - v0 + e1 - e0)) -v ok="$ok" 'BEGIN {
    printf "  borg create %-12s rtt %2s ms round %s: %.2f s wall, %.2f CPU s%s\n", t, r, n, w / 1e9, c / 1e9, ok == "yes" ? "" : " FAILED" }'
  rm -rf "$repo" "$cb" "$sb"
}

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "${PREBUILT:-}" ] || echo "# pull: $PREBUILT/borg-pull-server (built $(date -u -r "$PREBUILT/borg-pull-server" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$PREBUILT/borg-pull-server" | cut -c1-12))"
[ -z "$BEFORE_BIN" ] || echo "# before: $BEFORE_BIN (built $(date -u -r "$BEFORE_BIN" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$BEFORE_BIN" | cut -c1-12))"
echo "# commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- borg-pull-core borg-pull-tunnel borg-pull-cli || echo ' (+ uncommitted changes)');" \
  "$(ssh -V 2>&1); $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'); $(borg --version)"

# The cipher russh negotiates: from sshd's debug log of a 0-byte pull (also a warm-up).
CIPHER=${CIPHER:-chacha20-poly1305@openssh.com}
if [ "$NEED_PULL" = 1 ] && has pull; then
  run_tunnel pull setup 0 0 0 >/dev/null
  CIPHER=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sshd.log" | tail -1)
  [ -n "$CIPHER" ] || { tail -20 "$T/sshd.log"; die "cannot tell the cipher from sshd's log"; }
fi
has before && run_tunnel before setup 0 0 0 >/dev/null
has openssh && run_tunnel openssh setup 0 0 0 >/dev/null
echo "# cipher (both tools): $CIPHER; payload $MIB MiB per run; RTT 0 (loopback) and $RTT_MS ms (delay proxy)"
sed -i '2,$d' "$RESULTS"  # the warm-up runs do not count

if [ "$SKIP_TUNNEL" != 1 ]; then
  echo "## tunnel throughput, $ROUNDS interleaved rounds"
  for round in $(seq "$ROUNDS"); do
    tools=(); for t in pull before openssh; do has "$t" && tools+=("$t"); done
    # The order rotates every round (with two tools: alternates).
    nt=${#tools[@]}
    for rtt in 0 "$RTT_MS"; do
      for dir in c2s s2c setup; do
        for i in $(seq 0 $((nt - 1))); do
          tool=${tools[$(((i + round - 1) % nt))]}
          bytes=$((MIB << 20)); [ "$dir" = setup ] && bytes=0
          run_tunnel "$tool" "$dir" "$rtt" "$round" "$bytes"
        done
      done
    done
  done
fi

if [ "$SKIP_BORG" != 1 ]; then
  echo "## borg create of $DATA_MB MB, $BORG_ROUNDS interleaved rounds"
  python3 benches/pull_vs_openssh.py gen "$T/data" "$DATA_MB"
  chmod -R a+rX "$T/data"
  echo "# data: $(du -sm "$T/data" | cut -f1) MiB in $(find "$T/data" -type f | wc -l) files"
  DATA_BYTES=$(du -sb "$T/data" | cut -f1)
  echo "# methods: $METHODS"
  methods=()
  has_m local && methods+=(local)
  for rtt in $BORG_RTTS; do
    for m in socket before agent tcp recipe-socat recipe-agent recipe-tcp; do
      has_m "$m" || continue
      case $m in
        agent|tcp)
          if [ "$VIA" != 1 ]; then
            [ "$rtt" != "${BORG_RTTS%% *}" ] || echo "  borg create $m: skipped: this build has no --via"
            printf 'borg\t%s\tcreate\t%s\t0\t0\t0\t0\t0\t0\t0\t0\t0\tskipped\tthis build has no --via\n' "$m" "$rtt" >>"$RESULTS"
            continue
          fi ;;
      esac
      case $m in socket) t=pull ;; recipe-socat) t=socat ;; *) t=$m ;; esac
      methods+=("$t:$rtt")
    done
  done
  for round in $(seq "$BORG_ROUNDS"); do
    # Rotate the order every round.
    n=${#methods[@]}
    for i in $(seq 0 $((n - 1))); do
      m=${methods[$(((i + round - 1) % n))]}
      case $m in local) run_borg local 0 "$round" ;; *) run_borg "${m%%:*}" "${m#*:}" "$round" ;; esac
    done
  done
fi

ciphers=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sshd.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
echo "# ciphers sshd negotiated over the whole run (connections per cipher):$ciphers"
echo
python3 benches/pull_vs_openssh.py table "$RESULTS"
if [ -n "${KEEP_RESULTS:-}" ]; then cp "$RESULTS" "$KEEP_RESULTS"; fi
