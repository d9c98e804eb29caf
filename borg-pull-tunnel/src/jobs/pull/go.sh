# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: the bp_ variables come from the prelude (see start.sh).
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# After start.sh and borg_version.sh: the private directory (mktemp -d, umask
# 077) and its guard, reported on a `dir` line; then one line on stdin: `go`
# (anything else, or EOF, ends the script: the watcher cleans up), BORG_RSH
# and the passphrase, if any; borg's environment, and borg exec'ed as the
# session's process (our SIGINT reaches it directly).
bp_u=$(umask)
umask 077
bp_dir=$(mktemp -d "${TMPDIR:-/tmp}/${bp_prefix}XXXXXXXX") || exit 2
umask "$bp_u"
if [ "$bp_via" = ssh ]; then
	bp_watch ssh-log
	bp_clear "$bp_dir"
	printf '%s\n' "$bp_known_hosts" >"$bp_dir/known_hosts" || exit 2
	printf '%s\n' "$bp_identity" >"$bp_dir/agent_key.pub" || exit 2
else
	bp_watch
	bp_clear "$bp_dir"
fi
printf '%sdir %s\n' "$bp_m" "$bp_dir"
IFS= read -r bp_go && [ "$bp_go" = go ] || exit 0
IFS= read -r BORG_RSH || exit 2
export BORG_RSH
if [ "$bp_store_rsh" = yes ]; then
	BORGSTORE_RSH=$BORG_RSH
	export BORGSTORE_RSH
fi
if [ "$bp_passphrase" = yes ]; then
	IFS= read -r BORG_PASSPHRASE || exit 2
	export BORG_PASSPHRASE
fi
# `go` arrives without waiting for the forward's reply; sshd made the socket
# before it passed `go` on, unless it refused: then wait for EOF, keeping the
# directory to diagnose.
if [ "$bp_via" = socket ] && [ ! -S "$bp_dir/borg.sock" ]; then
	while IFS= read -r bp_go; do :; done
	echo "borg-pull: no socket at $bp_dir/borg.sock; borg not started" >&2
	exit 125
fi
while [ "$bp_nenv" -gt 0 ]; do
	export "${1?}"
	shift
	bp_nenv=$((bp_nenv - 1))
done
# From here on the server's heartbeats arrive on stdin: the guard's reader
# takes them, and borg gets /dev/null (EOF for any prompt).
bp_arm reader
exec "$bp_borg" "$@" </dev/null 3<&-
