# shellcheck shell=bash
# Shared conventions for the local stack's scripts. Source it; do not run it.
#
# Layout:
#   $RTC_STACK_CACHE  downloads, virtualenvs and built binaries, kept across runs
#                     (outside the repository; default ~/.cache/rtc-stack)
#   $RTC_STACK_RUN    runtime state of one stack: pid files, logs, data dirs,
#                     kubeconfig (default <repo>/target/stack, git-ignored)
# Every service script under services/ takes start|stop|status, is idempotent,
# only ever stops the process whose id it recorded, and waits for readiness.

set -euo pipefail

RTC_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this one
RTC_LOCAL_DIR="$RTC_REPO_ROOT/deploy/local"
: "${RTC_STACK_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/rtc-stack}"
: "${RTC_STACK_RUN:=$RTC_REPO_ROOT/target/stack}"

# Loopback ports of the stack's own, away from the usual defaults so a system
# Redis, Kafka or Kubernetes on this host is never touched.
: "${RTC_REDIS_PORT:=16379}"
: "${RTC_KAFKA_PORT:=19092}"
: "${RTC_ETCD_PORT:=12379}"
: "${RTC_ETCD_PEER_PORT:=12380}"
: "${RTC_APISERVER_PORT:=16443}"
: "${RTC_CONTROLLER_MANAGER_PORT:=16257}"
: "${RTC_SCHEDULER_PORT:=16259}"
# toxiproxy's HTTP API (the proxies tests create listen on ports of their own).
: "${RTC_TOXIPROXY_PORT:=18474}"
# Monitoring, on demand (stack up prometheus kafka-exporter): Prometheus's
# HTTP API and kafka-exporter's /metrics.
: "${RTC_PROMETHEUS_PORT:=19090}"
: "${RTC_KAFKA_EXPORTER_PORT:=19308}"
# Node agents (crates/node-agent): how many Nodes the stack registers.
: "${RTC_NODES:=2}"
# Pods of node I get addresses RTC_POD_IP_BASE.I.2 and up (all of 127/8 is loopback).
: "${RTC_POD_IP_BASE:=127.10}"
# Node I serves its kubelet port (/metrics/resource) on RTC_KUBELET_PORT + I.
: "${RTC_KUBELET_PORT:=17250}"
# The cargo profile of the binaries the stack's pods run (and the node agents):
# dev (the default, what the tests build) or release, for measurements in
# which the socket nodes' own cost per message matters.
: "${RTC_CARGO_PROFILE:=dev}"
# metrics-server, the metrics.k8s.io API behind the API server.
: "${RTC_METRICS_SERVER_PORT:=14443}"

export RTC_STACK_CACHE RTC_STACK_RUN RTC_REDIS_PORT RTC_KAFKA_PORT \
  RTC_ETCD_PORT RTC_ETCD_PEER_PORT RTC_APISERVER_PORT \
  RTC_CONTROLLER_MANAGER_PORT RTC_SCHEDULER_PORT RTC_TOXIPROXY_PORT RTC_NODES \
  RTC_POD_IP_BASE RTC_KUBELET_PORT RTC_METRICS_SERVER_PORT RTC_PROMETHEUS_PORT RTC_KAFKA_EXPORTER_PORT

mkdir -p "$RTC_STACK_CACHE" "$RTC_STACK_RUN"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

pidfile() { echo "$RTC_STACK_RUN/$1.pid"; }
logfile() { echo "$RTC_STACK_RUN/$1.log"; }

# alive PID: true when PID is a live process. A stopped process stays a
# zombie until init reaps it, which can take seconds on some hosts, and
# `kill -0` still sees a zombie, so read its state instead.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# is_running NAME: true when the recorded process of NAME is alive.
is_running() {
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] && alive "$(cat "$f")"
}

# spawn NAME CMD...: start CMD detached, its output in NAME's log, its pid recorded.
spawn() {
  local name="$1"; shift
  local lf; lf="$(logfile "$name")"
  : >"$lf"
  setsid "$@" >>"$lf" 2>&1 < /dev/null &
  echo $! >"$(pidfile "$name")"
}

# stop_recorded NAME [SECONDS]: stop the recorded process (TERM, then KILL
# after SECONDS, default 5).
stop_recorded() {
  local name="$1" secs="${2:-5}" f pid
  f="$(pidfile "$name")"
  if [[ ! -f "$f" ]]; then log "$name: not running"; return 0; fi
  pid="$(cat "$f")"
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 20))); do alive "$pid" || break; sleep 0.05; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    log "$name: stopped (pid $pid)"
  else
    log "$name: not running (stale pid $pid)"
  fi
  rm -f "$f"
}

