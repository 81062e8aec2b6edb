#!/usr/bin/env bash
# Brings kubesbc up in a local kind cluster and places one test call through it.
# Needs: docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind, kubectl, helm.
# Not run in CI (no container engine there). See docs/kind.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kubesbc}
NS=${NS:-voip}
TAG=${TAG:-dev}
SIPP_IMAGE=${SIPP_IMAGE:-docker.io/ctaloi/sipp:latest}
ENGINE=${ENGINE:-docker}

for tool in "$ENGINE" kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done

echo "== building images"
"$ENGINE" build -f docker/operator.Dockerfile -t "ghcr.io/kubesbc/operator:$TAG" .
"$ENGINE" build -f docker/sbc.Dockerfile -t "ghcr.io/kubesbc/sbc:$TAG" .

echo "== creating cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi
kind load docker-image --name "$CLUSTER" "ghcr.io/kubesbc/operator:$TAG" "ghcr.io/kubesbc/sbc:$TAG"
"$ENGINE" pull "$SIPP_IMAGE" >/dev/null
kind load docker-image --name "$CLUSTER" "$SIPP_IMAGE"

echo "== installing the chart"
helm upgrade --install kubesbc charts/kubesbc \
    --namespace kubesbc-system --create-namespace \
    --set image.tag="$TAG" --set image.pullPolicy=Never --wait

echo "== deploying a sipp backend (answers every call) as Service asterisk"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: asterisk}
spec:
  replicas: 2
  selector: {matchLabels: {app: asterisk}}
  template:
    metadata: {labels: {app: asterisk}}
    spec:
      containers:
        - name: sipp
          image: $SIPP_IMAGE
          imagePullPolicy: Never
          args: ["-sn", "uas", "-p", "5060", "-bg", "-trace_err"]
          ports: [{name: sip, containerPort: 5060, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: asterisk}
spec:
  selector: {app: asterisk}
  ports: [{name: sip, port: 5060, targetPort: sip, protocol: UDP}]
YAML

echo "== creating the SbcCluster"
kubectl -n "$NS" apply -f examples/dispatcherset.yaml
kubectl -n "$NS" apply -f - <<YAML
apiVersion: kubesbc.io/v1alpha1
kind: SbcCluster
metadata: {name: edge}
spec:
  replicas: 2
  image: ghcr.io/kubesbc/sbc:$TAG
  imagePullPolicy: Never
  listeners:
    - {transport: udp, port: 5060, nodePort: 30060}
    - {transport: tcp, port: 5060, nodePort: 30060}
    - {transport: ws, port: 8080, nodePort: 30080}
  service: {type: NodePort}
  dispatcherSetSelector: {matchLabels: {kubesbc.io/cluster: edge}}
YAML
kubectl -n "$NS" wait --for=condition=Accepted sbccluster/edge --timeout=60s
kubectl -n "$NS" wait --for=condition=Ready sbccluster/edge --timeout=180s
kubectl -n "$NS" get sbc,dset

echo "== placing a test call through the sbc"
kubectl -n "$NS" run sipp-uac --rm -i --restart=Never --image="$SIPP_IMAGE" \
    --image-pull-policy=Never -- -sn uac "edge.$NS.svc.cluster.local:5060" -m 1 -timeout 30s -timeout_error
echo "== test call completed"
