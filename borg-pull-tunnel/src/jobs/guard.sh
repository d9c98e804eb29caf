# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: bp_m, bp_prefix, bp_silence, bp_start, bp_grace come from the
# prelude; bp_dir from the job's script, once it made the private directory.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# The run guard's functions (POSIX sh; /proc where there is one). See Guard in
# runner.rs for why each bound is what it is.

# bp_beat FILE N: writes the time (`date +%s`, 0 where it has no %s) and the
# count N: the line changes with every beat even where the time cannot be
# read (the watcher compares lines; only the next run's age check needs the
# time, and skips a 0).
bp_beat() {
	bp_t=$(date +%s 2>/dev/null)
	case $bp_t in ''|*[!0-9]*) bp_t=0;; esac
	printf '%s %s\n' "$bp_t" "$2" >"$1"
}

# bp_stat PID: bp_st its start time (field 22 of /proc/PID/stat, after the
# command name, which may hold spaces and parentheses), bp_pg its group.
bp_stat() {
	bp_st=; bp_pg=; bp_s=
	[ -r "/proc/$1/stat" ] && read -r bp_s 2>/dev/null <"/proc/$1/stat" || return 1
	bp_s=${bp_s##*) }
	# shellcheck disable=SC2086 # split into the stat fields
	set -- $bp_s
	bp_pg=$3; bp_st=${20}
	[ -n "$bp_st" ]
}

# bp_alive PID START UID: PID still is that process (same start time) of that
# user (real and effective uid): a recycled pid or another user's process
# never matches.
bp_alive() {
	bp_stat "$1" && [ "$bp_st" = "$2" ] && [ -r "/proc/$1/status" ] || return 1
	while read -r bp_k bp_1 bp_2 bp_r; do
		[ "$bp_k" = Uid: ] || continue
		[ "$bp_1" = "$3" ] && [ "$bp_2" = "$3" ]
		return
	done 2>/dev/null <"/proc/$1/status"
	return 1
}

# bp_sig PID - PG SIGNAL: to the group when PID leads it, else to PID alone.
bp_sig() {
	if [ "$3" = "$1" ]; then kill -s "$4" -- "-$1"; else kill -s "$4" "$1"; fi 2>/dev/null
}

# bp_stop PID START PG UID: SIGTERM to its group (to PID alone unless PID
# leads PG), then SIGKILL after the grace if the same process is still there.
# Signals go to the group only while its leader is verified alive, so the
# group id cannot have been reused.
bp_stop() {
	bp_alive "$1" "$2" "$4" || return 0
	bp_sig "$1" "$2" "$3" TERM
	bp_i=0
	while [ $bp_i -lt "$bp_grace" ] && bp_alive "$1" "$2" "$4"; do sleep 1; bp_i=$((bp_i+1)); done
	bp_alive "$1" "$2" "$4" && bp_sig "$1" "$2" "$3" KILL
	return 0
}

# bp_clear OWN: the next run's look at the login user's other private
# directories in the same TMPDIR: one whose last heartbeat (`beat`: a
# `date +%s` stamp, then a count) is older than the bound (the start bound
# until `beats` says heartbeats flow to the run) is dead; the process `run`
# recorded is stopped if it is still the same one, the directory removed and
# one `cleared` line reported. A directory without a stamp (an older
# version's) is left to its own watcher.
bp_clear() {
	bp_id=$(id -u)
	bp_t=$(date +%s 2>/dev/null)
	case $bp_t in ''|*[!0-9]*) return 0;; esac
	for bp_o in "${TMPDIR:-/tmp}"/"$bp_prefix"????????; do
		[ "$bp_o" != "$1" ] && [ -d "$bp_o" ] && [ ! -L "$bp_o" ] || continue
		# shellcheck disable=SC2012 # the owner's uid of one directory, no names parsed
		bp_w=$(ls -nd -- "$bp_o" 2>/dev/null) || continue
		# shellcheck disable=SC2086 # split into ls's fields
		set -- "$1" $bp_w
		[ "$4" = "$bp_id" ] || continue
		bp_b=
		# shellcheck disable=SC2034 # bp_r takes the rest of the line
		read -r bp_b bp_r 2>/dev/null <"$bp_o/beat"
		case $bp_b in ''|0|*[!0-9]*) continue;; esac
		if [ -e "$bp_o/beats" ]; then bp_x=$bp_silence; else bp_x=$bp_start; fi
		[ $((bp_t - bp_b)) -gt "$bp_x" ] || continue
		bp_p=; bp_q=; bp_g=; bp_v=
		read -r bp_p bp_q bp_g bp_v 2>/dev/null <"$bp_o/run"
		case $bp_p in ''|*[!0-9]*) bp_p=-;; esac
		if [ "$bp_p" != - ] && [ "$bp_v" = "$bp_id" ] && bp_alive "$bp_p" "$bp_q" "$bp_id"; then
			bp_stop "$bp_p" "$bp_q" "$bp_g" "$bp_id"
		else
			bp_p=-
		fi
		rm -rf -- "$bp_o"
		printf '%scleared %s %s\n' "$bp_m" "$bp_p" "$bp_o"
	done
}

