#!/usr/bin/env bash
# kube-apiserver of Kubernetes (the release pinned in deploy/local/kube/go.mod).
#
#   apiserver.sh start|stop|status
#
# start builds the control plane if needed (cached), makes the PKI on first
# start (pki.sh), starts etcd if it is not running, serves HTTPS on
# 127.0.0.1:$RTC_APISERVER_PORT with --authorization-mode=Node,RBAC and the
# default admission plugins plus NodeRestriction, waits for /readyz, and writes
# the admin kubeconfig $RTC_STACK_RUN/kubeconfig (context rtc-local, client
# certificate in group system:masters) and the kubeconfigs of the other
# components under $RTC_STACK_RUN/kubeconfigs. The service-account kubeconfigs
# of deploy/k8s/base/01-rbac.yaml are written by accounts.sh once the controllers
# run. stop stops the API server only; etcd has its own script.
# Writes named in deploy/local/audit-policy.yaml (/scale, workload and pod
# patches, Leases) are recorded in the audit log $RTC_STACK_RUN/audit.log
# (JSON lines, one event per request), written before the response is sent,
# so a test reads a write's event as soon as its request returns. A restart
# appends to it; `deploy/local/stack up` begins a new one (see there).
# status exits 0 when running and ready, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=apiserver
PKI="$RTC_STACK_RUN/pki"
URL="https://127.0.0.1:$RTC_APISERVER_PORT"
KUBECONFIG_FILE="$RTC_STACK_RUN/kubeconfig"
AUDIT_LOG="$RTC_STACK_RUN/audit.log"

ready() {
  [[ "$(curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$URL/readyz" 2>/dev/null)" == ok ]]
}

kubeconfigs() {
  local pki="$RTC_LOCAL_DIR/pki.sh"
  bash "$pki" kubeconfig admin "$KUBECONFIG_FILE"
  bash "$pki" kubeconfig controller-manager "$RTC_STACK_RUN/kubeconfigs/controller-manager.kubeconfig"
  bash "$pki" kubeconfig scheduler "$RTC_STACK_RUN/kubeconfigs/scheduler.kubeconfig"
}

# accounts: the namespace and service accounts of deploy/k8s, the KEDA
# CRDs, and a
# kubeconfig per service account (a bound token of 24 h), so a test or a
# person can act exactly as the load-balancer would in a cluster.
accounts() {
  local k8s="$RTC_REPO_ROOT/deploy/k8s/base" sa ns token file
  command -v kubectl >/dev/null 2>&1 \
    || die "apiserver: kubectl is not on PATH; install kubectl 1.32 or newer and run 'deploy/local/stack up' again"
  KUBECONFIG="$KUBECONFIG_FILE" kubectl apply --server-side --force-conflicts --field-manager rtc-stack \
    -f "$k8s/00-namespace.yaml" -f "$k8s/01-rbac.yaml" >/dev/null \
    || die "apiserver: could not apply deploy/k8s/base/00-namespace.yaml and 01-rbac.yaml; see the error above"
  # The KEDA CRDs, so the ScaledObject of deploy/k8s is accepted (there is
  # no KEDA operator: nothing acts on it).
  "$RTC_LOCAL_DIR/build.sh" keda-crds
  KUBECONFIG="$KUBECONFIG_FILE" kubectl apply --server-side --force-conflicts --field-manager rtc-stack \
    -f "$("$RTC_LOCAL_DIR/build.sh" path keda-crds)" >/dev/null \
    || die "apiserver: could not install the KEDA CRDs from $("$RTC_LOCAL_DIR/build.sh" path keda-crds); see the error above"
  wait_for "$NAME" 30 crd_established scaledobjects.keda.sh
  while read -r ns sa; do
    [[ -n "$sa" ]] || continue
    token="$(KUBECONFIG="$KUBECONFIG_FILE" kubectl create token "$sa" -n "$ns" --duration 24h)" \
      || die "apiserver: could not get a token for service account $ns/$sa"
    file="$RTC_STACK_RUN/kubeconfigs/sa-$ns-$sa.kubeconfig"
    bash "$RTC_LOCAL_DIR/pki.sh" token-kubeconfig "system:serviceaccount:$ns:$sa" "$token" "$file" "$ns"
    log "apiserver: service account $ns/$sa: kubeconfig $file"
  done < <(KUBECONFIG="$KUBECONFIG_FILE" kubectl get serviceaccounts -n rtc -l app.kubernetes.io/part-of=rtc \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}{"\n"}{end}')
}

crd_established() {
  [[ "$(KUBECONFIG="$KUBECONFIG_FILE" kubectl get crd "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]]
}

report() {
  log "apiserver: listening on $URL (pid $(cat "$(pidfile "$NAME")"))"
  log "apiserver: kubeconfig $KUBECONFIG_FILE (context rtc-local), log $(logfile "$NAME"), audit log $AUDIT_LOG"
}

start() {
  "$RTC_LOCAL_DIR/build.sh" control-plane
  bash "$RTC_LOCAL_DIR/pki.sh" ensure
  if is_running "$NAME"; then
    wait_for "$NAME" 60 ready
    kubeconfigs
    accounts
    report
    return 0
  fi
  port_free apiserver "$RTC_APISERVER_PORT" RTC_APISERVER_PORT
  bash "$RTC_LOCAL_DIR/services/etcd.sh" start
  spawn "$NAME" "$("$RTC_LOCAL_DIR/build.sh" path kube-apiserver)" \
    --advertise-address 127.0.0.1 \
    --bind-address 127.0.0.1 \
    --secure-port "$RTC_APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$RTC_ETCD_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type none \
    --audit-policy-file "$RTC_LOCAL_DIR/audit-policy.yaml" \
    --audit-log-path "$AUDIT_LOG" \
    --audit-log-format json \
    --audit-log-mode blocking \
    --audit-log-maxsize 1024 \
    --audit-log-maxbackup 1 \
    --profiling=false \
    --v 1
  # A cold start installs the RBAC bootstrap roles and priority levels first.
  wait_for "$NAME" 120 ready
  kubeconfigs
  accounts
  report
}

status() {
  service_status "$NAME" "$URL" ready || return
  log "apiserver: kubeconfig $KUBECONFIG_FILE"
}

service_main "$@"
