#!/usr/bin/env bash
# Issue 16's benchmark: CPU per call with HEP and CDRs on vs off, one binary, one sitting, and
# Kamailio with siptrace (every message as HEPv3) + acc (bench/kamailio/observe.cfg) as the
# third side of each round.
#
#   bench/observe-ab.sh [BIN]                 # udp, 3000 CPS, 20 s, 3 rounds (ab-cpu.sh's knobs)
#   HEP=tcp bench/observe-ab.sh BIN           # the collector over TCP instead of UDP
#   KAMAILIO= bench/observe-ab.sh BIN         # without the Kamailio side
#
# A is the sbc without an `observability` section; B sends HEP for every message to a collector
# on 127.0.0.1:9060 (socat draining it into /dev/null) and writes a CDR per call as a JSON log
# line. BIN defaults to target/release/sbc.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$(readlink -f "${1:-$HERE/../target/release/sbc}")"
HEP="${HEP:-udp}"
command -v socat >/dev/null || { echo "socat is required (apt-get install socat)" >&2; exit 2; }
work="$(mktemp -d /tmp/kubesbc-observe-ab.XXXXXX)"
case "$HEP" in
  udp) socat -u UDP4-RECV:9060,bind=127.0.0.1,reuseaddr /dev/null & ;;
  tcp) socat -u TCP4-LISTEN:9060,bind=127.0.0.1,fork,reuseaddr /dev/null & ;;
  *) echo "HEP must be udp or tcp" >&2; exit 2;;
esac
sink=$!
trap 'kill "$sink" 2>/dev/null || true; rm -rf "$work"' EXIT
# The listener is the one the bench's flags give (flags replace the file's listeners).
cat >"$work/on.yaml" <<YAML
listeners: [{transport: udp, address: "127.0.0.1:5060"}]
observability:
  hep:
    collectors: ["$HEP:127.0.0.1:9060"]
  records:
    cdrs: true
    registrations: true
    log: true
YAML
# the CDR lines are info events of their own targets; everything else stays at warn
export RUST_LOG="warn,kubesbc::cdr=info,kubesbc::registration=info"
export KAMAILIO="${KAMAILIO-observe}"
A_ARGS="" B_ARGS="--config $work/on.yaml" "$HERE/ab-cpu.sh" "$BIN" "$BIN"
