#!/usr/bin/env bash
# kubesbc vs Kamailio, same box, same sitting, same harness: max calls per second at 0 failed
# calls and proxy CPU per call, over UDP and TCP. Kamailio runs bench/kamailio/dispatcher.cfg
# with 2 workers (children = tcp_children = 2); kubesbc runs with its defaults.
#
#   ./compare.sh                          # both proxies, udp and tcp (about 4 x BUDGET at most)
#   BUDGET=300 ./compare.sh               # seconds per (proxy, transport) search; default 600
#   TRANSPORTS=udp PROXIES=kubesbc ./compare.sh
#   RATES=500,1000,2000,4000,6000,8000,10000,12000 DURATION=20 ./compare.sh
#   PORT=5260 B1=5271 B2=5272 UACPORT=5290 ./compare.sh   # other ports if 5060/5071/5072/5090 are taken
#   SBC_EXTRA="--algorithm 4" KAM_EXTRA="--cpus 1" HARNESS_EXTRA="--sipp-cpus 0" ./compare.sh
#   POLICY=1 ./compare.sh                 # issue 6's figure: kubesbc with guard (flood bans) +
#                                         # throttle + Redis store vs Kamailio's seed.cfg (pike +
#                                         # topoh); starts its own redis-server
#
# Writes RESULTS (default bench/results/compare-<UTC stamp>/): <proxy>-<transport>.json from
# find-max-cps.sh, the proxies' logs, summary.md (summarize.py's table plus a ratio table), and
# prints the summary. Every process it starts is stopped by PID, also on Ctrl-C.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PORT:-5060}"; B1="${B1:-5071}"; B2="${B2:-5072}"; UACPORT="${UACPORT:-5090}"
DURATION="${DURATION:-20}"; BUDGET="${BUDGET:-600}"
RATES="${RATES:-200,500,1000,2000,3000,4000,5000,6000,8000,10000,12000,16000}"
TRANSPORTS="${TRANSPORTS:-udp tcp}"; PROXIES="${PROXIES:-kamailio kubesbc}"
RESULTS="${RESULTS:-$HERE/results/compare-$(date -u +%Y%m%dT%H%M%SZ)}"
SBC_EXTRA="${SBC_EXTRA:-}"; KAM_EXTRA="${KAM_EXTRA:-}"; HARNESS_EXTRA="${HARNESS_EXTRA:-}"
POLICY="${POLICY:-}"; KAM_CFG=dispatcher; SBC_NAME=kubesbc; REDIS_PID=""
BACKENDS="127.0.0.1:$B1,127.0.0.1:$B2"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"   # absolute: the start scripts run from elsewhere
if [[ -n "$POLICY" ]]; then
  # The policy pipeline with shared state: a real redis-server, a flood limit no single bench
  # source reaches (as seed.cfg's pike density), a throttle every call passes through.
  command -v redis-server >/dev/null || { echo "compare: redis-server missing" >&2; exit 1; }
  REDIS_PORT="${REDIS_PORT:-6391}"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$RESULTS/redis.log" 2>&1 &
  REDIS_PID=$!
  sed "s/@REDIS_PORT@/$REDIS_PORT/" "$HERE/policy.yaml" > "$RESULTS/policy.yaml"
  SBC_EXTRA="--config $RESULTS/policy.yaml $SBC_EXTRA"; KAM_CFG=seed; SBC_NAME=kubesbc-policy
fi

for tool in sipp python3 ss; do
  command -v "$tool" >/dev/null || { echo "compare: $tool missing (scripts/install-deps.sh --with-kamailio)" >&2; exit 1; }
done
[[ " $PROXIES " == *" kamailio "* ]] && ! command -v kamailio >/dev/null && [[ ! -x /usr/sbin/kamailio ]] && {
  echo "compare: kamailio missing (scripts/install-deps.sh --with-kamailio)" >&2; exit 1; }

running=""
cleanup() {
  case "$running" in
    kamailio) "$HERE/kamailio/run-kamailio.sh" stop --port "$PORT" || true;;
    kubesbc) "$HERE/run-kubesbc.sh" stop --port "$PORT" || true;;
  esac
  running=""
}
stop_all() {
  cleanup
  if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Build before measuring, so the compiler does not share the box with the first run.
if [[ " $PROXIES " == *" kubesbc "* ]]; then (cd "$HERE/.." && cargo build --release -q -p kubesbc-sbc --bin sbc); fi

for tr in $TRANSPORTS; do
  for proxy in $PROXIES; do
    case "$proxy" in
      kamailio)
        name="kamailio-$KAM_CFG-$tr-w2"
        # shellcheck disable=SC2086
        "$HERE/kamailio/run-kamailio.sh" start --cfg "$KAM_CFG" --transport "$tr" --workers 2 --tcp-workers 2 \
          --port "$PORT" --backends "$BACKENDS" $KAM_EXTRA
        pidfile="/tmp/kamailio-bench-$PORT.pid"; log="/tmp/kamailio-bench-$PORT.log";;
      kubesbc)
        name="$SBC_NAME-$tr"
        # shellcheck disable=SC2086
        "$HERE/run-kubesbc.sh" start --transport "$tr" --port "$PORT" --backends "$BACKENDS" -- $SBC_EXTRA
        pidfile="/tmp/kubesbc-bench-$PORT.pid"; log="/tmp/kubesbc-bench-$PORT.log";;
      *) echo "compare: unknown proxy $proxy" >&2; exit 2;;
    esac
    running="$proxy"
    sleep 1
    echo "compare: measuring $name (budget ${BUDGET}s)" >&2
    # shellcheck disable=SC2086
    "$HERE/find-max-cps.sh" --proxy "127.0.0.1:$PORT" --transport "$tr" --duration "$DURATION" \
      --budget-s "$BUDGET" --rates "$RATES" --backends "$BACKENDS" --uac-port "$UACPORT" \
      --proxy-pidfile "$pidfile" --label "$name" --out "$RESULTS/$name.json" $HARNESS_EXTRA >/dev/null || true
    cleanup
    cp "$log" "$RESULTS/$name.log" 2>/dev/null || true
  done
done

{
  python3 "$HERE/summarize.py" "$RESULTS"/*.json
  echo
  python3 "$HERE/compare_ratio.py" "$RESULTS"
} | tee "$RESULTS/summary.md"
echo "compare: results in $RESULTS" >&2
