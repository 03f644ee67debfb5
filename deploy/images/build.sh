#!/usr/bin/env bash
# Builds the two container images, rtc/load-balancer:VERSION and
# rtc/socket-node:VERSION, as OCI images without a Docker daemon or a
# registry (docs/images.md):
#
#   deploy/images/build.sh            build both (what `./dev images` runs)
#   deploy/images/build.sh smoke      start each image once and ask its /healthz
#                                     (needs the local stack's Redis and broker)
#
# 1. The release binaries, with the pinned toolchain (rust-toolchain.toml),
#    stripped of their debug info into target/images/bin.
# 2. The runtime base, rtc/base:VERSION, assembled here from scratch: the
#    shared libraries the two binaries link (ldd; glibc and libgcc_s of the
#    host's Debian packages), the CA certificates of Debian's
#    ca-certificates, and /etc/passwd and /etc/group with the non-root user
#    65532 (nonroot). No shell, no package manager, nothing else.
# 3. Each image from its Dockerfile (bins/<binary>/Dockerfile) with
#    buildah, the base above as BASE and the host-built binary
#    (BINARY=prebuilt), since no builder image can be pulled.
# 4. Each image written as an OCI layout, $RTC_IMAGES_OUT/oci (tags
#    load-balancer-VERSION, socket-node-VERSION), and an OCI archive per
#    image; then a table of sizes and layers.
#
# buildah runs as root with vfs storage of its own under $RTC_IMAGES_OUT
# (default target/images), so no system storage is touched; `buildah
# --root "$RTC_IMAGES_OUT/storage" --storage-driver vfs images` lists what
# it holds. buildah comes from Debian (installed when missing).

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib.sh
source "$HERE/../local/lib.sh"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$RTC_REPO_ROOT/Cargo.toml" | head -n1)"
BINARIES=(load-balancer socket-node)
PACKAGES=(rtc-load-balancer rtc-socket-node)
: "${RTC_IMAGES_OUT:=$RTC_REPO_ROOT/target/images}"
STORAGE=(--root "$RTC_IMAGES_OUT/storage" --runroot "$RTC_IMAGES_OUT/run" --storage-driver vfs)
BASE_IMAGE="localhost/rtc/base:$VERSION"
OCI="$RTC_IMAGES_OUT/oci"
# Inside the build context, whatever RTC_IMAGES_OUT says.
STAGED="$RTC_REPO_ROOT/target/images/bin"

bah() { buildah "${STORAGE[@]}" "$@"; }

need_tools() {
  [[ "$(id -u)" == 0 ]] || die "buildah with vfs storage needs root here; run it as root (or use Docker: docs/images.md)"
  need_apt buildah buildah
  command -v ldd >/dev/null 2>&1 || die "ldd is missing; install the Debian package libc-bin"
  need_apt binutils strip
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || need_apt ca-certificates update-ca-certificates
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "/etc/ssl/certs/ca-certificates.crt is missing; run update-ca-certificates"
}

binaries() {
  local start=$SECONDS args=() p
  for p in "${PACKAGES[@]}"; do args+=(-p "$p"); done
  log "building the release binaries (${BINARIES[*]}) with $(cd "$RTC_REPO_ROOT" && rustc --version)"
  (cd "$RTC_REPO_ROOT" && cargo build --release --locked "${args[@]}" \
    --bin load-balancer --bin socket-node) || die "cargo build --release failed (see above)"
  log "release binaries built in $((SECONDS - start))s"
  # What the Dockerfiles' `prebuilt` stage copies (the context's only files
  # under target/, see .dockerignore): the binaries without their debug
  # info, as the `compile` stage strips them.
  mkdir -p "$STAGED"
  for p in "${BINARIES[@]}"; do
    strip --strip-debug -o "$STAGED/$p" "$RTC_REPO_ROOT/target/release/$p"
  done
}

# libraries: every shared library the binaries need, with the loader, one
# absolute path a line (as ldd resolves them on this host).
libraries() {
  local b
  for b in "${BINARIES[@]}"; do
    ldd "$STAGED/$b" \
      | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'
  done | sort -u
}

