#!/usr/bin/env bash
# Brings kubesbc up in a local kind cluster and places one test call through it.
# Needs: docker (or podman: ENGINE=podman, which also sets KIND_EXPERIMENTAL_PROVIDER), kind,
# kubectl, helm. Not run in CI (no container engine there). See docs/kind.md; the fuller
# check (Redis, 20 calls, scaling) is scripts/kind-e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kubesbc}
NS=voip
TAG=${TAG:-dev}
REGISTRY=ghcr.io/kubesbc
SIPP_IMAGE=${SIPP_IMAGE:-docker.io/ctaloi/sipp:latest}
ENGINE=${ENGINE:-docker}
if [ "$ENGINE" = podman ]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
fi

for tool in "$ENGINE" kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done

# `kind load docker-image` asks docker for the image; with podman the image goes through an
# archive instead, so docker is never called.
load() { # load <image>...
    if [ "$ENGINE" = docker ]; then
        kind load docker-image --name "$CLUSTER" "$@"
        return
    fi
    local archive
    archive=$(mktemp --suffix=.tar)
    for image in "$@"; do
        "$ENGINE" save -o "$archive" "$image"
        kind load image-archive --name "$CLUSTER" "$archive"
    done
    rm -f "$archive"
}

echo "== building images"
ENGINE=$ENGINE REGISTRY=$REGISTRY TAG=$TAG scripts/build-images.sh

echo "== creating cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi
"$ENGINE" pull "$SIPP_IMAGE" >/dev/null
load "$REGISTRY/operator:$TAG" "$REGISTRY/sbc:$TAG" "$SIPP_IMAGE"

echo "== installing the CRDs and the chart"
kubectl apply --server-side -f manifests/crds.yaml
helm upgrade --install kubesbc charts/kubesbc \
    --namespace kubesbc-system --create-namespace \
    --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set sbcImage.tag="$TAG" --set sbcImage.pullPolicy=Never --wait

echo "== deploying two sipp backends (tests/scenarios/uas.xml, in the foreground) as Service asterisk"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create configmap sipp-scenarios --from-file=uas.xml=tests/scenarios/uas.xml \
    --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f scripts/kind/backends.yaml
kubectl -n "$NS" rollout status deployment/asterisk --timeout=120s

echo "== creating the SbcCluster"
kubectl -n "$NS" apply -f examples/dispatcherset.yaml
kubectl apply -f scripts/kind/sbccluster.yaml
kubectl -n "$NS" wait --for=condition=Accepted sbccluster/edge --timeout=60s
kubectl -n "$NS" wait --for=condition=Ready sbccluster/edge --timeout=180s
kubectl -n "$NS" get sbc,dset

echo "== placing a test call through the sbc"
kubectl -n "$NS" run sipp-uac --rm -i --restart=Never --image="$SIPP_IMAGE" \
    --image-pull-policy=Never -- -sn uac "edge.$NS.svc.cluster.local:5060" -m 1 -timeout 30s -timeout_error -nostdin
echo "== test call completed"
