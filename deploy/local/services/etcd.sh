#!/usr/bin/env bash
# etcd, the storage of the local stack's Kubernetes API server.
#
#   etcd.sh start|stop|status
#
# Loopback only (client 127.0.0.1:$RTC_ETCD_PORT, peer 127.0.0.1:$RTC_ETCD_PEER_PORT),
# a single member, data in $RTC_STACK_RUN/etcd (kept across restarts; delete
# the directory for an empty cluster). The binary is the pinned Debian
# etcd-server from deploy/local/apiserver/debian-packages.txt, unpacked into
# $RTC_STACK_CACHE/bin by build.sh; if that pin can no longer be had, the
# system's etcd-server package is used instead (see apiserver/README.md).
# status exits 0 when running and healthy, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=etcd
URL="http://127.0.0.1:$RTC_ETCD_PORT"

healthy() { [[ "$(curl -fsS --max-time 2 "$URL/health" 2>/dev/null)" == *'"health":"true"'* ]]; }

etcd_binary() {
  if "$RTC_LOCAL_DIR/apiserver/build.sh" etcd; then
    echo "$RTC_STACK_CACHE/bin/etcd"
    return
  fi
  log "warning: the pinned etcd-server is not available; using the system's etcd-server package"
  need_apt etcd-server etcd
  command -v etcd
}

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 30 healthy
    log "etcd: already running (pid $(cat "$(pidfile "$NAME")")) on $URL"
    return 0
  fi
  if healthy; then
    die "something this stack did not start already answers on $URL; stop it or set RTC_ETCD_PORT"
  fi
  local bin extra=()
  bin="$(etcd_binary)"
  # Throw-away test data: skipping fsync makes every API write much faster.
  if "$bin" --help 2>&1 | grep -q -- '--unsafe-no-fsync'; then extra+=(--unsafe-no-fsync); fi
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
