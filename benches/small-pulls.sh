#!/usr/bin/env bash
# Small pulls: what a backup costs when there is little to send, in ONE run with interleaved
# rounds, against a private OpenSSH sshd on loopback playing the client (its own config, keys and
# port; nothing of the machine's ssh set-up is touched). Must run as root (sshd, the login user).
#
#   bash benches/small-pulls.sh
#   DATA_MB=603 FILES=20015 ROUNDS=6 bash benches/small-pulls.sh        # the defaults
#   BEFORE_BIN=/work/target-before/borg-pull-server bash benches/small-pulls.sh
#   (a second, "before" build of pull, its borg-pull-relay next to it, as a fifth method)
#   PREBUILT=DIR takes the "pull" build's borg-pull-server and borg-pull-relay from DIR instead
#   of building them; METHODS="local recipe pull" picks methods; KEEP_TMP=1 keeps every run's
#   output and sshd's log.
#   METHODS="pull sshfs sftp" ...                        # Borg's SSHFS method beside `--via sftp`
#   METHODS="sftp sshfs sftp-rtt sshfs-rtt" FILES=2000 DATA_MB=60 ROUNDS=1 bash benches/small-pulls.sh
#   (the same two at ONE_WAY_MS each way, default 50 = 100 ms RTT, through benches/delay_proxy.rs)
#   WARMUP=0 skips the warm-up round (the default 1 runs every method once, not counted).
#
# The data set: DATA_MB MiB in FILES files (benches/small_pulls.py gen: half in 20 big files, half
# in many small ones; random and compressible alternately). Per round and method, in this order:
#   fresh      `borg create ::a DATA` into a new empty `-e none` repository (data re-read into the
#              page cache first: borg's fadvise(DONTNEED) drops it)
#   unchanged  `borg create ::b DATA` right after: every file a files-cache hit, little is sent
#   list       `borg list` of that repository (checked: it lists a and b)
# The methods (the order rotates every round):
#   local   borg create into a repository on the same machine, as the login user: no ssh (the limit)
#   push    normal push mode: the client runs `borg create ssh://USER@127.0.0.1:PORT/REPO::a`
#           with OpenSSH (its own key; borg serve is a session of the same sshd)
#   recipe  the docs' pull recipe: server `socat UNIX-LISTEN:S,fork EXEC:"borg serve
#           --append-only --restrict-to-repo REPO"`, `ssh -R CSOCK:S client 'borg create --rsh
#           "sh -c \'exec socat STDIO UNIX-CONNECT:CSOCK\'" ssh://borg-server/REPO::a DATA'`
#   pull    borg-pull-server pull (socket method), this tree's release build
#   before  the same with BEFORE_BIN
#   sshfs   Borg docs' SSHFS method: `sshfs -o ro USER@127.0.0.1:DATA MNT` on the server (the same
#           MNT every run: borg's files cache is keyed by path), `borg create
#           --files-cache ctime,size ::a MNT` there as the docs advise, `fusermount3 -u MNT` after;
#           all three are timed. Its key is the sftp one below (the same SFTP server as sftp).
#   sftp    borg-pull-server pull --via sftp (this tree's release build): the client's tree
#           mounted in-process over SFTP, borg create on the server. The client's key line is
#           `restrict,command="internal-sftp -R"` (the README's recommended one), for sshfs too.
#   sshfs-rtt, sftp-rtt   the same two through the delay proxy, ONE_WAY_MS each way
#   For sshfs and sftp, "list" is the server's own `borg list` (a check, not in the table).
# Wall seconds of the whole command (connect, log-in, borg on both ends, clean-up), medians.
# OpenSSH (push, recipe) uses its default cipher; the ciphers sshd negotiated are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source-path=SCRIPTDIR source=../scripts/private-sshd.sh
. "$REPO_ROOT/scripts/private-sshd.sh"
DATA_MB=${DATA_MB:-603}
FILES=${FILES:-20015}
ROUNDS=${ROUNDS:-6}
BEFORE_BIN=${BEFORE_BIN:-}
METHODS=${METHODS:-local push recipe pull${BEFORE_BIN:+ before}}
ONE_WAY_MS=${ONE_WAY_MS:-50}
WARMUP=${WARMUP:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
COMMAND="$(for v in DATA_MB FILES ROUNDS BEFORE_BIN PREBUILT METHODS ONE_WAY_MS WARMUP; do [ -z "${!v:-}" ] || printf '%s=%q ' "$v" "${!v}"; done)bash benches/small-pulls.sh"

die() { echo "small-pulls: $*" >&2; exit 1; }
has_m() { [[ " $METHODS " == *" $1 "* ]]; }
has_any() { local m; for m in "$@"; do has_m "$m" && return 0; done; return 1; }
for m in $METHODS; do
  case $m in local|push|recipe|pull|before|sshfs|sftp|sshfs-rtt|sftp-rtt) ;; *) die "unknown method $m in METHODS" ;; esac
