#!/usr/bin/env bash
# Builds the local stack's Go components from the Go module proxy.
#
#   build.sh control-plane   kube-apiserver, kube-controller-manager and
#                            kube-scheduler of k8s.io/kubernetes (kube/go.mod)
#   build.sh etcd            etcd (etcd/go.mod)
#   build.sh keda-crds       the KEDA CustomResourceDefinitions (config/crd of
#                            the KEDA module), for the ScaledObject of deploy/k8s
#   build.sh toxiproxy       toxiproxy's server (toxiproxy/go.mod), for the
#                            fault tests
#   build.sh metrics-server  metrics-server (metrics-server/go.mod), the
#                            metrics.k8s.io API of the nodes' resource metrics
#   build.sh prometheus      Prometheus (prometheus/go.mod), for the
#                            monitoring checks; not part of `all`
#   build.sh kafka-exporter  the stack's kafka-exporter (kafka-exporter/, a
#                            small program of this repository over sarama);
#                            not part of `all`
#   build.sh keda            the KEDA operator (keda/go.mod), for the
#                            comparison (docs/compare.md); not part of `all`
#   build.sh all             all of the above but prometheus, kafka-exporter and keda (the default)
#   build.sh path NAME       print where NAME's binary is (no build)
#
# Each component is a small Go module beside this script whose go.mod pins
# every version and whose go.sum pins every checksum; nothing downloaded is
# kept in the repository. Module downloads go to $GOMODCACHE (default
# $RTC_STACK_CACHE/go/mod), compiled packages to $GOCACHE (when it is not
# set, a cache of the stack's own, $RTC_STACK_CACHE/go-build, dropped once a
# binary is in place: a binary is built again only when a pin changes, and
# the cache would keep about 6 GiB that nothing reads), binaries to $RTC_STACK_CACHE/<component>-<key>,
# where the key is a hash of the module's go.mod and go.sum: a second run
# with unchanged pins returns at once, a changed pin builds anew.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "$HERE/lib.sh"

KUBE_VERSION="v1.37.2"
ETCD_VERSION="v3.6.16"
KEDA_VERSION="v2.21.0"
TOXIPROXY_VERSION="v2.5.0"
METRICS_SERVER_VERSION="v0.8.0"
# The module version of Prometheus 3.16.0 (its Go module is numbered v0.3MM.P
# for release 3.MM.P).
PROMETHEUS_VERSION="v0.316.0"
PROMETHEUS_RELEASE="3.16.0"

: "${GOMODCACHE:=$RTC_STACK_CACHE/go/mod}"
DROP_GOCACHE=""
if [[ -z "${GOCACHE:-}" ]]; then
  GOCACHE="$RTC_STACK_CACHE/go-build"
  DROP_GOCACHE=1
fi
export GOMODCACHE GOCACHE CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
# The module proxy only; a module it does not serve is an error, not a clone.
export GOPROXY="${RTC_GOPROXY:-https://proxy.golang.org}" GONOSUMDB="" GOTOOLCHAIN=local

need_go() {
  command -v go >/dev/null 2>&1 \
    || die "$1: no Go toolchain on PATH; install Go 1.26 or newer (https://go.dev/dl) and run 'deploy/local/stack up' again"
  local v
  v="$(go env GOVERSION)"
  v="${v#go}"
  if [[ "$(printf '%s\n%s\n' 1.26 "$v" | sort -V | head -n1)" != 1.26 ]]; then
    die "$1: Go $v is too old to build it (needs 1.26 or newer); install a newer Go and run 'deploy/local/stack up' again"
  fi
}

# key MODULE_DIR: a short hash of the module's pins.
key() { cat "$HERE/$1/go.mod" "$HERE/$1/go.sum" | sha256sum | cut -c1-12; }

out_dir() {
  case "$1" in
    control-plane) echo "$RTC_STACK_CACHE/kube-$KUBE_VERSION-$(key kube)" ;;
    etcd) echo "$RTC_STACK_CACHE/etcd-$ETCD_VERSION-$(key etcd)" ;;
    keda-crds) echo "$RTC_STACK_CACHE/keda-crds-$KEDA_VERSION" ;;
    keda) echo "$RTC_STACK_CACHE/keda-$KEDA_VERSION-$(key keda)" ;;
    toxiproxy) echo "$RTC_STACK_CACHE/toxiproxy-$TOXIPROXY_VERSION-$(key toxiproxy)" ;;
    metrics-server) echo "$RTC_STACK_CACHE/metrics-server-$METRICS_SERVER_VERSION-$(key metrics-server)" ;;
    prometheus) echo "$RTC_STACK_CACHE/prometheus-$PROMETHEUS_VERSION-$(key prometheus)" ;;
    kafka-exporter) echo "$RTC_STACK_CACHE/kafka-exporter-$(cat "$HERE/kafka-exporter/main.go" "$HERE/kafka-exporter/go.mod" "$HERE/kafka-exporter/go.sum" | sha256sum | cut -c1-12)" ;;
  esac
}

