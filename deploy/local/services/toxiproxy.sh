#!/usr/bin/env bash
# toxiproxy for the local stack: a TCP proxy whose faults (latency, stalls,
# resets, bandwidth limits, sliced packets, a proxy taken down) are set over
# its HTTP API, so tests can put a bad network between a client and a real
# server. The API is on 127.0.0.1:$RTC_TOXIPROXY_PORT.
#
#   toxiproxy.sh start|stop|status
#
# start builds the server if needed (deploy/local/build.sh toxiproxy, the
# release pinned in deploy/local/toxiproxy/go.mod, cached), starts it and
# waits until GET /version answers. It starts with no proxies: each test
# creates its own (rtc_testkit::toxiproxy), listening on a loopback port of
# its own, and removes it when done. Proxies live in memory only; a stop
# removes them all.
# status exits 0 when running and answering, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=toxiproxy
URL="http://127.0.0.1:$RTC_TOXIPROXY_PORT"

# version: what the API answers on GET /version (the release, e.g. 2.5.0).
version() { curl -fsS --max-time 2 "$URL/version" 2>/dev/null; }

ready() { [[ -n "$(version)" ]]; }

where() {
  log "$NAME: $(version) listening on $URL (pid $(cat "$(pidfile "$NAME")")); log $(logfile "$NAME")"
}

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 10 ready
    log "$NAME: already running"
    where
    return 0
  fi
  port_free "$NAME" "$RTC_TOXIPROXY_PORT" RTC_TOXIPROXY_PORT
  "$RTC_LOCAL_DIR/build.sh" toxiproxy
  # Its default level, trace, logs every read and write of every connection.
  spawn "$NAME" env LOG_LEVEL=info "$("$RTC_LOCAL_DIR/build.sh" path toxiproxy-server)" \
    -host 127.0.0.1 \
    -port "$RTC_TOXIPROXY_PORT"
  wait_for "$NAME" 10 ready
  where
}

status() { service_status "$NAME" "$URL" ready; }

service_main "$@"