done
[ -z "$BEFORE_BIN" ] && has_m before && die "METHODS has before but BEFORE_BIN is not set"
[ "$(id -u)" = 0 ] || die "run as root (sshd, login user)"
for p in socat borg ssh ssh-keygen /usr/sbin/sshd runuser python3 \
  $(has_any sshfs sshfs-rtt && echo sshfs fusermount3) $(has_any sshfs-rtt sftp-rtt && echo rustc); do
  command -v "$p" >/dev/null || die "missing $p"
done
RELEASE=${PREBUILT:-$CARGO_TARGET_DIR/release}
if has_any pull sftp sftp-rtt; then
  [ -n "${PREBUILT:-}" ] || cargo build -q --release --locked -p borg-pull-cli --bins
  "$RELEASE/borg-pull-server" pull --help >/dev/null || die "this borg-pull-server has no working pull subcommand"
fi
if [ -n "$BEFORE_BIN" ]; then
  [ -x "$(dirname "$BEFORE_BIN")/borg-pull-relay" ] || die "no borg-pull-relay next to $BEFORE_BIN"
  "$BEFORE_BIN" pull --help >/dev/null || die "$BEFORE_BIN has no working pull subcommand"
fi
USER_NAME=borg-pull-test
id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh -p '*' "$USER_NAME"
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)