# go_build COMPONENT MODULE_DIR OUT PKG...: go build inside the wrapper module,
# with the cause of a failure turned into one line. EXTRA_LDFLAGS, when set,
# is added to the linker flags (e.g. -X to stamp a version); GO_TAGS, when
# set, are the build tags; COLD_BUILD says how long a cold build takes
# (default: several minutes).
go_build() {
  local component="$1" dir="$2" out="$3"
  shift 3
  need_go "$component"
  local log="$RTC_STACK_CACHE/build-$component.log" start=$SECONDS
  mkdir -p "$out.tmp"
  log "$component: building $* (once; a cold build takes ${COLD_BUILD:-several minutes}; log $log)"
  if ! (cd "$HERE/$dir" && go build -trimpath ${GO_TAGS:+-tags="$GO_TAGS"} -ldflags="-s -w${EXTRA_LDFLAGS:+ $EXTRA_LDFLAGS}" -o "$out.tmp/" "$@") >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    if grep -qE 'reading https?://[^ ]*: (403|404|410)|not available|not found: |unknown revision|no matching versions' "$log"; then
      die "$component: a module is not served by $GOPROXY ($(grep -oE '[a-zA-Z0-9./_-]+@v[0-9][^: ]*' "$log" | head -n1)); fix the pin in deploy/local/$dir/go.mod"
    fi
    if grep -qE 'dial tcp|no such host|connection refused|TLS handshake|module lookup disabled' "$log"; then
      die "$component: the module proxy $GOPROXY cannot be reached; check the network or set RTC_GOPROXY"
    fi
    die "$component: go build failed (see $log); fix the error above and run 'deploy/local/stack up' again"
  fi
  rm -rf "$out" && mv "$out.tmp" "$out"
  [[ -z "$DROP_GOCACHE" ]] || rm -rf "$GOCACHE"
  log "$component: built in $((SECONDS - start))s into $out"
}

