#!/usr/bin/env bash
# kube-scheduler of Kubernetes (deploy/local/kube/go.mod), default profile.
#
#   scheduler.sh start|stop|status
#
# It authenticates with its own client certificate (CN system:kube-scheduler).
# Its health port is 127.0.0.1:$RTC_SCHEDULER_PORT (HTTPS, /healthz open).
# status exits 0 when running and healthy, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=scheduler
URL="https://127.0.0.1:$RTC_SCHEDULER_PORT"
KC="$RTC_STACK_RUN/kubeconfigs/scheduler.kubeconfig"

healthy() { [[ "$(curl -ksS --max-time 2 "$URL/healthz" 2>/dev/null)" == ok ]]; }

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 60 healthy
    log "$NAME: already running (pid $(cat "$(pidfile "$NAME")")) on $URL"
    return 0
  fi
  [[ -f "$KC" ]] || die "$NAME: $KC is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  port_free "$NAME" "$RTC_SCHEDULER_PORT" RTC_SCHEDULER_PORT
  spawn "$NAME" "$("$RTC_LOCAL_DIR/build.sh" path kube-scheduler)" \
    --kubeconfig "$KC" \
    --authentication-kubeconfig "$KC" \
    --authorization-kubeconfig "$KC" \
    --bind-address 127.0.0.1 \
    --secure-port "$RTC_SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false \
    --v 1
  wait_for "$NAME" 60 healthy
  log "$NAME: running on $URL (pid $(cat "$(pidfile "$NAME")")), log $(logfile "$NAME")"
}

status() { service_status "$NAME" "$URL" healthy; }

service_main "$@"
