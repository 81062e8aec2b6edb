#!/usr/bin/env bash
# End to end on a local kind cluster (needs docker, kind, kubectl, helm and sipp on the host):
# creates the cluster from kind-config.yaml, builds and loads both images, installs the
# chart with Redis, runs two sipp backends, applies the examples, waits for Ready, places 20
# calls from the host through the mapped port, scales the SbcCluster to 3 and does it again.
# Every manifest it applies is validated in CI by scripts/chart-check.sh. See docs/kind.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kubesbc}
NS=voip
TAG=${TAG:-e2e}
REGISTRY=ghcr.io/kubesbc
SIPP_IMAGE=docker.io/ctaloi/sipp:latest

for tool in docker kind kubectl helm sipp; do
    command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is required" >&2; exit 1; }
done

echo "== cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi

echo "== images"
ENGINE=docker REGISTRY=$REGISTRY TAG=$TAG scripts/build-images.sh
docker pull "$SIPP_IMAGE" >/dev/null
kind load docker-image --name "$CLUSTER" "$REGISTRY/operator:$TAG" "$REGISTRY/sbc:$TAG" "$SIPP_IMAGE"

echo "== CRDs and chart (with Redis)"
kubectl apply --server-side -f manifests/crds.yaml
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install kubesbc charts/kubesbc --namespace kubesbc-system --create-namespace \
    --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set sbcImage.tag="$TAG" --set sbcImage.pullPolicy=Never \
    --set redis.enabled=true --set redis.urlSecretNamespace="$NS" --wait

echo "== backends"
kubectl -n "$NS" create configmap sipp-scenarios --from-file=uas.xml=tests/scenarios/uas.xml \
    --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f scripts/kind/backends.yaml
kubectl -n "$NS" rollout status deployment/asterisk --timeout=120s

echo "== examples"
kubectl -n "$NS" apply -f examples/secret.yaml -f examples/dispatcherset.yaml \
    -f examples/dispatcherset-static.yaml -f examples/tenantthrottle.yaml
kubectl apply -f scripts/kind/sbccluster.yaml

calls() { # calls <replicas>
    kubectl -n "$NS" wait --for=condition=Accepted sbccluster/edge --timeout=60s
    kubectl -n "$NS" wait --for=jsonpath='{.status.readyReplicas}'="$1" sbccluster/edge --timeout=300s
    kubectl -n "$NS" wait --for=condition=Ready sbccluster/edge --timeout=300s
    echo "== 20 calls through 127.0.0.1:5060 with $1 sbc pods"
    sipp -sn uac 127.0.0.1:5060 -m 20 -r 5 -l 10 -d 1000 -timeout 60s -timeout_error \
        -trace_stat -stf "/tmp/kind-e2e-$1.csv" -nostdin
    echo "== 20 calls completed"
}

calls 2
kubectl -n "$NS" scale sbccluster/edge --replicas 3
calls 3
kubectl -n "$NS" get sbc,dset,tt,acl