build_control_plane() {
  local out; out="$(out_dir control-plane)"
  [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/kube-scheduler" ]] && return 0
  go_build control-plane kube "$out" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
}

build_etcd() {
  local out; out="$(out_dir etcd)"
  [[ -x "$out/etcd" ]] && return 0
  go_build etcd etcd "$out.bin" go.etcd.io/etcd/server/v3
  mkdir -p "$out" && mv "$out.bin/server" "$out/etcd" && rm -rf "$out.bin"
}

# toxiproxy's version string is stamped at link time, as its releases do, so
# GET /version answers the pinned release rather than "git".
build_toxiproxy() {
  local out; out="$(out_dir toxiproxy)"
  [[ -x "$out/toxiproxy-server" ]] && return 0
  EXTRA_LDFLAGS="-X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION#v}" COLD_BUILD="about a minute" \
    go_build toxiproxy toxiproxy "$out.bin" github.com/Shopify/toxiproxy/v2/cmd/server
  mkdir -p "$out" && mv "$out.bin/server" "$out/toxiproxy-server" && rm -rf "$out.bin"
}

# metrics-server's release is stamped where its Makefile stamps it (client-go's
# version package), so its logs and /version name the pinned release.
build_metrics_server() {
  local out; out="$(out_dir metrics-server)"
  [[ -x "$out/metrics-server" ]] && return 0
  EXTRA_LDFLAGS="-X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION" COLD_BUILD="6 to 11 minutes" \
    go_build metrics-server metrics-server "$out.bin" sigs.k8s.io/metrics-server/cmd/metrics-server
  mkdir -p "$out" && mv "$out.bin/metrics-server" "$out/metrics-server" && rm -rf "$out.bin"
}

# Prometheus with only the service discoveries the stack uses: Kubernetes
# (the scrape configuration of deploy/k8s) and the built-in file and static
# ones (remove_all_sd drops the cloud providers' SDKs, about half the
# build). Without the builtinassets tag there is no web UI, only the HTTP
# API, which is all the stack asks of it. The release is stamped in as its
# own builds do, so /api/v1/status/buildinfo answers it.
build_prometheus() {
  local out; out="$(out_dir prometheus)"
  [[ -x "$out/prometheus" ]] && return 0
  GO_TAGS="remove_all_sd,enable_kubernetes_sd" COLD_BUILD="about five minutes" \
    EXTRA_LDFLAGS="-X github.com/prometheus/common/version.Version=$PROMETHEUS_RELEASE -X github.com/prometheus/common/version.Branch=release -X github.com/prometheus/common/version.Revision=$PROMETHEUS_VERSION" \
    go_build prometheus prometheus "$out.bin" github.com/prometheus/prometheus/cmd/prometheus
  mkdir -p "$out" && mv "$out.bin/prometheus" "$out/prometheus" && rm -rf "$out.bin"
}

# kafka-exporter: its own source is part of the key, so a change to it
# builds anew.
build_kafka_exporter() {
  local out; out="$(out_dir kafka-exporter)"
  [[ -x "$out/kafka-exporter" ]] && return 0
  COLD_BUILD="about a minute" go_build kafka-exporter kafka-exporter "$out.bin" .
  mkdir -p "$out" && mv "$out.bin/local-kafka-exporter" "$out/kafka-exporter" && rm -rf "$out.bin"
}

# The KEDA operator of the same release as the CRDs, stamped as its own
# builds stamp it.
build_keda() {
  local out; out="$(out_dir keda)"
  [[ -x "$out/keda-operator" ]] && return 0
  COLD_BUILD="about 20 minutes (every scaler's SDK is compiled in)" \
    EXTRA_LDFLAGS="-X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}" \
    go_build keda keda "$out.bin" github.com/kedacore/keda/v2/cmd/operator
  mkdir -p "$out" && mv "$out.bin/operator" "$out/keda-operator" && rm -rf "$out.bin"
}

# The CRDs come from the KEDA module's own source zip, so the stack accepts
# exactly the ScaledObject schema of that release.
build_keda_crds() {
  local out; out="$(out_dir keda-crds)"
  compgen -G "$out/*.yaml" >/dev/null && return 0
  need_go keda-crds
  local dir
  dir="$(cd "$RTC_STACK_CACHE" && GOFLAGS='' go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" 2>/dev/null \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" && -d "$dir/config/crd/bases" ]] \
    || die "keda-crds: github.com/kedacore/keda/v2@$KEDA_VERSION is not served by $GOPROXY or has no config/crd/bases; change KEDA_VERSION in deploy/local/build.sh"
  mkdir -p "$out.tmp"
  cp "$dir"/config/crd/bases/*.yaml "$out.tmp/"
  chmod 644 "$out.tmp"/*.yaml
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "keda-crds: $(find "$out" -name '*.yaml' | wc -l) CRDs of KEDA $KEDA_VERSION in $out"
}

case "${1:-all}" in
  control-plane) build_control_plane ;;
  etcd) build_etcd ;;
  keda-crds) build_keda_crds ;;
  keda) build_keda ;;
  toxiproxy) build_toxiproxy ;;
  metrics-server) build_metrics_server ;;
  prometheus) build_prometheus ;;
  kafka-exporter) build_kafka_exporter ;;
  all) build_etcd && build_control_plane && build_keda_crds && build_toxiproxy && build_metrics_server ;;
  path)
    case "${2:-}" in
      etcd) echo "$(out_dir etcd)/etcd" ;;
      kube-apiserver | kube-controller-manager | kube-scheduler) echo "$(out_dir control-plane)/$2" ;;
      keda-crds) out_dir keda-crds ;;
      keda-operator) echo "$(out_dir keda)/keda-operator" ;;
      toxiproxy-server) echo "$(out_dir toxiproxy)/toxiproxy-server" ;;
      metrics-server) echo "$(out_dir metrics-server)/metrics-server" ;;
      prometheus) echo "$(out_dir prometheus)/prometheus" ;;
      kafka-exporter) echo "$(out_dir kafka-exporter)/kafka-exporter" ;;
      *) die "usage: build.sh path etcd|kube-apiserver|kube-controller-manager|kube-scheduler|keda-crds|keda-operator|toxiproxy-server|metrics-server|prometheus|kafka-exporter" ;;
    esac
    ;;
  *) die "usage: build.sh [control-plane|etcd|keda-crds|keda|toxiproxy|metrics-server|prometheus|kafka-exporter|all|path NAME]" ;;
esac
