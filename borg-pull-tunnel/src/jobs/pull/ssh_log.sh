# shellcheck shell=sh disable=SC2154
# (SC2154: bp_m and bp_log_kept come from the prelude, bp_dir from start.sh.)
#
# The agent and TCP methods: once borg has exited, the watcher (bp_watch
# ssh-log) sends the end of the client ssh's log back on the session's stderr
# (its fd 3), each line tagged with the marker and `ssh `, then an `ssh-end`
# line, so the server names the cause from what ssh said instead of from
# borg's guess. awk ends every line, the last one too, so the end line always
# starts a line. A subshell: when the server is gone, SIGPIPE ends it, not the
# watcher before its rm.
bp_send_log() {
	(
		[ -s "$bp_dir/ssh.log" ] && tail -c "$bp_log_kept" "$bp_dir/ssh.log" | awk -v m="${bp_m}ssh " '{print m $0}'
		printf '%sssh-end\n' "$bp_m"
	) >&3
}
