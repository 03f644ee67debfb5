#!/usr/bin/env bash
# Starts each image built by deploy/images/build.sh once and asks its
# /healthz, as the pods' liveness probes do (docs/images.md):
#
#   deploy/images/smoke.sh     (or: deploy/images/build.sh smoke)
#
# Each image is unpacked from the OCI layout with umoci into a runtime
# bundle (its root filesystem and an OCI runtime config.json made from the
# image's own entrypoint, user and environment). With crun (Debian's) it
# runs the bundle as a container: its root filesystem read-only, as user
# 65532, in its own mount, PID, IPC and UTS namespaces, sharing the host's
# network so it reaches the local stack's Redis, broker and API server on
# 127.0.0.1. Where crun cannot start a container on this host, it says so
# and runs the image's entrypoint inside the unpacked root filesystem with
# chroot instead, as user 65532, with that root filesystem bound read-only
# in a mount namespace of its own: the image's own binary, libraries, users
# and certificates, and nothing of the host's. Either way it first checks
# that neither image holds a program but its binary (no shell).
#
# Needs the local stack's redis, kafka and apiserver (deploy/local/stack up
# redis kafka apiserver), with the same RTC_*_PORT variables. The admin ports
# are RTC_IMAGES_SMOKE_PORT (default 18090) and the next one.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "$HERE/../local/lib.sh"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$RTC_REPO_ROOT/Cargo.toml" | head -n1)"
: "${RTC_IMAGES_OUT:=$RTC_REPO_ROOT/target/images}"
: "${RTC_IMAGES_SMOKE_PORT:=18090}"
OCI="$RTC_IMAGES_OUT/oci"
WORK="$RTC_IMAGES_OUT/smoke"

[[ "$(id -u)" == 0 ]] || die "unpacking images and starting containers needs root here"
[[ -f "$OCI/index.json" ]] || die "no images in $OCI; build them first: ./dev images"
need_apt umoci umoci
need_apt crun crun
need_apt jq jq
KUBECONFIG_SA="$RTC_STACK_RUN/kubeconfigs/sa-rtc-load-balancer.kubeconfig"
[[ -f "$KUBECONFIG_SA" ]] || die "$KUBECONFIG_SA is missing; start the stack first: deploy/local/stack up redis kafka apiserver"
(exec 3<>"/dev/tcp/127.0.0.1/$RTC_REDIS_PORT") 2>/dev/null \
  || die "no Redis on 127.0.0.1:$RTC_REDIS_PORT; start it: deploy/local/stack up redis"
(exec 3<>"/dev/tcp/127.0.0.1/$RTC_KAFKA_PORT") 2>/dev/null \
  || die "no broker on 127.0.0.1:$RTC_KAFKA_PORT; start it: deploy/local/stack up kafka"

# The way each image is run, decided once: crun when it can start a
# container here, chroot otherwise.
RUNTIME=""

# unpack NAME: the image's runtime bundle in $WORK/NAME (rootfs, config.json).
unpack() {
  local name="$1" bundle="$WORK/$1"
  rm -rf "$bundle"
  mkdir -p "$WORK"
  umoci unpack --image "$OCI:$name-$VERSION" "$bundle" >/dev/null \
    || die "$name: umoci could not unpack $OCI:$name-$VERSION"
}

# configure NAME PORT ENV...: the bundle's config.json for a smoke run:
# read-only root, the host's network (the stack is on 127.0.0.1), the
# kubeconfig bound in read-only, ENV added to the image's own.
configure() {
  local name="$1" port="$2" bundle="$WORK/$1"
  shift 2
  local env_json
  env_json="$(printf '%s\n' "$@" | jq -R . | jq -s .)"
  jq --argjson env "$env_json" --arg kc "$KUBECONFIG_SA" '
    .root.readonly = true
    | .process.env += $env
    | .process.terminal = false
    | .linux.namespaces |= map(select(.type != "network" and .type != "user" and .type != "cgroup"))
    | .linux.uidMappings = null | .linux.gidMappings = null
    | .mounts += [{"destination": "/etc/rtc/kubeconfig", "type": "bind", "source": $kc, "options": ["rbind", "ro"]}]
  ' "$bundle/config.json" >"$bundle/config.json.tmp" && mv "$bundle/config.json.tmp" "$bundle/config.json"
  : "$port"
}

# healthz PORT: GET /healthz on 127.0.0.1:PORT answers 200.
healthz() { curl -fsS --max-time 2 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }

