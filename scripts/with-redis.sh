#!/usr/bin/env bash
# Run a command with SCHED_REDIS_URL pointing at a Redis server.
# When SCHED_REDIS_URL is already set, that server is used as it is. Otherwise a private
# redis-server is started on a free 127.0.0.1 port, with persistence off, and stopped
# when the command ends (also on Ctrl-C, or SIGTERM, which is passed on to the command).
# The exit status is the command's.
set -euo pipefail

if [[ -n "${SCHED_REDIS_URL:-}" ]]; then
  exec "$@"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's redis-server package" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server not found. Install it (Debian/Ubuntu: sudo apt-get install redis-server)" >&2
    echo "or point SCHED_REDIS_URL at a server you run, e.g. redis://127.0.0.1:6379/0" >&2
    exit 1
  fi
fi

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
workdir="$(mktemp -d)"
# A session of its own: Ctrl-C in the terminal reaches the command, which then shuts
# down while Redis is still there; Redis is stopped afterwards, by the trap below.
setsid redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$workdir" --logfile "$workdir/redis.log" --daemonize no &
redis_pid=$!
cleanup() {
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then break; fi
  sleep 0.05
done
if ! redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  echo "private redis-server on port $port did not start; its log:" >&2
  cat "$workdir/redis.log" >&2
  exit 1
fi
echo "private redis-server on 127.0.0.1:$port (stopped when done)" >&2
export SCHED_REDIS_URL="redis://127.0.0.1:$port/0"
# The command runs as a child this script waits for, not in the foreground: a trap runs
# only once a foreground command has ended, and a SIGTERM sent to this script alone (as
# make passes it on) must reach the command. Ctrl-C reaches the command directly (same
# process group); `trap - INT` undoes the SIGINT ignore bash gives background commands.
( trap - INT QUIT; exec "$@" ) <&0 &
command_pid=$!
trap 'kill -TERM "$command_pid" 2>/dev/null || true' TERM
trap ':' INT
# wait returns early when a trapped signal arrives; wait again until the command ends.
while kill -0 "$command_pid" 2>/dev/null; do
  wait "$command_pid" || true
done
# The command's own status: 0 for a command that stopped cleanly on SIGTERM or Ctrl-C.
status=0
wait "$command_pid" || status=$?
exit "$status"