# wait_for NAME SECONDS CMD...: poll CMD until it succeeds, or fail with NAME's log.
wait_for() {
  local name="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! is_running "$name"; then
      tail -n 30 "$(logfile "$name")" >&2 || true
      die "$name exited during start; its log is $(logfile "$name")"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$(logfile "$name")" >&2 || true
      die "$name not ready after ${secs}s; its log is $(logfile "$name")"
    fi
    sleep 0.2
  done
}

# need_apt PKG BINARY: install a Debian package when its binary is missing.
need_apt() {
  local pkg="$1" bin="$2"
  command -v "$bin" >/dev/null 2>&1 && return 0
  [[ -x "$bin" ]] && return 0
  command -v apt-get >/dev/null 2>&1 || die "$bin is missing and apt-get is not available: install the Debian package '$pkg'"
  log "installing Debian package $pkg"
  if [[ ! -f "$RTC_STACK_CACHE/.apt-updated" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed; install '$pkg' by hand"
    touch "$RTC_STACK_CACHE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2 \
    || die "could not install the Debian package '$pkg' (needs root and the Debian archive)"
}

# service_status NAME ADDRESS PROBE...: says whether NAME runs and answers
# PROBE; exit 0 when it does, 3 (the LSB code for "not running") otherwise.
service_status() {
  local name="$1" address="$2"
  shift 2
  if ! is_running "$name"; then
    log "$name: stopped"
    return 3
  fi
  local pid
  pid="$(cat "$(pidfile "$name")")"
  if ! "$@" >/dev/null 2>&1; then
    log "$name: running but not answering on $address (pid $pid); log $(logfile "$name")"
    return 3
  fi
  log "$name: running on $address (pid $pid); log $(logfile "$name")"
}

# service_main ARG: the start|stop|status dispatch of a service script that
# defines NAME and the functions start and status.
# shellcheck disable=SC2153 # NAME is the calling script's
service_main() {
  case "${1:-}" in
    start) start ;;
    stop) stop_recorded "$NAME" ;;
    status) status ;;
    *) die "usage: $(basename "$0") start|stop|status" ;;
  esac
}

# port_free COMPONENT PORT VARIABLE: stop with the fix when something already
# listens on 127.0.0.1:PORT (the stack never takes over a port).
port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
    local who=""
    command -v ss >/dev/null 2>&1 && who="$(ss -ltnpH "sport = :$2" 2>/dev/null | grep -o 'users:(([^)]*' | head -n1 | sed 's/users:((//')"
    die "$1: port 127.0.0.1:$2 is already in use${who:+ by $who}; stop that process or set $3 to a free port"
  fi
}

# start_component NAME URL KUBECONFIG PORT_VARIABLE PROGRAM ARGS...: start a
# control-plane component that authenticates with KUBECONFIG and serves
# /healthz on URL (HTTPS, open to anyone), unless it already runs; wait
# until it is healthy. The component's service script defines `healthy`.
start_component() {
  local name="$1" url="$2" kc="$3" port_var="$4"
  shift 4
  if is_running "$name"; then
    wait_for "$name" 60 healthy
    log "$name: already running (pid $(cat "$(pidfile "$name")")) on $url"
    return 0
  fi
  [[ -f "$kc" ]] || die "$name: $kc is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  port_free "$name" "${!port_var}" "$port_var"
  spawn "$name" "$@" \
    --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" \
    --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 \
    --secure-port "${!port_var}" \
    --leader-elect=false \
    --profiling=false \
    --v 1
  wait_for "$name" 60 healthy
  log "$name: running on $url (pid $(cat "$(pidfile "$name")")), log $(logfile "$name")"
}

# healthz URL: the component at URL answers ok on /healthz.
healthz() { [[ "$(curl -ksS --max-time 2 "$1/healthz" 2>/dev/null)" == ok ]]; }

# profile_dir PROFILE: the directory under the cargo target that PROFILE
# builds into.
profile_dir() {
  case "$1" in
    dev) echo debug ;;
    release) echo release ;;
    *) die "RTC_CARGO_PROFILE is '$1'; it must be dev or release" ;;
  esac
}
