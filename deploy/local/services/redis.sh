#!/usr/bin/env bash
# Redis for the local stack: Debian's redis-server on 127.0.0.1:$RTC_REDIS_PORT.
#
# Loopback only, protected mode on, no persistence (no RDB snapshots, no AOF):
# every start is an empty Redis, and a stop/start takes well under a second,
# which tests that kill and restart Redis rely on.
#
# Usage: redis.sh start|stop|status
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=redis
URL="redis://127.0.0.1:$RTC_REDIS_PORT"


# redis_ping: true when something on the port answers a Redis PING with PONG.
redis_ping() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "PING\r\n" >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ "$reply" == "+PONG"* ]]
  ' _ "$RTC_REDIS_PORT" 2>/dev/null
}

# port_open: true when anything accepts connections on the port.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$RTC_REDIS_PORT" 2>/dev/null
}

where() { log "$NAME: listening on $URL (pid $(cat "$(pidfile "$NAME")")); log $(logfile "$NAME")"; }

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 10 redis_ping
    log "$NAME: already running"
    where
    return 0
  fi
  if port_open; then
    die "$NAME: port $RTC_REDIS_PORT on 127.0.0.1 is already taken by a process this stack did not start; stop it, or choose another port with RTC_REDIS_PORT"
  fi
  need_apt redis-server redis-server
  local data="$RTC_STACK_RUN/redis"
  mkdir -p "$data"
  spawn "$NAME" redis-server \
    --bind 127.0.0.1 \
    --port "$RTC_REDIS_PORT" \
    --protected-mode yes \
    --save '' \
    --appendonly no \
    --dir "$data" \
    --daemonize no \
    --supervised no \
    --logfile '' \
    --unixsocket '' \
    --tcp-backlog 128
  wait_for "$NAME" 10 redis_ping
  where
}

status() { service_status "$NAME" "$URL" redis_ping; }

service_main "$@"
