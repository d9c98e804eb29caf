# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: bp_m and bp_remote_dir come from the prelude.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# --remote-dir: enter the directory borg is to run in first, before the relay,
# borg or the private directory are looked at (so a relative program path
# means the same to the check as to exec), or report why it cannot
# (`nodir WHY`) and exit: a missing directory must stop a restore before borg
# starts, not extract into the login directory, and not be blamed on borg.
# CDPATH empty: a relative directory is the login directory's, and cd prints
# nothing. A missing directory is looked at along its parents (bp_unsearchable
# of check.sh): "a parent is not searchable" is told apart from "not there".
if ! CDPATH='' cd -- "$bp_remote_dir" 2>/dev/null; then
	if [ -d "$bp_remote_dir" ]; then
		bp_w="it is not searchable by user $(id -un)"
	elif [ -e "$bp_remote_dir" ]; then
		bp_w='it is not a directory'
	else
		bp_w='no such directory'
		bp_unsearchable "$bp_remote_dir"
	fi
	printf '%snodir %s\n' "$bp_m" "$bp_w"
	exit 2
fi
