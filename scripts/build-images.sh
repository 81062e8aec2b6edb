#!/usr/bin/env bash
# Builds the operator and sbc images and, with a registry named, pushes them.
#
#   scripts/build-images.sh                              # build ghcr.io/kubesbc/*:<version>
#   REGISTRY=registry.example.com/voip scripts/build-images.sh --push
#   TAG=dev ENGINE=podman scripts/build-images.sh
#
# ENGINE: docker or podman (default: docker when present, else podman). With docker, buildx
# is used when installed (PLATFORMS=linux/amd64,linux/arm64 builds several at once, which
# needs --push). Install the chart with the same names:
#   helm install kubesbc charts/kubesbc --set image.repository=$REGISTRY/operator \
#     --set sbcImage.repository=$REGISTRY/sbc --set image.tag=$TAG --set sbcImage.tag=$TAG
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-ghcr.io/kubesbc}
TAG=${TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/kubesbc/Chart.yaml)}
PLATFORMS=${PLATFORMS:-}
push=false
for arg in "$@"; do
    case "$arg" in
        --push) push=true ;;
        *) echo "build-images: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null 2>&1; then ENGINE=podman
    else echo "build-images: docker or podman is required" >&2; exit 1
    fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || { echo "build-images: $ENGINE not found" >&2; exit 1; }

buildx=false
if [ "$ENGINE" = docker ] && docker buildx version >/dev/null 2>&1; then
    buildx=true
fi
if [ -n "$PLATFORMS" ] && ! $buildx && [ "$ENGINE" = docker ]; then
    echo "build-images: PLATFORMS needs docker buildx" >&2; exit 1
fi
if [ -n "$PLATFORMS" ] && $buildx && ! $push; then
    echo "build-images: a multi-platform build must be pushed (--push)" >&2; exit 1
fi

build() { # build <name> <dockerfile>
    local image="$REGISTRY/$1:$TAG"
    echo "== $image"
    if $buildx; then
        local args=(buildx build -f "$2" -t "$image")
        if [ -n "$PLATFORMS" ]; then args+=(--platform "$PLATFORMS"); fi
        if $push; then args+=(--push); else args+=(--load); fi
        docker "${args[@]}" .
    else
        local args=(build -f "$2" -t "$image")
        if [ -n "$PLATFORMS" ]; then args+=(--platform "$PLATFORMS"); fi
        "$ENGINE" "${args[@]}" .
        if $push; then "$ENGINE" push "$image"; fi
    fi
}

build operator docker/operator.Dockerfile
build sbc docker/sbc.Dockerfile
echo "== built $REGISTRY/operator:$TAG and $REGISTRY/sbc:$TAG$($push && echo ' (pushed)')"
