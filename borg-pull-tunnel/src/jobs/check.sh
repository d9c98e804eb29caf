# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: bp_m and the like come from the prelude the Rust side writes.
# SC2015: `A && B || C` is meant: C when A or B fails.)
# bp_check PROGRAM ROLE: returns if PROGRAM can be run, else reports why on a
# `missing ROLE WHY` line and exits 127. A path is looked at along its parents,
# so "a parent directory is not searchable" is told apart from "not there"
# (the shell sees both as a missing file).
# Needs bp_m, the run's report marker.
bp_check() {
	case $1 in
	*/*)
		[ -f "$1" ] && [ -x "$1" ] && return 0
		if [ -e "$1" ]; then
			bp_w='it is not an executable file'
		else
			bp_w='no such file'
			bp_unsearchable "$1"
		fi
		;;
	*)
		command -v "$1" >/dev/null 2>&1 && return 0
		bp_w="not found in PATH ($PATH)"
		;;
	esac
	printf '%smissing %s %s\n' "$bp_m" "$2" "$bp_w"
	exit 127
}

# bp_unsearchable PATH: if the nearest directory above PATH that exists is one
# the login user cannot search, says so in bp_w (to the shell a file below it
# looks missing).
bp_unsearchable() {
	bp_d=$1
	while case $bp_d in */*) bp_d=${bp_d%/*}; [ -n "$bp_d" ] || bp_d=/;; *) false;; esac; do
		if [ -d "$bp_d" ]; then
			[ -x "$bp_d" ] || bp_w="directory $bp_d is not searchable by user $(id -un)"
			return 0
		fi
		[ "$bp_d" = / ] && return 0
	done
}
