#!/usr/bin/env bash
# Install the system packages kubesbc's tests, demo and benchmark need (Debian/Ubuntu).
#
#   ./scripts/install-deps.sh                 # test + demo tools
#   ./scripts/install-deps.sh --with-kamailio # accepted for old scripts: Kamailio is always installed now
#
# Idempotent: asks dpkg what is missing and, only if something is, runs `apt-get update` once
# and `apt-get install -y` for the missing packages. Runs as root, or through sudo otherwise.
# Rust itself (cargo, rustfmt, clippy) is expected to be installed already (rustup).
set -euo pipefail

# sip-tester = sipp; redis-server and redis-sentinel for the store tests; jq for reading JSON; sysstat (pidstat),
# iproute2 (ss), util-linux (taskset), procps (kill), python3 for the bench; a C toolchain for
# crates with C parts (ring); rtpengine-daemon for the media tests (started by the tests
# themselves, in userspace on loopback); kamailio with its TLS module and openssl for the TLS
# tests (Kamailio as a TLS backend and client, a PKI made by the test, s_client for mTLS), and
# for bench/compare.sh and KUBESBC_E2E_PROXY=kamailio; sngrep (its HEP listener) and tshark
# for the HEP test; chromium for the browser call test (driven by playwright-core, which never
# downloads a browser of its own).
packages=(sip-tester redis-server redis-sentinel jq sysstat iproute2 util-linux procps python3 build-essential pkg-config ca-certificates rtpengine-daemon chromium shellcheck kamailio kamailio-tls-modules openssl sngrep tshark)
# Node and npm for the WebSocket client tests (JsSIP, sip.js): only when missing, since a
# Node installed from elsewhere (with its own npm) conflicts with Debian's npm package.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi
for arg in "$@"; do
  case "$arg" in
    --with-kamailio) ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2;;
  esac
done

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "install-deps: this script needs a Debian-like system (dpkg, apt-get)." >&2
  echo "install-deps: install these by hand: ${packages[*]}" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The npm packages of tests/js (package-lock.json pins them); after the system packages.
npm_ci() {
  local js
  js="$(dirname "$(readlink -f "$0")")/../tests/js"
  # The stamp is the lock file node_modules was installed from (tests/src/node.rs checks it
  # too): a node_modules older than the lock file is installed again.
  if ! cmp -s "$js/package-lock.json" "$js/node_modules/.kubesbc-package-lock.json"; then
    echo "install-deps: npm ci in tests/js"
    (cd "$js" && npm ci --no-audit --no-fund) &&
      cp "$js/package-lock.json" "$js/node_modules/.kubesbc-package-lock.json"
  fi
}

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all present (${packages[*]})"
  npm_ci
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null; then
  SUDO=(sudo)
else
  echo "install-deps: missing ${missing[*]} and not root, no sudo" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
# tshark asks whether non-root users may capture; the tests run tshark on files only.
echo "wireshark-common wireshark-common/install-setuid boolean false" | "${SUDO[@]}" debconf-set-selections 2>/dev/null || true
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
# The package enables a system rtpengine (kernel table, iptables, ports 30000-40000, ng on
# localhost:2223). The tests start their own; on a systemd machine stop the packaged one so
# it holds no ports the tests hand out.
if [[ " ${missing[*]} " == *" rtpengine-daemon "* ]] && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now rtpengine-daemon.service || true
  echo "install-deps: disabled the packaged rtpengine-daemon service (the tests start their own)"
fi
# Like rtpengine, the packaged Kamailio may start a system instance (port 5060); the tests
# start their own on ephemeral ports.
if [[ " ${missing[*]} " == *" kamailio "* ]] && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now kamailio.service || true
fi
npm_ci
echo "install-deps: done"
