#!/usr/bin/env bash
# etcd, the storage of the local stack's Kubernetes API server.
#
#   etcd.sh start|stop|status
#
# Loopback only (client 127.0.0.1:$RTC_ETCD_PORT, peer 127.0.0.1:$RTC_ETCD_PEER_PORT),
# a single member, data in $RTC_STACK_RUN/etcd (kept across restarts; delete
# the directory for an empty cluster). The binary is etcd (the release pinned
# in deploy/local/etcd/go.mod), built by deploy/local/build.sh.
# status exits 0 when running and healthy, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=etcd
URL="http://127.0.0.1:$RTC_ETCD_PORT"

healthy() { [[ "$(curl -fsS --max-time 2 "$URL/health" 2>/dev/null)" == *'"health":"true"'* ]]; }

etcd_binary() {
  "$RTC_LOCAL_DIR/build.sh" etcd >&2
  "$RTC_LOCAL_DIR/build.sh" path etcd
}

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 30 healthy
    log "etcd: already running (pid $(cat "$(pidfile "$NAME")")) on $URL"
    return 0
  fi
  port_free etcd "$RTC_ETCD_PORT" RTC_ETCD_PORT
  port_free etcd "$RTC_ETCD_PEER_PORT" RTC_ETCD_PEER_PORT
  local bin extra=()
  bin="$(etcd_binary)"
  # Throw-away test data: skipping fsync makes every API write much faster.
  extra+=(--unsafe-no-fsync)
  mkdir -p "$RTC_STACK_RUN/etcd" && chmod 700 "$RTC_STACK_RUN/etcd"
  spawn "$NAME" "$bin" \
    --name rtc-local \
    --data-dir "$RTC_STACK_RUN/etcd" \
    --listen-client-urls "$URL" \
    --advertise-client-urls "$URL" \
    --listen-peer-urls "http://127.0.0.1:$RTC_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$RTC_ETCD_PEER_PORT" \
    --initial-cluster "rtc-local=http://127.0.0.1:$RTC_ETCD_PEER_PORT" \
    --log-level warn \
    "${extra[@]}"
  wait_for "$NAME" 30 healthy
  log "etcd: listening on $URL (log $(logfile "$NAME"))"
}

status() { service_status "$NAME" "$URL" healthy; }

service_main "$@"