T=$(mktemp -d /tmp/bpsmall.XXXXXXXX)
chmod 755 "$T"
SSHD_PID='' SOCAT_PID='' PROXY_PID='' CHILD_PID=''
# The mounts under $T (sshfs's, and pull's if it was killed before it could unmount), deepest
# first.
mounts_under_t() {
  awk -v t="$T/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
cleanup() {
  set +e
  # The timed command first (pull unmounts on SIGTERM), bounded; then what is left.
  if [ -n "$CHILD_PID" ]; then
    pkill -TERM -P "$CHILD_PID" 2>/dev/null  # sshfs's borg, run by a subshell
    kill "$CHILD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$CHILD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$CHILD_PID" 2>/dev/null
  fi
  for m in $(mounts_under_t); do fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; done
  for pid in $SOCAT_PID $PROXY_PID $SSHD_PID; do kill "$pid" 2>/dev/null; done
  if [ -n "$(mounts_under_t)" ]; then
    echo "small-pulls: still mounted, $T left in place: $(mounts_under_t | tr '\n' ' ')" >&2
  elif [ -n "${KEEP_TMP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$T/bin/pull" "$T/bin/before" "$T/runs" "$T/ctmp" "$T/cbase" "$T/sbase" "$T/repos" "$T/urepos" "$T/push" \
  "$T/mnt/sshfs" "$T/sftp-work"
chmod 700 "$T/mnt" "$T/sftp-work"
chown "$USER_NAME" "$T/ctmp" "$T/cbase" "$T/urepos" "$T/push"
# A snapshot of the binaries, so a rebuild by someone else cannot change them mid-run.
! has_any pull sftp sftp-rtt || cp "$RELEASE/borg-pull-server" "$RELEASE/borg-pull-relay" "$T/bin/pull/"
[ -z "$BEFORE_BIN" ] || cp "$BEFORE_BIN" "$(dirname "$BEFORE_BIN")/borg-pull-relay" "$T/bin/before/"
! has_any sshfs-rtt sftp-rtt || rustc -O --edition 2021 benches/delay_proxy.rs -o "$T/bin/delay-proxy"
export HOME=$T/home  # no ~/.ssh or borg state of root's is used
mkdir -p "$HOME"

private_sshd_prepare "$T" <<CONF
KbdInteractiveAuthentication no
StreamLocalBindUnlink no
X11Forwarding no
PrintMotd no
MaxStartups 50
Subsystem sftp internal-sftp
LogLevel DEBUG1
SetEnv TMPDIR=$T/ctmp
CONF
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
SSHD_PID=$!
# shellcheck disable=SC2153 # PORT is set by private_sshd_prepare
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log" || die "sshd did not start"
# sftp and sshfs log in with their own key, limited to read-only SFTP as the README recommends.
ssh-keygen -q -t ed25519 -N '' -f "$T/sftp_key"
printf 'restrict,command="internal-sftp -R" %s\n' "$(cat "$T/sftp_key.pub")" >>"$T/authorized_keys"
PPORT=''
if has_any sshfs-rtt sftp-rtt; then
  coproc PROXY { exec "$T/bin/delay-proxy" "$PORT" "$ONE_WAY_MS"; }
  read -r PPORT <&"${PROXY[0]}"
  [ -n "$PPORT" ] || die "the delay proxy did not start"
fi
private_sshd_known_hosts "$T" "$PORT" ${PPORT:+"$PPORT"}
# push: the login user's own copy of the key and known_hosts (ssh wants its key private).
cp "$T/client_key" "$T/known_hosts" "$T/push/"
chown "$USER_NAME" "$T/push/client_key" "$T/push/known_hosts"
chmod 600 "$T/push/client_key"

SSH_OPTS=(-F /dev/null -T -i "$T/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes -o ExitOnForwardFailure=yes
  -o ControlMaster=no -o ControlPath=none)
SSHFS_OPTS=(-o ro -o IdentityFile="$T/sftp_key" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$T/known_hosts" -o StrictHostKeyChecking=yes
  -o ControlMaster=no -o ControlPath=none -F /dev/null)
PUSH_RSH="ssh -F /dev/null -i $T/push/client_key -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=$T/push/known_hosts -o StrictHostKeyChecking=yes -o ControlMaster=no -o ControlPath=none"
ENV_OK=BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
now() { date +%s%N; }
warm() { find "$T/data" -type f -print0 | xargs -0 cat >/dev/null; }
as_user() { runuser -u "$USER_NAME" -- env HOME="$USER_HOME" "$@"; }

RESULTS=$T/results.tsv
printf 'method\top\tround\twall_ns\trc\tok\tnote\n' >"$RESULTS"
N=0

# one METHOD OP ROUND REPO CB SB: one timed borg command; appends a line to $RESULTS.
one() {
  local m=$1 op=$2 round=$3 repo=$4 cb=$5 sb=$6 id out err rc=0 t0 t1 ok=yes note="" ssock csock cmd port=$PORT
  local args=(create ::a "$T/data")
  case $op in unchanged) args=(create ::b "$T/data") ;; list) args=(list) ;; esac
  N=$((N + 1)); id=$N-$m-$op
  out=$T/runs/$id.out; err=$T/runs/$id.err
  [ "$op" != fresh ] || warm
  [[ $m != *-rtt ]] || port=$PPORT
  if [ "$op" = list ] && [[ $m == sshfs* || $m == sftp* ]]; then
    # Nothing of borg on the client: the server's own list, as a check.
    op=list-local
    BORG_BASE_DIR=$sb borg list "$repo" >"$out" 2>"$err" || rc=$?
  fi
  t0=$(now)
  case $op-$m in
    list-local-*) ;;
    *-sshfs|*-sshfs-rtt)
      # The timed command runs in the background, so the INT/TERM trap can stop it at once.
      { sshfs "${SSHFS_OPTS[@]}" -p "$port" "$USER_NAME@127.0.0.1:$T/data" "$T/mnt/sshfs" &&
        { env BORG_BASE_DIR="$sb" $ENV_OK borg "${args[0]}" --files-cache ctime,size "$repo${args[1]}" "$T/mnt/sshfs" ||
          { rc=$?; fusermount3 -u "$T/mnt/sshfs"; exit "$rc"; }; } &&
        fusermount3 -u "$T/mnt/sshfs"; } >"$out" 2>"$err" &
      CHILD_PID=$!; wait "$CHILD_PID" || rc=$?; CHILD_PID= ;;
    *-sftp|*-sftp-rtt)
      BORG_BASE_DIR=$sb "$T/bin/pull/borg-pull-server" pull --via sftp --sftp-dir "$T/sftp-work" \
        -i "$T/sftp_key" --known-hosts "$T/known_hosts" -p "$port" --repo "$repo" \
        --env $ENV_OK "$USER_NAME@127.0.0.1" -- "${args[@]}" >"$out" 2>"$err" &
      CHILD_PID=$!; wait "$CHILD_PID" || rc=$?; CHILD_PID= ;;
  esac
  case $m in
    sshfs*|sftp*) ;;
    local)
      as_user env BORG_BASE_DIR="$cb" $ENV_OK borg "${args[0]}" "$repo${args[1]:-}" "${args[@]:2}" >"$out" 2>"$err" || rc=$? ;;
    push)
      as_user env BORG_BASE_DIR="$cb" $ENV_OK BORG_RSH="$PUSH_RSH" borg "${args[0]}" \
        "ssh://$USER_NAME@127.0.0.1:$PORT$repo${args[1]:-}" "${args[@]:2}" >"$out" 2>"$err" || rc=$? ;;
    recipe)
      ssock=$T/runs/$id.ssock; csock=$T/ctmp/$id.sock
      BORG_BASE_DIR=$sb socat "UNIX-LISTEN:$ssock,fork" "EXEC:borg serve --append-only --restrict-to-repo $repo" 2>>"$err" &
      SOCAT_PID=$!
      for _ in $(seq 250); do [ -S "$ssock" ] && break; sleep 0.02; done
      # The whole remote command is ONE argument; the socket is removed after.
      cmd="BORG_BASE_DIR=$cb $ENV_OK borg ${args[0]} --rsh \"sh -c 'exec socat STDIO UNIX-CONNECT:$csock'\" ssh://borg-server$repo${args[1]:-} ${args[*]:2}; rc=\$?; rm -f $csock; exit \$rc"
      ssh "${SSH_OPTS[@]}" -p "$PORT" -R "$csock:$ssock" "$USER_NAME@127.0.0.1" "$cmd" >"$out" 2>>"$err" || rc=$?
      kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null || true; SOCAT_PID=
      rm -f "$ssock" ;;
    pull|before)
      BORG_BASE_DIR=$sb "$T/bin/$m/borg-pull-server" pull -i "$T/client_key" --known-hosts "$T/known_hosts" \
        --relay "$T/bin/$m/borg-pull-relay" -p "$PORT" --repo "$repo" \
        --env BORG_BASE_DIR="$cb" --env $ENV_OK \
        "$USER_NAME@127.0.0.1" -- "${args[@]}" >"$out" 2>"$err" || rc=$? ;;
  esac
  t1=$(now)
  if [ "$rc" != 0 ]; then
    ok=no; note="rc=$rc; $(tail -c 300 "$err" | tr '\n\t' '  ')"
  elif [[ $op == list* ]] && ! { grep -q '^a ' "$out" && grep -q '^b ' "$out"; }; then
    ok=no; note="list did not show a and b: $(head -c 200 "$out" | tr '\n\t' '  ')"
  fi
  [ "$ok" = yes ] || echo "run $id FAILED: $note" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$op" "$round" $((t1 - t0)) "$rc" "$ok" "$note" >>"$RESULTS"
  awk -v m="$m" -v o="$op" -v n="$round" -v w=$((t1 - t0)) -v ok="$ok" 'BEGIN {
    printf "  %-9s %-10s round %s: %6.2f s%s\n", m, o, n, w / 1e9, ok == "yes" ? "" : " FAILED" }'
}

