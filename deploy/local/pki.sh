#!/usr/bin/env bash
# The local stack's PKI and kubeconfigs, made with openssl on first start and
# kept under $RTC_STACK_RUN/pki (never in the repository).
#
#   pki.sh ensure               create what is missing, check what exists
#   pki.sh kubeconfig NAME FILE [NAMESPACE]
#                               write FILE for the client certificate NAME
#   pki.sh token-kubeconfig USER TOKEN FILE NAMESPACE
#                               write FILE for a bearer token of USER
#   pki.sh nodes N              make sure node certificates 0..N-1 exist
#                               (client and kubelet-port serving ones)
#   pki.sh metrics-server       make sure metrics-server's certificates exist
#
# What it makes, all signed for 365 days:
#   ca                   the cluster CA (client and serving certificates)
#   apiserver            serving certificate for 127.0.0.1, localhost and
#                        the in-cluster names of the kubernetes Service
#   admin                CN rtc-admin, O system:masters
#   controller-manager   CN system:kube-controller-manager
#   scheduler            CN system:kube-scheduler
#   node-rtc-node-I      CN system:node:rtc-node-I, O system:nodes (the
#                        Node authorizer and NodeRestriction see a kubelet)
#   kubelet-rtc-node-I   the serving certificate of node I's kubelet port
#                        (127.0.0.1, localhost, rtc-node-I)
#   metrics-server       CN metrics-server, its client certificate (to the
#                        API server and to the kubelet ports)
#   metrics-server-serving  its serving certificate (127.0.0.1, localhost and
#                        metrics-server.kube-system.svc, the name the API
#                        server's aggregation layer checks)
#   sa.key, sa.pub       the service-account token signing key pair
#   front-proxy-ca       the aggregation layer's request-header CA, and
#   front-proxy-client   the client certificate the API server proxies with
# A certificate that no longer verifies against the CA beside it (a PKI left
# from another stack, or half-written) stops the start with the fix to run.

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKI="$RTC_STACK_RUN/pki"
URL="https://127.0.0.1:$RTC_APISERVER_PORT"
DAYS=365

need_openssl() {
  command -v openssl >/dev/null 2>&1 || need_apt openssl openssl
}

