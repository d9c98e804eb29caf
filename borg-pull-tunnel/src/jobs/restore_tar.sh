# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: the bp_ variables below come from the prelude.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# restore-tar's script on the client, after check.sh and guard.sh: checks that
# tar can run and that the directory is one the login user can write to,
# reports why not (`missing tar WHY`, `nodir WHY`) before anything is read
# from the repository; makes the private directory and its guard as a pull
# does (tar reads the stream on stdin: the heartbeats come on a channel of
# their own, restore_tar_beat.sh), reports `ready DIR` and execs tar.
# The prelude:
#   bp_m              the run's report marker
#   bp_tar            the tar program
#   bp_tar_dir        the directory tar unpacks into
#   bp_numeric_owner  yes: tar --numeric-owner
bp_check "$bp_tar" tar
if [ ! -e "$bp_tar_dir" ]; then
	bp_w='no such directory'
elif [ ! -d "$bp_tar_dir" ]; then
	bp_w='it is not a directory'
elif [ ! -w "$bp_tar_dir" ] || [ ! -x "$bp_tar_dir" ]; then
	bp_w="it is not writable and searchable by user $(id -un)"
else
	bp_w=
fi
[ -z "$bp_w" ] || { printf '%snodir %s\n' "$bp_m" "$bp_w"; exit 2; }
set -- "$bp_tar" -C "$bp_tar_dir" -x -f -
[ "$bp_numeric_owner" = yes ] && set -- "$@" --numeric-owner
# -p as root: modes exactly as in the archive, whatever this tar's default.
[ "$(id -u)" = 0 ] && set -- "$@" -p
bp_u=$(umask)
umask 077
bp_dir=$(mktemp -d "${TMPDIR:-/tmp}/${bp_prefix}XXXXXXXX") || exit 2
umask "$bp_u"
bp_watch
bp_clear "$bp_dir"
bp_arm
printf '%sready %s\n' "$bp_m" "$bp_dir"
exec "$@"
