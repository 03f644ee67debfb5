#!/usr/bin/env bash
# The KEDA operator for the local stack, on demand (`deploy/local/stack up
# keda`; not part of plain `stack up`): KEDA's own ScaledObject controller,
# built from the module proxy (deploy/local/build.sh keda), run as a process
# with the admin kubeconfig, watching every namespace. For cpu and memory
# triggers it creates a HorizontalPodAutoscaler on resource metrics, which
# the stack's kube-controller-manager runs on metrics-server's figures, so
# neither KEDA's metrics adapter nor its admission webhooks are started.
# Its CRDs are installed by the API server's script (build.sh keda-crds).
#
#   keda.sh start|stop|status
#
# Its probe, metrics and gRPC metrics-service ports are RTC_KEDA_PORT,
# +1 and +2 on 127.0.0.1. The gRPC service (used by the metrics adapter
# only) needs a certificate; start makes a self-signed one under
# $RTC_STACK_RUN/keda-certs. status exits 0 when it runs and its /readyz
# answers, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=keda
: "${RTC_KEDA_PORT:=18180}"
URL="http://127.0.0.1:$RTC_KEDA_PORT"
ADMIN="$RTC_STACK_RUN/kubeconfig"
CERTS="$RTC_STACK_RUN/keda-certs"

ready() { [[ "$(curl -fsS --max-time 2 "$URL/readyz" 2>/dev/null)" == ok ]]; }

where() {
  log "$NAME: KEDA operator running (pid $(cat "$(pidfile "$NAME")")), probes on $URL; log $(logfile "$NAME")"
}

certs() {
  [[ -s "$CERTS/tls.crt" && -s "$CERTS/tls.key" && -s "$CERTS/ca.crt" ]] && return 0
  mkdir -p "$CERTS"
  (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 365 \
      -keyout "$CERTS/tls.key" -out "$CERTS/tls.crt" -subj "/CN=keda-operator" \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-operator.keda.svc" 2>/dev/null
  ) || die "$NAME: openssl could not make the certificate of KEDA's metrics service; check that openssl works ('openssl version')"
  cp "$CERTS/tls.crt" "$CERTS/ca.crt"
}

start() {
  [[ -f "$ADMIN" ]] || die "$NAME: $ADMIN is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  if is_running "$NAME"; then
    wait_for "$NAME" 30 ready
    log "$NAME: already running"
    where
    return 0
  fi
  port_free "$NAME" "$RTC_KEDA_PORT" RTC_KEDA_PORT
  port_free "$NAME" "$((RTC_KEDA_PORT + 1))" RTC_KEDA_PORT
  port_free "$NAME" "$((RTC_KEDA_PORT + 2))" RTC_KEDA_PORT
  "$RTC_LOCAL_DIR/build.sh" keda
  certs
  spawn "$NAME" env KUBECONFIG="$ADMIN" POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda WATCH_NAMESPACE="" \
    "$("$RTC_LOCAL_DIR/build.sh" path keda-operator)" \
    --health-probe-bind-address "127.0.0.1:$RTC_KEDA_PORT" \
    --metrics-bind-address "127.0.0.1:$((RTC_KEDA_PORT + 1))" \
    --metrics-service-bind-address "127.0.0.1:$((RTC_KEDA_PORT + 2))" \
    --cert-dir "$CERTS" \
    --ca-dir "$CERTS" \
    --leader-elect=false \
    --enable-cert-rotation=false \
    --zap-log-level info
  wait_for "$NAME" 60 ready
  where
}

stop() { stop_recorded "$NAME"; }

status() { service_status "$NAME" "$URL" ready; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: keda.sh start|stop|status" ;;
esac
