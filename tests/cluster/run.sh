#!/usr/bin/env bash
# The manifests on a real Kubernetes: deploys k8s/jetstream (what `skaffold dev` deploys) and then
# k8s/streaming on the single-node cluster of scripts/cluster, as a user would, and runs the
# end-to-end tests of tests/tests/e2e/kubernetes.rs against each:
#
#   - the namespace is labelled for the restricted Pod Security Standard (enforced), so admission
#     checks every pod's security context; the JWT secret is made as the README says;
#   - `kubectl apply -k` of the variant, with only what skaffold itself changes (our images, here
#     by digest from the registry `scripts/images push` pushed them to) and what the test needs
#     (NodePort Services to reach orders and NATS from the host, and a short expiration window);
#   - every Deployment rolls out and every pod becomes Ready through its own readiness probe;
#   - then, through the Services: an order expires and a paid one stays complete; the expiration
#     pod deleted mid-run loses no job; a rolling restart of orders loses no order answered 201;
#     the broker's pod replaced keeps its store on its volume.
#
# Needs the images pushed (scripts/images push, which writes .stack/images/pushed). Leaves the
# cluster up (scripts/cluster down stops it) with the last variant deployed.
#
#   tests/cluster/run.sh [VARIANT...]     (default: jetstream streaming)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
NAMESPACE=ingress-nginx
WINDOW=15
ORDERS_PORT=30300 NATS_PORT=30422 NATS_MONITOR_PORT=30822
variants=("$@")
((${#variants[@]})) || variants=(jetstream streaming)
case ${variants[0]} in -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

fail() { echo "cluster test: $*" >&2; exit 1; }
[[ -s .stack/images/pushed ]] || fail "no images pushed yet: scripts/images build, then scripts/images push"
image_of() { sed -n "s/^$1=//p" .stack/images/pushed; }

started=$SECONDS
scripts/stack up registry >/dev/null
scripts/cluster up
eval "$(scripts/cluster env)"
echo "cluster up after $((SECONDS - started)) s"

# What went wrong, from the cluster's side.
explain() {
  kubectl -n "$NAMESPACE" get deployments,pods -o wide >&2 || true
  kubectl -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -25 >&2 || true
  local pod
  for pod in $(kubectl -n "$NAMESPACE" get pods -o name 2>/dev/null); do
    echo "--- $pod" >&2
    kubectl -n "$NAMESPACE" logs "$pod" --tail=15 >&2 2>&1 || true
  done
  # The path from the host to a pod: the Services' endpoints, kube-proxy's rules for the test's
  # NodePorts, and the components themselves (each one's state and the end of kube-proxy's log).
  echo "--- endpoint slices" >&2
  kubectl -n "$NAMESPACE" get endpointslices -o wide >&2 2>&1 || true
  echo "--- iptables (nat) rules naming the test's NodePorts" >&2
  iptables-save -t nat 2>/dev/null | grep -E "nats-test-nodeport|orders-test-nodeport|:($ORDERS_PORT|$NATS_PORT|$NATS_MONITOR_PORT)\b" | head -40 >&2 || true
  echo "--- scripts/cluster status" >&2
  scripts/cluster status >&2 2>&1 || true
  echo "--- kube-proxy's log (last 30 lines)" >&2
  tail -n 30 .stack/k8s/logs/kube-proxy.log >&2 2>/dev/null || true
}

deploy() {
  local variant=$1
  local overlay=$ROOT/.stack/k8s/test/$variant
  kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true --timeout=180s >/dev/null
  kubectl create namespace "$NAMESPACE" >/dev/null
  kubectl label namespace "$NAMESPACE" >/dev/null \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
    pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/warn-version=latest
  JWT_KEY=$(openssl rand -hex 24)
  kubectl -n "$NAMESPACE" create secret generic jwt-secret --from-literal=JWT_KEY="$JWT_KEY" >/dev/null

  # The variant as skaffold would deploy it (images replaced by what was built), plus what only
  # the test needs. Nothing of the variant's own files is changed.
  rm -rf "$overlay" && mkdir -p "$overlay"
  local orders expiration
  orders=$(image_of orders) expiration=$(image_of expiration)
  cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NAMESPACE
resources:
  - $(realpath --relative-to="$overlay" "$ROOT/k8s/$variant")
  - test-nodeports.yaml
images:
  - name: orders
    newName: ${orders%@*}
    digest: ${orders#*@}
  - name: expiration
    newName: ${expiration%@*}
    digest: ${expiration#*@}
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: orders-depl
      spec:
        template:
          spec:
            containers:
              - name: orders
                env:
                  - name: EXPIRATION_WINDOW_SECONDS
                    value: "$WINDOW"
EOF
  cat >"$overlay/test-nodeports.yaml" <<EOF
# Only for the test: orders and the broker reached from the host through kube-proxy.
apiVersion: v1
kind: Service
metadata:
  name: orders-test-nodeport
spec:
  type: NodePort
  selector:
    app: orders
  ports:
    - name: http
      port: 3000
      targetPort: 3000
      nodePort: $ORDERS_PORT
---
apiVersion: v1
kind: Service
metadata:
  name: nats-test-nodeport
spec:
  type: NodePort
  selector:
    app: nats
  ports:
    - name: client
      port: 4222
      targetPort: 4222
      nodePort: $NATS_PORT
    - name: monitor
      port: 8222
      targetPort: 8222
      nodePort: $NATS_MONITOR_PORT
EOF
  local applied
  applied=$(kubectl apply -k "$overlay" 2>&1) || { echo "$applied" >&2; fail "kubectl apply -k k8s/$variant failed"; }
  echo "$applied"
  # With the namespace enforcing the profile, a pod it forbids is refused by admission: the
  # warning comes with the Deployment, and its ReplicaSet never gets a pod.
  if grep -qi "violate PodSecurity" <<<"$applied"; then
    fail "k8s/$variant: a pod would violate the restricted Pod Security Standard (above)"
  fi
  local deployment
  for deployment in $(kubectl -n "$NAMESPACE" get deployments -o name); do
    kubectl -n "$NAMESPACE" rollout status "$deployment" --timeout=300s ||
      { explain; fail "k8s/$variant: $deployment did not roll out"; }
  done
  kubectl -n "$NAMESPACE" wait --for=condition=Ready pod --all --timeout=120s >/dev/null ||
    { explain; fail "k8s/$variant: not every pod became Ready"; }
  kubectl -n "$NAMESPACE" get pods
}

for variant in "${variants[@]}"; do
  [[ -d k8s/$variant ]] || fail "no variant k8s/$variant"
  echo "== k8s/$variant on Kubernetes"
  start=$SECONDS
  deploy "$variant"
  echo "k8s/$variant: every Deployment rolled out, every pod Ready, in $((SECONDS - start)) s"
  transport=$(kubectl -n "$NAMESPACE" get deployment orders-depl \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="NATS_TRANSPORT")].value}')
  start=$SECONDS
  CLUSTER_ORDERS_URL=http://127.0.0.1:$ORDERS_PORT CLUSTER_NATS_URL=nats://127.0.0.1:$NATS_PORT \
    CLUSTER_TRANSPORT=$transport CLUSTER_NAMESPACE=$NAMESPACE CLUSTER_JWT_KEY=$JWT_KEY \
    CLUSTER_WINDOW_SECONDS=$WINDOW \
    cargo test -q -p e2e --all-features --locked --test e2e kubernetes -- --ignored --nocapture --test-threads 1 ||
    { explain; fail "k8s/$variant: the end-to-end tests failed"; }
  echo "k8s/$variant: end-to-end tests passed in $((SECONDS - start)) s"
done
echo "cluster test: every variant passed in $((SECONDS - started)) s"
