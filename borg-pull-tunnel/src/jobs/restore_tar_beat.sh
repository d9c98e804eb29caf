# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: bp_run_dir comes from the prelude.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# restore-tar's heartbeat reader, on a channel of its own (tar's stdin is the
# stream), after guard.sh: it records itself in DIR/reader (pid and start
# time: the run's watcher ends it with the run, since a dead link never brings
# its EOF), marks DIR/beats (from then on the silence bound applies) and stamps
# DIR/beat for every line; it ends at EOF, or once the directory is gone. A
# directory that is not a started run of this user is left alone.
[ -d "$bp_run_dir" ] && [ ! -L "$bp_run_dir" ] && [ -e "$bp_run_dir/run" ] || exit 0
bp_stat $$
printf '%s %s\n' $$ "${bp_st:--}" >"$bp_run_dir/reader" && : >"$bp_run_dir/beats" || exit 0
bp_c=0
# shellcheck disable=SC2034 # the line's content does not matter
while IFS= read -r bp_l; do
	bp_c=$((bp_c+1))
	bp_beat "$bp_run_dir/beat" $bp_c 2>/dev/null || exit 0
done