# method M ROUND: a fresh repository, then fresh, unchanged, list.
method() {
  local m=$1 round=$2 repo cb sb
  cb=$T/cbase/$round-$m; sb=$T/sbase/$round-$m
  mkdir -p "$cb" "$sb"; chown "$USER_NAME" "$cb"
  case $m in
    local)
      repo=$T/urepos/$round-$m
      as_user env BORG_BASE_DIR="$cb" borg init -e none "$repo" 2>>"$T/init.err" ;;
    push)
      # Made through ssh, so borg remembers it under the URL it is used by.
      repo=$T/urepos/$round-$m
      as_user env BORG_BASE_DIR="$cb" BORG_RSH="$PUSH_RSH" borg init -e none "ssh://$USER_NAME@127.0.0.1:$PORT$repo" 2>>"$T/init.err" ;;
    *)
      repo=$T/repos/$round-$m
      BORG_BASE_DIR=$sb borg init -e none "$repo" 2>>"$T/init.err" ;;
  esac
  for op in fresh unchanged list; do one "$m" "$op" "$round" "$repo" "$cb" "$sb"; done
  rm -rf "$repo" "$cb" "$sb"
}

echo "# small pulls: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), $(nproc) cores; uptime:$(uptime)"
echo "# command: $COMMAND"
echo "# commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- borg-pull-core borg-pull-tunnel borg-pull-cli || echo ' (+ uncommitted changes)');" \
  "$(ssh -V 2>&1); $(sshfs --version 2>&1 | grep -m1 "^SSHFS"); $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'); $(borg --version) on both ends"
