#!/usr/bin/env bash
# metrics-server for the local stack: it scrapes /metrics/resource of every
# node agent's kubelet port and serves the metrics.k8s.io API (kubectl top,
# the HorizontalPodAutoscaler) through the API server's aggregation layer.
# It runs as a local process, HTTPS on 127.0.0.1:$RTC_METRICS_SERVER_PORT.
#
#   metrics-server.sh start|stop|status
#
# start builds it if needed (deploy/local/build.sh metrics-server, the
# release pinned in deploy/local/metrics-server/go.mod, cached), makes its
# certificates (pki.sh metrics-server: a client certificate for the user
# metrics-server, a serving certificate for metrics-server.kube-system.svc),
# applies deploy/local/metrics-server/apiservice.yaml (its RBAC, an
# ExternalName Service to 127.0.0.1 and the APIService v1beta1.metrics.k8s.io
# with the cluster CA as caBundle), starts it and waits until it is live and
# the APIService is Available. Figures follow two scrapes later
# (--metric-resolution 15s). stop stops it and deletes the APIService, so
# the API server does not keep a group it cannot serve (namespace deletion
# waits for every group's discovery).
# status exits 0 when it runs and its APIService is Available, 3 otherwise.

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=metrics-server
PKI="$RTC_STACK_RUN/pki"
URL="https://127.0.0.1:$RTC_METRICS_SERVER_PORT"
ADMIN="$RTC_STACK_RUN/kubeconfig"
KC="$RTC_STACK_RUN/kubeconfigs/metrics-server.kubeconfig"
APISERVICE=v1beta1.metrics.k8s.io
MANIFEST="$RTC_LOCAL_DIR/metrics-server/apiservice.yaml"

live() {
  [[ "$(curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "$URL/livez" 2>/dev/null)" == ok ]]
}

available() {
  [[ "$(KUBECONFIG="$ADMIN" kubectl get apiservice "$APISERVICE" --request-timeout 3s \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" == True ]]
}

ready() { live && available; }

register() {
  local ca
  ca="$(base64 -w0 <"$PKI/ca.crt")"
  sed -e "s|@PORT@|$RTC_METRICS_SERVER_PORT|g" -e "s|@CA_BUNDLE@|$ca|g" "$MANIFEST" \
    | KUBECONFIG="$ADMIN" kubectl apply --server-side --force-conflicts --field-manager rtc-stack -f - >/dev/null \
    || die "metrics-server: could not apply $MANIFEST; see the error above"
}

where() {
  log "$NAME: listening on $URL (pid $(cat "$(pidfile "$NAME")")), APIService $APISERVICE Available; log $(logfile "$NAME")"
}

start() {
  [[ -f "$ADMIN" ]] || die "metrics-server: $ADMIN is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  if is_running "$NAME"; then
    register
    wait_for "$NAME" 60 ready
    log "$NAME: already running"
    where
    return 0
  fi
  port_free "$NAME" "$RTC_METRICS_SERVER_PORT" RTC_METRICS_SERVER_PORT
  "$RTC_LOCAL_DIR/build.sh" metrics-server
  bash "$RTC_LOCAL_DIR/pki.sh" metrics-server
  bash "$RTC_LOCAL_DIR/pki.sh" kubeconfig metrics-server "$KC"
  register
  # The kubelet client uses the kubeconfig's certificate and the cluster CA;
  # each node's port is the one its Node advertises, at its InternalIP.
  spawn "$NAME" "$("$RTC_LOCAL_DIR/build.sh" path metrics-server)" \
    --kubeconfig "$KC" \
    --authentication-kubeconfig "$KC" \
    --authorization-kubeconfig "$KC" \
    --bind-address 127.0.0.1 \
    --secure-port "$RTC_METRICS_SERVER_PORT" \
    --tls-cert-file "$PKI/metrics-server-serving.crt" \
    --tls-private-key-file "$PKI/metrics-server-serving.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-use-node-status-port \
    --kubelet-preferred-address-types InternalIP \
    --metric-resolution 15s \
    --profiling=false \
    --v 1
  wait_for "$NAME" 60 ready
  where
}

stop() {
  if [[ -f "$ADMIN" ]] && is_running apiserver; then
    KUBECONFIG="$ADMIN" kubectl delete apiservice "$APISERVICE" --ignore-not-found --request-timeout 5s >/dev/null 2>&1 || true
  fi
  stop_recorded "$NAME"
}

status() { service_status "$NAME" "$URL" ready; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: metrics-server.sh start|stop|status" ;;
esac
