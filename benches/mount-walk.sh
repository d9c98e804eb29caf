#!/usr/bin/env bash
# borg-pull-mount against sshfs at 0 ms: the same data set as issue 18's table (603 MiB, 20,015
# files; benches/small_pulls.py gen), read through a FUSE mount of an SFTP server on loopback, in
# ONE run with interleaved rounds. Must run as root (FUSE mounts, the private sshd).
#
#   bash benches/mount-walk.sh
#   DATA_MB=603 FILES=20015 ROUNDS=3 bash benches/mount-walk.sh          # the defaults
#   METHODS="mount sshfs-direct" OPS="walk" bash benches/mount-walk.sh   # a subset
#
# Methods (the order rotates every round):
#   local         borg and find on the tree itself (the limit)
#   mount         borg-pull-mount (examples/mount-sftp, release build) over TCP to socat in front
#                 of OpenSSH's sftp-server: SFTP without SSH
#   sshfs-direct  sshfs 3 -o ro,directport: the same SFTP server over the same TCP, no SSH
#   sshfs-ssh     sshfs -o ro over a private OpenSSH sshd on loopback (the docs' SSHFS method;
#                 its own keys, config and port; the machine's ssh set-up is not touched)
# Ops, each on a fresh mount at the method's own, stable mount point:
#   walk       find -printf of size, mtime, mode and owner of every entry (borg's stat walk)
#   fresh      borg create --files-cache=mtime,size into a new empty `-e none` repository
#   unchanged  the same create again, on a new mount: every file a files-cache hit
# Wall seconds, medians over the rounds. 100 ms RTT (tc netem in a network namespace) is next.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
# shellcheck source-path=SCRIPTDIR source=../scripts/private-sshd.sh
. "$REPO_ROOT/scripts/private-sshd.sh"
DATA_MB=${DATA_MB:-603}
FILES=${FILES:-20015}
ROUNDS=${ROUNDS:-3}
METHODS=${METHODS:-local mount sshfs-direct sshfs-ssh}
OPS=${OPS:-walk fresh unchanged}
SFTP_SERVER=/usr/lib/openssh/sftp-server

die() { echo "mount-walk: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (FUSE mounts, sshd)"
for p in socat borg sshfs fusermount3 ssh-keygen /usr/sbin/sshd python3 "$SFTP_SERVER"; do
  command -v "$p" >/dev/null || die "$p is missing (scripts/install-deps)"
done

cargo build --release --quiet -p borg-pull-mount --example mount-sftp
T=$(mktemp -d /tmp/bpmount.XXXXXXXX)
cp "$REPO_ROOT/target/release/examples/mount-sftp" "$T/mount-sftp"
SSHD_PID='' SOCAT_PID='' OURS_PID=''
unmount_all() {
  local m
  for m in "$T"/mnt-*; do
    [ -d "$m" ] || continue
    if grep -q " $m " /proc/self/mounts; then umount -l "$m" 2>/dev/null || true; fi
  done
}
cleanup() {
  set +e
  [ -z "$OURS_PID" ] || { exec 3>&-; wait "$OURS_PID"; }
  unmount_all
  for pid in $SOCAT_PID $SSHD_PID; do kill "$pid" 2>/dev/null; done
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export HOME=$T/home  # no ~/.ssh or borg state of root's is used
mkdir -p "$HOME" "$T/runs"

echo "# generating $DATA_MB MiB in $FILES files" >&2
python3 benches/small_pulls.py gen "$T/data" "$DATA_MB" "$FILES"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SFTP_PORT=$(free_port)
socat "TCP-LISTEN:$SFTP_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay" "EXEC:$SFTP_SERVER" &
SOCAT_PID=$!
private_sshd_wait "$SFTP_PORT" "$SOCAT_PID" /dev/null || die "socat did not start"

private_sshd_prepare "$T" <<CONF
Subsystem sftp $SFTP_SERVER
KbdInteractiveAuthentication no
PrintMotd no
CONF
/usr/sbin/sshd -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
SSHD_PID=$!
# shellcheck disable=SC2153 # PORT is set by private_sshd_prepare
private_sshd_wait "$PORT" "$SSHD_PID" "$T/sshd.log" || die "sshd did not start"
private_sshd_known_hosts "$T" "$PORT"

# mount_fs METHOD MOUNTPOINT: the tree mounted by METHOD (returns once it is there).
mount_fs() {
  local method=$1 mnt=$2 line _
  case $method in
    mount)
      rm -f "$T/ctl"; mkfifo "$T/ctl"
      "$T/mount-sftp" "$T/data" "$mnt" "127.0.0.1:$SFTP_PORT" <"$T/ctl" >"$T/ours.out" 2>"$T/ours.err" &
      OURS_PID=$!
      exec 3>"$T/ctl"
      for _ in $(seq 200); do
        line=$(head -n1 "$T/ours.out" 2>/dev/null || true)
        [ "$line" = mounted ] && return 0
        kill -0 "$OURS_PID" 2>/dev/null || break
        sleep 0.05
      done
      cat "$T/ours.err" >&2; die "borg-pull-mount did not mount" ;;
    sshfs-direct)
      mkdir -p "$mnt"
      sshfs -o ro,directport="$SFTP_PORT" "127.0.0.1:$T/data" "$mnt" ;;
    sshfs-ssh)
      mkdir -p "$mnt"
      sshfs -F /dev/null -o ro -o "Port=$PORT" -o "IdentityFile=$T/client_key" \
        -o "UserKnownHostsFile=$T/known_hosts" -o StrictHostKeyChecking=yes,BatchMode=yes \
        "root@127.0.0.1:$T/data" "$mnt" ;;
  esac
}
unmount_fs() {
  local method=$1 mnt=$2
  case $method in
    mount) exec 3>&-; wait "$OURS_PID"; OURS_PID=''; [ ! -s "$T/ours.err" ] || cat "$T/ours.err" >&2 ;;
    sshfs-*) fusermount3 -u "$mnt" ;;
  esac
}

