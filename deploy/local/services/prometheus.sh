#!/usr/bin/env bash
# Prometheus for the local stack, on demand (`deploy/local/stack up
# prometheus`; not part of plain `stack up`): it scrapes the socket nodes
# and load-balancers that run as pods of namespace rtc, found through the
# stack's API server, and the stack's kafka-exporter, with the scrape
# configuration deploy/k8s ships, as the local overlay renders it (the
# ConfigMap prometheus-config of `kubectl kustomize deploy/k8s/overlays/local`:
# the base's pod discovery and relabelling, plus a kubeconfig and a file
# with kafka-exporter's address). Its HTTP API is on
# 127.0.0.1:$RTC_PROMETHEUS_PORT.
#
#   prometheus.sh start|stop|status
#
# start builds Prometheus if needed (deploy/local/build.sh prometheus, the
# release pinned in deploy/local/prometheus/go.mod, cached), writes
# $RTC_STACK_RUN/prometheus/{prometheus.yml,kubeconfig,kafka-exporter.json},
# starts it with its data in $RTC_STACK_RUN/prometheus/data and waits until
# /-/ready answers. The data is kept across restarts and removed by nothing
# but `rm -rf`; a stop keeps it.
# status exits 0 when running and ready, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=prometheus
URL="http://127.0.0.1:$RTC_PROMETHEUS_PORT"
DIR="$RTC_STACK_RUN/prometheus"

ready() { curl -fsS --max-time 2 "$URL/-/ready" >/dev/null 2>&1; }

version() {
  curl -fsS --max-time 2 "$URL/api/v1/status/buildinfo" 2>/dev/null | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'
}

where() {
  log "$NAME: $(version) listening on $URL (pid $(cat "$(pidfile "$NAME")")); config $DIR/prometheus.yml, log $(logfile "$NAME")"
}

# config: the scrape configuration of the local overlay, with what it
# refers to beside it.
config() {
  local kc="$RTC_STACK_RUN/kubeconfig" overlay="$RTC_REPO_ROOT/deploy/k8s/overlays/local"
  command -v kubectl >/dev/null 2>&1 \
    || die "$NAME: kubectl is not on PATH; install kubectl 1.32 or newer and run 'deploy/local/stack up prometheus' again"
  command -v jq >/dev/null 2>&1 || need_apt jq jq
  [[ -f "$kc" ]] || die "$NAME: $kc is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  mkdir -p "$DIR/data"
  # Rendered and read locally (no object is created): the kustomize build,
  # turned into JSON by a client-side dry run.
  kubectl kustomize "$overlay" \
    | KUBECONFIG="$kc" kubectl create --dry-run=client -o json -f - \
    | jq -r 'select(.kind == "ConfigMap" and .metadata.name == "prometheus-config") | .data["prometheus.yml"]' \
      >"$DIR/prometheus.yml.tmp" \
    || die "$NAME: could not render deploy/k8s/overlays/local; see the error above"
  [[ -s "$DIR/prometheus.yml.tmp" ]] \
    || die "$NAME: deploy/k8s/overlays/local renders no ConfigMap prometheus-config with a prometheus.yml"
  mv "$DIR/prometheus.yml.tmp" "$DIR/prometheus.yml"
  # Pod discovery acts as the stack's admin (list and watch pods of rtc).
  install -m 0600 "$kc" "$DIR/kubeconfig"
  printf '[{"targets": ["127.0.0.1:%s"], "labels": {"app": "kafka-exporter"}}]\n' "$RTC_KAFKA_EXPORTER_PORT" \
    >"$DIR/kafka-exporter.json"
}

prometheus_bin() { "$RTC_LOCAL_DIR/build.sh" path prometheus; }

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 30 ready
    log "$NAME: already running"
    where
    return 0
  fi
  port_free "$NAME" "$RTC_PROMETHEUS_PORT" RTC_PROMETHEUS_PORT
  "$RTC_LOCAL_DIR/build.sh" prometheus
  config
  # --web.enable-lifecycle: POST /-/reload re-reads prometheus.yml.
  spawn "$NAME" "$(prometheus_bin)" \
    --config.file="$DIR/prometheus.yml" \
    --storage.tsdb.path="$DIR/data" \
    --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$RTC_PROMETHEUS_PORT" \
    --web.enable-lifecycle
  wait_for "$NAME" 60 ready
  where
}

status() { service_status "$NAME" "$URL" ready; }

service_main "$@"