! has_any pull sftp sftp-rtt || echo "# pull: $RELEASE/borg-pull-server (built $(date -u -r "$RELEASE/borg-pull-server" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$RELEASE/borg-pull-server" | cut -c1-12))"
[ -z "$BEFORE_BIN" ] || echo "# before: $BEFORE_BIN (built $(date -u -r "$BEFORE_BIN" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$BEFORE_BIN" | cut -c1-12))"
python3 benches/small_pulls.py gen "$T/data" "$DATA_MB" "$FILES"
chmod -R a+rX "$T/data"
echo "# data: $(du -sm --apparent-size "$T/data" | cut -f1) MiB in $(find "$T/data" -type f | wc -l) files; methods: $METHODS; $ROUNDS rounds${PPORT:+; -rtt methods through the delay proxy at $((2 * ONE_WAY_MS)) ms RTT}"

# A warm-up of every method (not counted): the first run of each pays for cold caches.
if [ "$WARMUP" = 1 ]; then
  for m in $METHODS; do method "$m" 0 >/dev/null; done
  sed -i '2,$d' "$RESULTS"
fi

methods=()
for m in local push recipe before pull sshfs sftp sshfs-rtt sftp-rtt; do has_m "$m" && methods+=("$m"); done
n=${#methods[@]}
for round in $(seq "$ROUNDS"); do
  echo "## round $round"
  for i in $(seq 0 $((n - 1))); do
    method "${methods[$(((i + round - 1) % n))]}" "$round"
  done
done
ciphers=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\) .*/\1/p' "$T/sshd.log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
echo "# ciphers sshd negotiated over the whole run (connections per cipher):$ciphers"
echo "# at the end, uptime:$(uptime)"
echo
python3 benches/small_pulls.py table "$RESULTS" "$((2 * ONE_WAY_MS))"
if [ -n "${KEEP_RESULTS:-}" ]; then cp "$RESULTS" "$KEEP_RESULTS"; fi
