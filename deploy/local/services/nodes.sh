#!/usr/bin/env bash
# The stack's Nodes: $RTC_NODES node agents (crates/node-agent), named
# rtc-node-0, rtc-node-1, ..., each running the pods the scheduler binds to
# it as local processes (see crates/node-agent/README.md).
#
#   nodes.sh start|stop|status
#
# start builds the agent and the binaries pods run (cargo, profile
# $RTC_CARGO_PROFILE, dev unless set; the workspace's one target
# directory), makes each node's client certificate (CN system:node:<name>,
# O system:nodes), starts one agent per node, and waits until every Node is
# Ready. Agents already running are kept if they are of the same profile;
# start stops with a message otherwise. Pod IPs of rtc-node-I are
# $RTC_POD_IP_BASE.I.2 and up (default 127.10.I.2); pod logs are under
# $RTC_STACK_RUN/nodes/<node>/pods. Pod cgroups are under a parent named
# after this stack's run directory, so two stacks never touch each other's.
# Node I serves its kubelet port, /metrics/resource for metrics-server, on
# https://127.0.0.1:$((RTC_KUBELET_PORT + I)) with the serving certificate
# kubelet-rtc-node-I and client certificates of the cluster CA; its Node
# advertises that port in status.daemonEndpoints.
# Images the agents run: rtc/socket-node and rtc/load-balancer (this
# workspace's binaries) and rtc/python (python3, for tests).
# status exits 0 when every agent runs and its Node is Ready, 3 otherwise.

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=nodes
TARGET="${CARGO_TARGET_DIR:-$RTC_REPO_ROOT/target}"
BIN="$TARGET/$(profile_dir "$RTC_CARGO_PROFILE")"
AGENT="$BIN/rtc-node-agent"
ADMIN="$RTC_STACK_RUN/kubeconfig"
CGROUP_PARENT="rtc-stack-$(printf '%s' "$RTC_STACK_RUN" | sha256sum | cut -c1-8)"

node_name() { echo "rtc-node-$1"; }

# node_ready NAME: the Node's Ready condition is True.
node_ready() {
  [[ "$(KUBECONFIG="$ADMIN" kubectl get node "$1" --request-timeout 3s \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

all_ready() {
  local i
  for ((i = 0; i < RTC_NODES; i++)); do
    is_running "$(node_name "$i")" && node_ready "$(node_name "$i")" || return 1
  done
}

build() {
  command -v cargo >/dev/null 2>&1 || die "nodes: cargo is not on PATH; install Rust with rustup and run 'deploy/local/stack up' again"
  log "nodes: building the node agent and the binaries pods run (cargo build, profile $RTC_CARGO_PROFILE)"
  (cd "$RTC_REPO_ROOT" && cargo build --locked --quiet --profile "$RTC_CARGO_PROFILE" -p rtc-node-agent -p rtc-socket-node -p rtc-load-balancer --bins) \
    || die "nodes: cargo build of rtc-node-agent, rtc-socket-node or rtc-load-balancer failed (see above); fix it and run 'deploy/local/stack up' again"
}

# images: the agent's --image flags, one image name to program each.
images() {
  local python
  python="$(command -v python3 || true)"
  echo "--image rtc/socket-node=$BIN/socket-node --image rtc/load-balancer=$BIN/load-balancer"
  [[ -n "$python" ]] && echo "--image rtc/python=$python"
}

# agent_exe NAME: the program the running agent NAME was started from.
agent_exe() { readlink "/proc/$(cat "$(pidfile "$1")")/exe" 2>/dev/null || true; }

# running_profile_matches NAME: the running agent NAME is this profile's build
# (its pods run the same profile's binaries).
running_profile_matches() {
  local exe
  exe="$(agent_exe "$1")"
  [[ "${exe% (deleted)}" == "$(readlink -f "$AGENT")" ]]
}

start() {
  [[ -f "$ADMIN" ]] || die "nodes: $ADMIN is missing, so the API server was not started; start it first: deploy/local/stack up apiserver"
  build
  bash "$RTC_LOCAL_DIR/pki.sh" nodes "$RTC_NODES"
  local i name kc map port
  read -ra map <<<"$(images | tr '\n' ' ')"
  for ((i = 0; i < RTC_NODES; i++)); do
    name="$(node_name "$i")"
    if is_running "$name"; then
      running_profile_matches "$name" || die "nodes: $name runs $(agent_exe "$name"), not $AGENT (RTC_CARGO_PROFILE=$RTC_CARGO_PROFILE); stop the nodes first: deploy/local/stack down nodes"
      continue
    fi
    port=$((RTC_KUBELET_PORT + i))
    port_free "$name" "$port" RTC_KUBELET_PORT
    kc="$RTC_STACK_RUN/kubeconfigs/node-$name.kubeconfig"
    bash "$RTC_LOCAL_DIR/pki.sh" kubeconfig "node-$name" "$kc"
    mkdir -p "$RTC_STACK_RUN/nodes/$name"
    spawn "$name" "$AGENT" \
      --kubeconfig "$kc" \
      --node-name "$name" \
      --pod-ip-prefix "$RTC_POD_IP_BASE.$i" \
      --cgroup-parent "$CGROUP_PARENT" \
      --state-dir "$RTC_STACK_RUN/nodes/$name" \
      --kubelet-port "$port" \
      --tls-cert-file "$RTC_STACK_RUN/pki/kubelet-$name.crt" \
      --tls-private-key-file "$RTC_STACK_RUN/pki/kubelet-$name.key" \
      --client-ca-file "$RTC_STACK_RUN/pki/ca.crt" \
      "${map[@]}"
  done
  for ((i = 0; i < RTC_NODES; i++)); do
    name="$(node_name "$i")"
    wait_for "$name" 60 node_ready "$name"
    log "nodes: $name Ready (pid $(cat "$(pidfile "$name")"), pods $RTC_POD_IP_BASE.$i.0/24), log $(logfile "$name")"
  done
}

stop() {
  local f d
  for f in "$RTC_STACK_RUN"/rtc-node-*.pid; do
    [[ -f "$f" ]] || continue
    # An agent stops its pods first (SIGTERM, SIGKILL 5 s later), then exits.
    stop_recorded "$(basename "$f" .pid)" 30
  done
  # The agents remove their pods' cgroups; the empty parents go here (rmdir
  # removes only empty directories, so a cgroup still in use stays).
  for d in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

status() {
  local i name pids=() bad=0
  for ((i = 0; i < RTC_NODES; i++)); do
    name="$(node_name "$i")"
    if is_running "$name"; then
      pids+=("$(cat "$(pidfile "$name")")")
      node_ready "$name" || { log "$name: running but its Node is not Ready"; bad=1; }
    else
      log "$name: stopped"
      bad=1
    fi
  done
  ((bad == 0)) || return 3
  log "nodes: ${RTC_NODES} Ready (pids ${pids[*]}); logs $RTC_STACK_RUN/rtc-node-*.log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  pids)
    for ((i = 0; i < RTC_NODES; i++)); do
      if is_running "$(node_name "$i")"; then cat "$(pidfile "$(node_name "$i")")"; fi
    done | paste -sd,
    ;;
  *) die "usage: nodes.sh start|stop|status|pids" ;;
esac
