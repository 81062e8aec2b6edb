#!/usr/bin/env bash
# End to end on a local kind cluster, the way a user runs kubesbc (needs docker, kind, kubectl,
# helm and sipp on the host). See docs/kind.md.
#  1. creates the cluster from kind-config.yaml (host 127.0.0.1:5060, UDP and TCP, is NodePort
#     30060 of the worker, where the sbc pods run);
#  2. builds both images (scripts/build-images.sh) and loads them, and sipp's, into kind;
#  3. installs the CRDs (scripts/upgrade-crds.sh) and the chart with its Redis (the URL Secret in
#     namespace voip);
#  4. runs two sipp backends as the `asterisk` Deployment and Service (scripts/kind/backends.yaml:
#     in the foreground, tests/scenarios/uas.xml, which answers the OPTIONS probes);
#  5. applies examples/ as they are, then points the SbcCluster at the chart's Redis
#     (scripts/kind/redis.patch.yaml: the example names no Redis, so it works without one);
#  6. waits for Accepted, every replica ready, Ready and both backends up; places 20 calls from
#     the host through 127.0.0.1:5060 (scripts/kind/uac.xml: the signature and tenant headers
#     the examples ask for) and checks them: sipp counts 20 successful and 0 failed calls, and
#     the sbc pods' dispatcher listings (`sbc ctl dispatcher list`) count calls sent to each
#     of the two backends;
#  7. scales the SbcCluster to 3 (`kubectl scale`), does 6 again, prints kubectl get sbc,dset,tt,acl.
# It stops at the first failure. scripts/chart-check.sh (CI) validates every manifest it
# applies: examples/ (with the patch) and scripts/kind/.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kubesbc}
NS=voip
TAG=${TAG:-e2e}
REGISTRY=ghcr.io/kubesbc
SIPP_IMAGE=docker.io/ctaloi/sipp:latest
OUT=$(mktemp -d "${TMPDIR:-/tmp}/kind-e2e.XXXXXX")

for tool in docker kind kubectl helm sipp; do
    command -v "$tool" >/dev/null || { echo "kind-e2e: $tool is required" >&2; exit 1; }
done
fail() { echo "kind-e2e: FAIL: $*" >&2; exit 1; }

echo "== cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi

echo "== images"
ENGINE=docker REGISTRY=$REGISTRY TAG=$TAG scripts/build-images.sh
docker pull "$SIPP_IMAGE" >/dev/null
kind load docker-image --name "$CLUSTER" "$REGISTRY/operator:$TAG" "$REGISTRY/sbc:$TAG" "$SIPP_IMAGE"

echo "== CRDs and chart (with Redis)"
scripts/upgrade-crds.sh   # Helm installs crds/ once and never upgrades them
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
# Release kubesbc: scripts/kind/redis.patch.yaml names its Secret, kubesbc-redis-url.
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
kubectl -n "$NS" apply -f examples/
kubectl -n "$NS" patch sbccluster edge --type merge --patch-file scripts/kind/redis.patch.yaml
signature=$(kubectl -n "$NS" get secret company-signature -o jsonpath='{.data.signature}' | base64 -d)

# sent <ip>: calls the sbc pods sent to the backend at <ip> (REQUESTS of set 1 in each pod's
# `sbc ctl dispatcher list`, which asks the pod's admin endpoint on its loopback), summed.
sent() {
    local selector pod
    selector=$(kubectl -n "$NS" get sbccluster edge -o jsonpath='{.status.selector}')
    for pod in $(kubectl -n "$NS" get pods -l "$selector" -o name); do
        kubectl -n "$NS" exec "$pod" -c sbc -- sbc ctl dispatcher list
    done | awk -v uri="sip:$1:" '$1 == "ID:" {set = $2} $1 == "URI:" {here = index($2, uri) == 1}
        $1 == "COUNTERS:" && set == 1 && here {n += $3} END {print n + 0}'
}

calls() { # calls <replicas>
    kubectl -n "$NS" wait --for=condition=Accepted sbccluster/edge --timeout=120s
    kubectl -n "$NS" wait --for=jsonpath='{.status.readyReplicas}'="$1" sbccluster/edge --timeout=300s
    kubectl -n "$NS" wait --for=condition=Ready sbccluster/edge --timeout=300s
    # Both backends usable on every sbc pod (the operator asks the pods at least every 30 s).
    kubectl -n "$NS" wait --for=jsonpath='{.status.destinationsUp}'=2 dispatcherset/asterisk --timeout=120s
    local backends before=() i after n total=0 rc=0 ok failed
    read -r -a backends <<<"$(kubectl -n "$NS" get pods -l app=asterisk -o jsonpath='{.items[*].status.podIP}')"
    [ "${#backends[@]}" = 2 ] || fail "expected 2 backend pods, found ${backends[*]:-none}"
    for i in "${!backends[@]}"; do before[i]=$(sent "${backends[i]}"); done

    echo "== 20 calls from the host through 127.0.0.1:5060, $1 sbc pods (logs in $OUT)"
    sipp 127.0.0.1:5060 -sf scripts/kind/uac.xml -key signature "$signature" -key tenant acme \
        -s 100 -m 20 -r 5 -l 10 -d 1000 -t u1 -timeout 60s -timeout_error -nostdin \
        -trace_stat -stf "$OUT/calls-$1.csv" -trace_err -error_file "$OUT/errors-$1.log" \
        >"$OUT/sipp-$1.log" 2>&1 || rc=$?
    # The last line of sipp's statistics is the run's total.
    read -r ok failed < <(awk -F';' 'NR == 1 {for (i = 1; i <= NF; i++) col[$i] = i; next}
        {ok = $col["SuccessfulCall(C)"]; failed = $col["FailedCall(C)"]} END {print ok + 0, failed + 0}' \
        "$OUT/calls-$1.csv")
    echo "sipp: $ok successful, $failed failed calls (exit status $rc)"
    if [ "$rc" != 0 ] || [ "$ok" != 20 ] || [ "$failed" != 0 ]; then
        fail "calls failed, see $OUT/errors-$1.log"
    fi
    for i in "${!backends[@]}"; do
        after=$(sent "${backends[i]}")
        n=$((after - before[i]))
        echo "backend ${backends[i]}: $n calls"
        [ "$n" -gt 0 ] || fail "no call reached backend ${backends[i]}"
        total=$((total + n))
    done
    [ "$total" -ge 20 ] || fail "the sbc pods sent $total calls to the backends, not 20"
}

calls 2
kubectl -n "$NS" scale sbccluster/edge --replicas 3
calls 3
kubectl -n "$NS" get sbc,dset,tt,acl
echo "== kind-e2e: passed"
