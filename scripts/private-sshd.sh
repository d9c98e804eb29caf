# Sourced by scripts/demo and the benches: the pieces of a private OpenSSH sshd on loopback (its
# own host key, authorized_keys, pid file and port in a temp dir, so the machine's own ssh set-up
# is never touched). The tests have the same in Rust: borg-pull-testkit/src/sshd.rs.

# private_sshd_prepare DIR: host and client ed25519 keys, authorized_keys, a free loopback port
# (sets PORT) and DIR/sshd_config; extra sshd_config lines come from stdin.
private_sshd_prepare() {
  local dir=$1
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  {
    cat <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
AllowStreamLocalForwarding yes
CONF
    cat
  } >"$dir/sshd_config"
  # sshd refuses to start without its privilege-separation directory (normally systemd's).
  [ "$(id -u)" != 0 ] || mkdir -p -m 0755 /run/sshd
}

# private_sshd_wait PORT PID LOG: until the sshd with PID accepts on PORT (5 s at most).
private_sshd_wait() {
  local _
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "private sshd on 127.0.0.1:$1 did not come up; its log ($3):" >&2
  cat "$3" >&2
  return 1
}

# private_sshd_known_hosts DIR PORT...: DIR/known_hosts trusting DIR/host_key on each port.
private_sshd_known_hosts() {
  local dir=$1 key port
  shift
  key=$(cut -d' ' -f1,2 "$dir/host_key.pub")
  for port in "$@"; do printf '[127.0.0.1]:%s %s\n' "$port" "$key"; done >"$dir/known_hosts"
}