# bp_watch [ssh-log]: starts the watcher of the run whose private directory is
# $bp_dir in the background. It stamps the start, and once a second checks
# that $$ (the script, later borg) still runs and that the heartbeat stamp
# changed; after the bound without one (the silence bound once `beats` says
# heartbeats flow to this run, before that the start bound: a restore whose
# heartbeat channel the client's sshd refused is not stopped for it) it stops
# $$'s process group. Then it removes the directory and, if the script leads
# its process group (as under sshd), ends the group's rest: the heartbeat
# reader and whatever borg left running (the watcher itself is in the group,
# so the group id cannot have been reused).
# With ssh-log, once borg has exited (not after a silence stop: the link is
# dead and a write to it could block) it first runs bp_send_log with the
# session's stderr as its fd 3 (jobs/pull/ssh_log.sh).
bp_watch() {
	bp_stat $$; bp_me=$$; bp_mg=$bp_pg; bp_id=$(id -u)
	bp_beat "$bp_dir/beat" 0 2>/dev/null
	# A subshell, not the function with redirections: dash keeps copies of the fds a function
	# call redirects (to restore them after), and the background watcher would hold the
	# session's stdout open until it ends.
	if [ "${1-}" = ssh-log ]; then
		(bp_watcher ssh-log) </dev/null 3>&2 >/dev/null 2>&1 &
	else
		(bp_watcher) </dev/null >/dev/null 2>&1 &
	fi
}

# The watcher's body (run in the background by bp_watch).
bp_watcher() {
	trap '' INT TERM HUP
	bp_n=0; bp_l=; bp_dead=
	while kill -0 "$bp_me" 2>/dev/null; do
		sleep 1
		if [ -e "$bp_dir/beats" ]; then bp_x=$bp_silence; else bp_x=$bp_start; fi
		bp_b=
		read -r bp_b 2>/dev/null <"$bp_dir/beat"
		if [ "$bp_b" != "$bp_l" ]; then bp_l=$bp_b; bp_n=0; else bp_n=$((bp_n+1)); fi
		if [ $bp_n -ge "$bp_x" ]; then
			bp_dead=1
			bp_sig "$bp_me" - "$bp_mg" TERM
			bp_i=0
			while [ $bp_i -lt "$bp_grace" ] && kill -0 "$bp_me" 2>/dev/null; do sleep 1; bp_i=$((bp_i+1)); done
			if [ "$bp_mg" != "$bp_me" ] && { [ -z "$bp_st" ] || bp_alive "$bp_me" "$bp_st" "$bp_id"; }; then
				kill -s KILL "$bp_me" 2>/dev/null
			fi
			break
		fi
	done
	[ -n "$bp_dead" ] || [ "${1-}" != ssh-log ] || bp_send_log
	bp_rp=; bp_rs=
	read -r bp_rp bp_rs 2>/dev/null <"$bp_dir/reader"
	rm -rf -- "$bp_dir"
	case $bp_rp in ''|*[!0-9]*) ;; *) bp_alive "$bp_rp" "$bp_rs" "$bp_id" && kill -s TERM "$bp_rp";; esac
	[ "$bp_mg" = "$bp_me" ] && kill -s KILL -- "-$bp_me"
}

# bp_arm [reader]: marks the run as started (`run`: the pid borg will have,
# its start time, process group and uid, what the next run checks before it
# stops anything). With `reader` also `beats` (heartbeats flow) and the
# heartbeat reader on the script's stdin (through fd 3: a background list's
# own stdin is /dev/null): every line stamps `beat`; it ends at EOF or once the
# directory is gone. The command that follows must be exec'ed with
# `</dev/null 3<&-`. Without `reader` (restore-tar: tar reads the stream on
# stdin) the heartbeats come on a channel of their own (restore_tar_beat.sh).
bp_arm() {
	bp_stat $$
	printf '%s %s %s %s\n' $$ "${bp_st:--}" "${bp_pg:--}" "$bp_id" >"$bp_dir/run" || exit 2
	bp_beat "$bp_dir/beat" 0 2>/dev/null
	[ "${1-}" = reader ] || return 0
	: >"$bp_dir/beats"
	exec 3<&0
	(
		bp_c=0
		while IFS= read -r bp_l; do bp_c=$((bp_c+1)); bp_beat "$bp_dir/beat" $bp_c 2>/dev/null || break; done
	) <&3 >/dev/null 2>&1 &
}
