#!/usr/bin/env bash
# kafka-exporter for the local stack, on demand (`deploy/local/stack up
# kafka-exporter`; not part of plain `stack up`): the consumer-group lag of
# the stack's broker as Prometheus metrics, under the names of
# danielqsj/kafka_exporter (kafka_consumergroup_lag{consumergroup,topic,
# partition} and the rest; see deploy/local/kafka-exporter/main.go), on
# http://127.0.0.1:$RTC_KAFKA_EXPORTER_PORT/metrics.
#
#   kafka-exporter.sh start|stop|status
#
# start builds it if needed (deploy/local/build.sh kafka-exporter, cached),
# starts it against 127.0.0.1:$RTC_KAFKA_PORT and waits until /metrics
# answers with the broker count. The broker must be up (stack up kafka).
# status exits 0 when running and answering, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=kafka-exporter
URL="http://127.0.0.1:$RTC_KAFKA_EXPORTER_PORT"

# The whole answer first: with `grep -q` on a pipe, curl could be cut off
# and the pipeline fail (pipefail).
ready() {
  local metrics
  metrics="$(curl -fsS --max-time 5 "$URL/metrics" 2>/dev/null)" || return 1
  grep -q '^kafka_brokers ' <<<"$metrics"
}

where() {
  log "$NAME: listening on $URL/metrics (pid $(cat "$(pidfile "$NAME")")), broker 127.0.0.1:$RTC_KAFKA_PORT; log $(logfile "$NAME")"
}

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 10 ready
    log "$NAME: already running"
    where
    return 0
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$RTC_KAFKA_PORT") 2>/dev/null \
    || die "$NAME: no broker on 127.0.0.1:$RTC_KAFKA_PORT; start it first: deploy/local/stack up kafka"
  port_free "$NAME" "$RTC_KAFKA_EXPORTER_PORT" RTC_KAFKA_EXPORTER_PORT
  "$RTC_LOCAL_DIR/build.sh" kafka-exporter
  spawn "$NAME" "$("$RTC_LOCAL_DIR/build.sh" path kafka-exporter)" \
    --kafka.server="127.0.0.1:$RTC_KAFKA_PORT" \
    --web.listen-address="127.0.0.1:$RTC_KAFKA_EXPORTER_PORT"
  wait_for "$NAME" 20 ready
  where
}

status() { service_status "$NAME" "$URL" ready; }

service_main "$@"