bborg() { BORG_BASE_DIR="$T/base-$method" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes borg "$@"; }
now() { date +%s%N; }
echo -e "method\top\tround\twall_ns\tentries" >"$T/results.tsv"
# run_op METHOD OP ROUND: one timed op on a fresh mount.
run_op() {
  local method=$1 op=$2 round=$3 dir start end entries=''
  if [ "$method" = local ]; then dir=$T/data; else dir=$T/mnt-$method; fi
  # borg's fadvise drops what it read: every op starts with the tree in the server's page cache.
  find "$T/data" -type f -exec cat {} + >/dev/null
  if [ "$op" = fresh ]; then rm -rf "$T/repo-$method" "$T/base-$method"; bborg init -e none "$T/repo-$method"; fi
  [ "$method" = local ] || mount_fs "$method" "$dir"
  start=$(now)
  case $op in
    walk) entries=$(find "$dir" -printf '%s %T@ %m %U %G\n' | wc -l) ;;
    fresh) (cd "$dir" && bborg create --files-cache=mtime,size "$T/repo-$method::a" .) ;;
    unchanged) (cd "$dir" && bborg create --files-cache=mtime,size "$T/repo-$method::b$round" .) ;;
  esac
  end=$(now)
  [ "$method" = local ] || unmount_fs "$method" "$dir"
  echo -e "$method\t$op\t$round\t$((end - start))\t$entries" >>"$T/results.tsv"
  echo "# round $round $method $op: $(( (end - start) / 1000000 )) ms ${entries:+($entries entries)}" >&2
}

read -r -a methods <<<"$METHODS"
for round in $(seq "$ROUNDS"); do
  for op in $OPS; do
    for i in "${!methods[@]}"; do
      run_op "${methods[$(( (i + round) % ${#methods[@]} ))]}" "$op" "$round"
    done
  done
done

python3 - "$T/results.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
methods = list(dict.fromkeys(r[0] for r in rows))
ops = list(dict.fromkeys(r[1] for r in rows))
print("| | " + " | ".join(methods) + " |")
print("|---|" + "---|" * len(methods))
for op in ops:
    cells = []
    for m in methods:
        t = [int(r[3]) / 1e9 for r in rows if r[0] == m and r[1] == op]
        cells.append(f"{statistics.median(t):.2f} s" if t else "")
    print(f"| {op} | " + " | ".join(cells) + " |")
entries = {r[0]: r[4] for r in rows if r[1] == "walk"}
print(f"\nentries seen by walk: {entries}")
PY