# new_ca NAME CN
new_ca() {
  [[ -f "$PKI/$1.crt" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$((DAYS * 10))" \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null \
    || die "pki: openssl could not make the CA $1; check that openssl works ('openssl version')"
}

# new_cert CA NAME SUBJECT USAGE [SAN]: a key and a certificate signed by CA.
new_cert() {
  local ca="$1" name="$2" subject="$3" usage="$4" san="${5:-}"
  [[ -f "$PKI/$name.crt" ]] && return 0
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$ext"
  # shellcheck disable=SC2015 # die when either step fails
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/$name.key" \
    -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null \
    && openssl x509 -req -sha256 -days "$DAYS" -in "$PKI/$name.csr" \
      -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
      -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null \
    || die "pki: openssl could not sign $name; remove $PKI and start again"
  rm -f "$PKI/$name.csr" "$ext"
}

# verify CA NAME: the certificate is signed by CA and valid for another day.
verify() {
  openssl verify -CAfile "$PKI/$1.crt" "$PKI/$2.crt" >/dev/null 2>&1 \
    || die "pki: $PKI/$2.crt does not verify against $PKI/$1.crt (a stale PKI, left from another stack?); fix: deploy/local/stack down && rm -rf $PKI $RTC_STACK_RUN/etcd, then 'deploy/local/stack up'"
  openssl x509 -checkend 86400 -noout -in "$PKI/$2.crt" >/dev/null 2>&1 \
    || die "pki: $PKI/$2.crt expires within a day; fix: deploy/local/stack down && rm -rf $PKI, then 'deploy/local/stack up'"
}

node_cert() { new_cert ca "node-rtc-node-$1" "/O=system:nodes/CN=system:node:rtc-node-$1" clientAuth; }

kubelet_cert() {
  new_cert ca "kubelet-rtc-node-$1" "/O=system:nodes/CN=system:node:rtc-node-$1" serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:rtc-node-$1"
}

ensure() {
  need_openssl
  mkdir -p "$PKI" && chmod 700 "$PKI"
  (
    umask 077
    new_ca ca rtc-local-ca
    new_ca front-proxy-ca rtc-local-front-proxy-ca
    new_cert ca apiserver "/CN=kube-apiserver" serverAuth \
      "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    new_cert ca admin "/O=system:masters/CN=rtc-admin" clientAuth
    new_cert ca controller-manager "/CN=system:kube-controller-manager" clientAuth
    new_cert ca scheduler "/CN=system:kube-scheduler" clientAuth
    new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth
    if [[ ! -f "$PKI/sa.key" ]]; then
      # shellcheck disable=SC2015 # die when either step fails
      openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null \
        && openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null \
        || die "pki: openssl could not make the service-account key"
    fi
  )
  local c
  for c in apiserver admin controller-manager scheduler; do verify ca "$c"; done
  verify front-proxy-ca front-proxy-client
  [[ -s "$PKI/sa.pub" ]] || die "pki: $PKI/sa.pub is missing (a stale PKI); fix: rm -rf $PKI, then 'deploy/local/stack up'"
}

# write_kubeconfig FILE NAMESPACE USER CREDENTIAL...: a kubeconfig for the
# stack's API server, whose user USER has the given credential lines
# (`key: value`, as in a kubeconfig's user entry).
write_kubeconfig() {
  local file="$1" ns="$2" user="$3" line
  shift 3
  mkdir -p "$(dirname "$file")"
  (
    umask 077
    {
      cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rtc-local
  cluster:
    server: $URL
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
EOF
      for line in "$@"; do echo "    $line"; done
      cat <<EOF
contexts:
- name: rtc-local
  context:
    cluster: rtc-local
    user: $user
    namespace: $ns
current-context: rtc-local
EOF
    } >"$file.tmp"
  )
  mv "$file.tmp" "$file"
}

# kubeconfig NAME FILE [NAMESPACE]: a kubeconfig for client certificate NAME.
kubeconfig() {
  write_kubeconfig "$2" "${3:-default}" "$1" \
    "client-certificate-data: $(base64 -w0 <"$PKI/$1.crt")" \
    "client-key-data: $(base64 -w0 <"$PKI/$1.key")"
}

# token_kubeconfig USER TOKEN FILE NAMESPACE: a kubeconfig for a bearer token.
token_kubeconfig() { write_kubeconfig "$3" "$4" "$1" "token: $2"; }

nodes() {
  local i
  (
    umask 077
    for ((i = 0; i < $1; i++)); do node_cert "$i" && kubelet_cert "$i"; done
  )
  for ((i = 0; i < $1; i++)); do verify ca "node-rtc-node-$i" && verify ca "kubelet-rtc-node-$i"; done
}

metrics_server() {
  (
    umask 077
    new_cert ca metrics-server "/CN=metrics-server" clientAuth
    new_cert ca metrics-server-serving "/CN=metrics-server" serverAuth \
      "IP:127.0.0.1,DNS:localhost,DNS:metrics-server.kube-system.svc"
  )
  verify ca metrics-server
  verify ca metrics-server-serving
}

case "${1:-}" in
  ensure) ensure ;;
  kubeconfig) kubeconfig "$2" "$3" "${4:-default}" ;;
  token-kubeconfig) token_kubeconfig "$2" "$3" "$4" "$5" ;;
  nodes) nodes "$2" ;;
  metrics-server) metrics_server ;;
  *) die "usage: pki.sh ensure | kubeconfig NAME FILE [NAMESPACE] | token-kubeconfig USER TOKEN FILE NAMESPACE | nodes N | metrics-server" ;;
esac