# run NAME PORT: start the image, wait for /healthz, stop it; fails with
# its output when it exits or does not answer within 30 s.
run() {
  local name="$1" port="$2" bundle="$WORK/$1" pid id="rtc-smoke-$1-$$" out
  out="$WORK/$name.log"
  if [[ "$RUNTIME" == crun ]]; then
    (cd "$bundle" && exec crun run --no-new-keyring "$id") >"$out" 2>&1 &
    pid=$!
  else
    # The image's entrypoint and environment, as user 65532, in its root.
    local args env_args=()
    mapfile -t args < <(jq -r '.process.args[]' "$bundle/config.json")
    mapfile -t env_args < <(jq -r '.process.env[]' "$bundle/config.json")
    mkdir -p "$bundle/rootfs/etc/rtc"
    install -m 0400 -o 65532 -g 65532 "$KUBECONFIG_SA" "$bundle/rootfs/etc/rtc/kubeconfig"
    # In a mount namespace of its own, the root filesystem bound onto
    # itself read-only, as readOnlyRootFilesystem makes it; then chroot.
    # shellcheck disable=SC2016 # the inner script's arguments, not ours
    env -i "${env_args[@]}" "$(command -v unshare)" --mount --propagation private -- \
      "$(command -v bash)" -c '"$1" --bind "$3" "$3" && "$1" -o remount,bind,ro "$3" && exec "$2" --userspec=65532:65532 "${@:3}"' \
      _ "$(command -v mount)" "$(command -v chroot)" "$bundle/rootfs" "${args[@]}" >"$out" 2>&1 &
    pid=$!
  fi
  local deadline=$((SECONDS + 30)) ok=1
  until healthz "$port"; do
    if ! alive "$pid" || ((SECONDS >= deadline)); then ok=0; break; fi
    sleep 0.2
  done
  if [[ "$RUNTIME" == crun ]]; then
    crun kill "$id" TERM >/dev/null 2>&1 || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  local i
  for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    [[ "$RUNTIME" == crun ]] && crun kill "$id" KILL >/dev/null 2>&1
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  [[ "$RUNTIME" == crun ]] && crun delete --force "$id" >/dev/null 2>&1
  : "$i"
  if ((ok == 0)); then
    tail -n 20 "$out" >&2
    die "$name: rtc/$name:$VERSION did not answer GET /healthz on 127.0.0.1:$port within 30 s ($RUNTIME); its output is $out"
  fi
  log "$name: rtc/$name:$VERSION answered GET /healthz on 127.0.0.1:$port ($RUNTIME); output $out"
}

# runtime: crun if a trivial container (the socket node's bundle, its
# binary asked for --version) starts here, else chroot.
runtime() {
  local bundle="$WORK/socket-node" probe="$WORK/probe"
  rm -rf "$probe" && cp -a "$bundle" "$probe"
  jq '.process.args = ["/usr/local/bin/socket-node", "--version"]
      | .root.readonly = true
      | .linux.namespaces |= map(select(.type != "network" and .type != "user" and .type != "cgroup"))
      | .linux.uidMappings = null | .linux.gidMappings = null' \
    "$probe/config.json" >"$probe/c.json" && mv "$probe/c.json" "$probe/config.json"
  if (cd "$probe" && timeout 20 crun run --no-new-keyring "rtc-smoke-probe-$$") >"$WORK/probe.log" 2>&1; then
    RUNTIME=crun
  else
    RUNTIME=chroot
    log "crun cannot start a container on this host ($(tail -n1 "$WORK/probe.log")); running each image's entrypoint in its unpacked root filesystem with chroot instead"
  fi
  crun delete --force "rtc-smoke-probe-$$" >/dev/null 2>&1 || true
  rm -rf "$probe"
}

lb_port="$RTC_IMAGES_SMOKE_PORT"
sn_port="$((RTC_IMAGES_SMOKE_PORT + 1))"
port_free images "$lb_port" RTC_IMAGES_SMOKE_PORT
port_free images "$sn_port" RTC_IMAGES_SMOKE_PORT

unpack load-balancer
unpack socket-node
# No shell or other program in either image: only its binary and loader.
for name in load-balancer socket-node; do
  programs="$(find "$WORK/$name/rootfs" -type f -perm -u+x ! -name '*.so*' -printf '/%P\n' | sort | tr '\n' ' ')"
  [[ "$programs" == "/usr/local/bin/$name " ]] \
    || die "$name: rtc/$name:$VERSION holds programs other than its binary: $programs"
  [[ ! -e "$WORK/$name/rootfs/bin/sh" ]] || die "$name: rtc/$name:$VERSION has a shell, /bin/sh"
done
log "both images hold no program but their binary (no shell)"
runtime

configure socket-node "$sn_port" \
  POD_NAME=smoke-socket-node \
  "REDIS_URL=redis://127.0.0.1:$RTC_REDIS_PORT" \
  "KAFKA_BOOTSTRAP=127.0.0.1:$RTC_KAFKA_PORT" \
  "PUBLIC_ADDR=127.0.0.1:$((RTC_IMAGES_SMOKE_PORT + 2))" \
  "ADMIN_ADDR=127.0.0.1:$sn_port" \
  HEARTBEAT_PREFIX=smoke:hb: RELAY_PREFIX=smoke:relay: DELIVERY_TOPIC_PREFIX=smoke.deliver.
configure load-balancer "$lb_port" \
  POD_NAME=smoke-load-balancer KUBERNETES_NAMESPACE=rtc \
  KUBECONFIG=/etc/rtc/kubeconfig \
  "REDIS_URL=redis://127.0.0.1:$RTC_REDIS_PORT" \
  "ADMIN_ADDR=127.0.0.1:$lb_port" \
  HEARTBEAT_PREFIX=smoke:hb: LEASE_NAME=rtc-smoke-load-balancer DECISION_STATE_KEY=smoke:lb:state \
  SOCKET_WORKLOAD_NAME=smoke-socket

run socket-node "$sn_port"
run load-balancer "$lb_port"
log "both images start and answer /healthz ($RUNTIME)"
