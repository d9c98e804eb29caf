# shellcheck shell=sh disable=SC2154,SC2015
# (SC2154: the bp_ variables below come from the prelude, bp_dir is set here.
# SC2015: `A && B || C` is meant: C when A or B fails.)
#
# The pull's script on the client; script.rs says what it does and why. In
# front of it: the prelude, check.sh, guard.sh, and as the run needs them
# remote_dir.sh, install_relay.sh, ssh_log.sh, borg_version.sh. The prelude:
#   bp_m               the run's report marker
#   bp_borg            the borg program
#   bp_transport       the relay (socket method) or ssh (agent and TCP
#                      methods) to check; empty when install_relay.sh did
#   bp_transport_role  relay or ssh
#   bp_via             socket, or ssh (agent and TCP methods)
#   bp_store_rsh       yes: BORGSTORE_RSH follows BORG_RSH (borg 2)
#   bp_passphrase      yes: a passphrase line follows BORG_RSH on stdin
#   bp_nenv, "$@"      bp_nenv NAME=VALUE words to export, then borg's args
[ -z "$bp_transport" ] || bp_check "$bp_transport" "$bp_transport_role"
bp_check "$bp_borg" borg
if [ "$bp_via" = ssh ]; then
	# sshd sets SSH_AUTH_SOCK only when it forwards the agent
	# (AllowAgentForwarding, and no `restrict` without `agent-forwarding`).
	[ -n "${SSH_AUTH_SOCK-}" ] || { printf '%snoagent\n' "$bp_m"; exit 2; }
fi
