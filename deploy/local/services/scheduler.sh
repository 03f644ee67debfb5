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

healthy() { healthz "$URL"; }

start() {
  start_component "$NAME" "$URL" "$KC" RTC_SCHEDULER_PORT \
    "$("$RTC_LOCAL_DIR/build.sh" path kube-scheduler)"
}

status() { service_status "$NAME" "$URL" healthy; }

service_main "$@"
