# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: bp_m, bp_borg, bp_version_secs come from the prelude.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# The client borg's version, reported on a `version` line. `borg --version` is
# a Python start-up (about 0.2 s) in front of every run, so its answer is
# remembered in the login user's cache
# (${XDG_CACHE_HOME:-$HOME/.cache}/borg-pull/borg-version-CKSUM, CKSUM of the
# program's resolved path) under the binary's identity: resolved path, device,
# inode, size, mtime and ctime (`stat -L -c`, GNU and busybox; elsewhere it
# asks every time). A replaced or rewritten binary (apt, pip, a new venv)
# changes the identity and is asked again. The answer only feeds a courtesy
# check (the server's borg serve flags and its protocol sniff do not depend on
# it), and every read is bounded: the cache file to one read of 512 bytes, the
# program's output to 256 (a program that floods gets SIGPIPE), and `timeout`,
# where there is one, ends a program that hangs.
bp_v=; bp_c=; bp_k=
bp_p=$(command -v "$bp_borg" 2>/dev/null) &&
	bp_k=$(stat -L -c '%d:%i:%s:%Y:%Z' -- "$bp_p" 2>/dev/null) &&
	bp_c="${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/borg-pull/borg-version-$(printf '%s' "$bp_p" | cksum | cut -d' ' -f1)" &&
	[ -f "$bp_c" ] && bp_x=$(dd if="$bp_c" bs=512 count=1 2>/dev/null) &&
	[ "$(printf '%s\n' "$bp_x" | sed -n 1p)" = "$bp_k $bp_p" ] &&
	bp_v=$(printf '%s\n' "$bp_x" | sed -n 2p)
if [ -z "$bp_v" ]; then
	bp_v=$({ if command -v timeout >/dev/null 2>&1; then timeout "$bp_version_secs" "$bp_borg" --version; else "$bp_borg" --version; fi; } </dev/null 2>&1 | dd bs=256 count=1 2>/dev/null | sed -n 1p)
	case $bp_v in
	borg*[0-9]*)
		[ -z "$bp_c" ] || (
			umask 077
			mkdir -p "${bp_c%/*}" && { printf '%s %s\n%s\n' "$bp_k" "$bp_p" "$bp_v" >"$bp_c.$$" && mv -f "$bp_c.$$" "$bp_c" || rm -f "$bp_c.$$"; }
		) 2>/dev/null
		;;
	esac
fi
printf '%sversion %s\n' "$bp_m" "$bp_v"
