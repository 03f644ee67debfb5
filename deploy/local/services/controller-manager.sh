#!/usr/bin/env bash
# kube-controller-manager of Kubernetes (deploy/local/kube/go.mod), with the
# controllers the project's workloads depend on:
#   deployment, replicaset, statefulset, garbage-collector, namespace,
#   serviceaccount, serviceaccount-token, horizontal-pod-autoscaler,
#   disruption, endpointslice, node-lifecycle, root-ca-certificate-publisher
#
#   controller-manager.sh start|stop|status
#
# It authenticates with its own client certificate (CN
# system:kube-controller-manager) and uses one service account per
# controller, as in a kubeadm cluster. Its health port is
# 127.0.0.1:$RTC_CONTROLLER_MANAGER_PORT (HTTPS, /healthz open to anyone).
# status exits 0 when running and healthy, 3 otherwise (service_status).

# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=controller-manager
PKI="$RTC_STACK_RUN/pki"
URL="https://127.0.0.1:$RTC_CONTROLLER_MANAGER_PORT"
KC="$RTC_STACK_RUN/kubeconfigs/controller-manager.kubeconfig"
CONTROLLERS=deployment-controller,replicaset-controller,statefulset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,horizontal-pod-autoscaler-controller,disruption-controller,endpointslice-controller,node-lifecycle-controller,root-ca-certificate-publisher-controller

healthy() { healthz "$URL"; }

start() {
  start_component "$NAME" "$URL" "$KC" RTC_CONTROLLER_MANAGER_PORT \
    "$("$RTC_LOCAL_DIR/build.sh" path kube-controller-manager)" \
    --controllers "$CONTROLLERS" \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --concurrent-deployment-syncs 5 \
    --concurrent-replicaset-syncs 5 \
    --horizontal-pod-autoscaler-sync-period 5s \
    --node-monitor-grace-period 40s
}

status() { service_status "$NAME" "$URL" healthy; }

service_main "$@"
