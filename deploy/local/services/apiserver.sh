#!/usr/bin/env bash
# The local stack's Kubernetes API server (rtc-apiserver, see
# deploy/local/apiserver/README.md).
#
#   apiserver.sh start|stop|status
#
# start builds the server if needed (cached), starts etcd if it is not
# running, serves HTTPS on 127.0.0.1:$RTC_APISERVER_PORT, waits for /readyz and
# writes $RTC_STACK_RUN/kubeconfig (context rtc-local, namespace default):
# the cluster's CA certificate is embedded, the user is a static bearer token.
# The CA, serving certificate and token live in $RTC_STACK_RUN/apiserver and
# are kept across restarts, so a kubeconfig stays valid.
# stop stops the API server only; etcd has its own script.
# status exits 0 when running and ready, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=apiserver
DIR="$RTC_STACK_RUN/apiserver"
CA="$DIR/certs/ca.crt"
URL="https://127.0.0.1:$RTC_APISERVER_PORT"
KUBECONFIG_FILE="$RTC_STACK_RUN/kubeconfig"

token() { cat "$DIR/token"; }

api() { # api PATH [curl args...]: an authenticated request
  local path="$1"; shift
  curl -fsS --max-time 5 --cacert "$CA" -H "Authorization: Bearer $(token)" "$@" "$URL$path"
}

ready() { [[ -f "$CA" ]] && [[ "$(api /readyz 2>/dev/null)" == ok ]]; }

ensure_token() {
  mkdir -p "$DIR" && chmod 700 "$DIR"
  if [[ ! -s "$DIR/token" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/token"
  fi
  # kube-apiserver's token file format: token,user,uid,"groups".
  printf '%s,rtc-admin,rtc-admin,"system:masters"\n' "$(token)" >"$DIR/tokens.csv"
  chmod 600 "$DIR/token" "$DIR/tokens.csv"
}

write_kubeconfig() {
  local tmp="$KUBECONFIG_FILE.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rtc-local
  cluster:
    server: $URL
    certificate-authority-data: $(base64 -w0 <"$CA")
users:
- name: rtc-admin
  user:
    token: $(token)
contexts:
- name: rtc-local
  context:
    cluster: rtc-local
    user: rtc-admin
    namespace: default
current-context: rtc-local
EOF
  )
  mv "$tmp" "$KUBECONFIG_FILE"
}

# An etcd without watch progress requests (older than 3.5.13, or a 3.4 older
# than 3.4.31) cannot serve watch-list streams; turn the feature off then,
# so plain watches from resourceVersion "0" keep working.
feature_gates() {
  local v
  v="$(curl -fsS --max-time 2 "http://127.0.0.1:$RTC_ETCD_PORT/version" 2>/dev/null \
    | sed -n 's/.*"etcdserver":"\([0-9.]*\)".*/\1/p')"
  [[ -n "$v" ]] || return 0
  local need="3.5.13"
  [[ "$v" == 3.4.* ]] && need="3.4.31"
  if [[ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | head -n1)" != "$need" ]]; then
    log "etcd $v has no watch progress requests: starting with WatchList=false"
    echo "--feature-gates=WatchList=false"
  fi
}

report() {
  log "apiserver: listening on $URL (pid $(cat "$(pidfile "$NAME")"))"
  log "apiserver: kubeconfig $KUBECONFIG_FILE (context rtc-local), log $(logfile "$NAME")"
}

start() {
  if is_running "$NAME"; then
    wait_for "$NAME" 60 ready
    write_kubeconfig
    report
    return 0
  fi
  if curl -sk --max-time 2 -o /dev/null "$URL/healthz" 2>/dev/null; then
    die "something this stack did not start already answers on $URL; stop it or set RTC_APISERVER_PORT"
  fi
  "$RTC_LOCAL_DIR/apiserver/build.sh" apiserver
  "$RTC_LOCAL_DIR/services/etcd.sh" start
  ensure_token
  local gates
  gates="$(feature_gates)"
  # shellcheck disable=SC2086 # $gates is empty or one flag
  spawn "$NAME" "$RTC_STACK_CACHE/bin/rtc-apiserver" \
    --bind-address 127.0.0.1 \
    --secure-port "$RTC_APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$RTC_ETCD_PORT" \
    --cert-dir "$DIR/certs" \
    --token-file "$DIR/tokens.csv" \
    $gates
  wait_for "$NAME" 90 ready
  # The server creates default, kube-system, kube-public and kube-node-lease
  # before it reports ready; make sure anyway, e.g. after an etcd wipe.
  if ! api /api/v1/namespaces/default -o /dev/null 2>/dev/null; then
    api /api/v1/namespaces -o /dev/null -X POST -H 'Content-Type: application/json' \
      -d '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default"}}' \
      || die "could not create the namespace 'default'"
  fi
  write_kubeconfig
  report
}

status() {
  service_status "$NAME" "$URL" ready || return
  log "apiserver: kubeconfig $KUBECONFIG_FILE"
}

service_main "$@"