# base: the runtime base image, from scratch (see the header). Rebuilt on
# every run, so it always holds the libraries the binaries were linked to.
base() {
  local root="$RTC_IMAGES_OUT/base-rootfs" lib real ctr
  rm -rf "$root"
  mkdir -p "$root/etc/ssl/certs" "$root/home/nonroot" "$root/tmp" "$root/usr/local/bin"
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    # The real file under the path the binaries ask for (the loader and
    # libraries are symlinks on Debian).
    real="$(readlink -f "$lib")"
    mkdir -p "$root$(dirname "$lib")"
    cp "$real" "$root$lib"
    log "base: $lib (Debian package $(dpkg -S "$lib" 2>/dev/null | cut -d: -f1 | head -n1 || true))"
  done < <(libraries)
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  bah rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  ctr="$(bah from --quiet scratch)"
  bah copy --quiet "$ctr" "$root/" / >/dev/null
  bah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/bin \
    --label org.opencontainers.image.title="rtc runtime base" \
    --label org.opencontainers.image.description="glibc, libgcc_s and CA certificates of the host's Debian packages, user 65532" \
    "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  log "base: $BASE_IMAGE ($(du -sh "$root" | cut -f1) unpacked)"
}

image() {
  local name="$1" start=$SECONDS
  bah rmi -f "localhost/rtc/$name:$VERSION" >/dev/null 2>&1 || true
  (cd "$RTC_REPO_ROOT" && bah bud --quiet --pull-never \
    --build-arg "BASE=$BASE_IMAGE" --build-arg BINARY=prebuilt \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -f "bins/$name/Dockerfile" -t "localhost/rtc/$name:$VERSION" .) >/dev/null \
    || die "$name: buildah bud of bins/$name/Dockerfile failed (see above)"
  mkdir -p "$OCI"
  bah push --quiet "localhost/rtc/$name:$VERSION" "oci:$OCI:$name-$VERSION" >/dev/null \
    || die "$name: could not write the OCI layout $OCI"
  rm -f "$RTC_IMAGES_OUT/rtc-$name-$VERSION.oci.tar"
  bah push --quiet "localhost/rtc/$name:$VERSION" "oci-archive:$RTC_IMAGES_OUT/rtc-$name-$VERSION.oci.tar:rtc/$name:$VERSION" >/dev/null \
    || die "$name: could not write the OCI archive"
  log "$name: rtc/$name:$VERSION built in $((SECONDS - start))s"
}

# blob DIGEST: the path of a blob of the OCI layout.
blob() { echo "$OCI/blobs/${1%%:*}/${1#*:}"; }

# report: size (compressed layers, as a registry stores and a node pulls
# them; and the layers' tar streams unpacked) and layers of each image,
# from its OCI manifest.
report() {
  local name manifest layers compressed unpacked
  printf '%-28s %8s %14s %10s\n' IMAGE LAYERS COMPRESSED UNPACKED >&2
  for name in "${BINARIES[@]}"; do
    manifest="$(jq -r --arg t "$name-$VERSION" \
      '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OCI/index.json")"
    layers="$(jq '.layers | length' "$(blob "$manifest")")"
    compressed="$(jq '[.layers[].size] | add' "$(blob "$manifest")")"
    unpacked=0
    local digest
    for digest in $(jq -r '.layers[].digest' "$(blob "$manifest")"); do
      unpacked=$((unpacked + $(gzip -dc "$(blob "$digest")" | wc -c)))
    done
    printf '%-28s %8s %11s MB %7s MB\n' "rtc/$name:$VERSION" "$layers" \
      "$(awk -v b="$compressed" 'BEGIN{printf "%.1f", b/1e6}')" \
      "$(awk -v b="$unpacked" 'BEGIN{printf "%.1f", b/1e6}')" >&2
  done
  log "OCI layout $OCI; archives $RTC_IMAGES_OUT/rtc-*-$VERSION.oci.tar (load with 'skopeo copy oci-archive:FILE docker-daemon:rtc/NAME:$VERSION' or 'podman load -i FILE')"
}

build() {
  local start=$SECONDS
  need_tools
  command -v jq >/dev/null 2>&1 || need_apt jq jq
  binaries
  base
  local name
  for name in "${BINARIES[@]}"; do image "$name"; done
  # The `prebuilt` stages' intermediate images.
  bah rmi --prune >/dev/null 2>&1 || true
  report
  log "both images built in $((SECONDS - start))s"
}

case "${1:-build}" in
  build) build ;;
  smoke) bash "$HERE/smoke.sh" ;;
  *) die "usage: deploy/images/build.sh [build|smoke]" ;;
esac
