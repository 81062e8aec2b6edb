#!/usr/bin/env bash
# CPU per call of two sbc binaries (or of one binary with two sets of flags), alternating in one
# sitting, at a fixed rate: the "within 5 %" and "on vs off" comparisons the issues ask for.
#
#   bench/ab-cpu.sh OLD_BIN NEW_BIN                       # udp, 3000 CPS, 20 s, 3 rounds
#   RATE=3000 DURATION=20 ROUNDS=3 TRANSPORT=udp bench/ab-cpu.sh A B
#   A_ARGS="--config off.yaml" B_ARGS="--config on.yaml" bench/ab-cpu.sh BIN BIN
#   KAMAILIO=seed bench/ab-cpu.sh A B                     # adds Kamailio (seed|dispatcher|topoh) per round
#   BACKENDS=127.0.0.5:5071,127.0.0.5:5072 ...            # the sbc sides' backends elsewhere
#                                                         # (border.yaml/topology.yaml); Kamailio
#                                                         # keeps its list's 127.0.0.1 ones
#
# Each round runs A, then B (then Kamailio when asked), each with bench/run-kubesbc.sh (or
# run-kamailio.sh) and one bench/sip-cps.sh run, so slow drifts of the machine hit both sides.
# Writes results/ab-<stamp>/{a,b,k}-<round>.json and prints the median proxy CPU µs per call,
# setup p50/p99/p99.9/max and the B/A ratio. Exit 1 when a run failed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
A="${1:?usage: ab-cpu.sh A_BIN B_BIN}"; B="${2:?usage: ab-cpu.sh A_BIN B_BIN}"
RATE="${RATE:-3000}"; DURATION="${DURATION:-20}"; ROUNDS="${ROUNDS:-3}"; TRANSPORT="${TRANSPORT:-udp}"
PORT="${PORT:-5060}"
out="$HERE/results/ab-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
failed=0

run_one() { # run_one <tag> <round>
  local tag="$1" round="$2" pidfile backends=()
  [[ -n "${BACKENDS:-}" && "$tag" != k ]] && backends=(--backends "$BACKENDS")
  case "$tag" in
    a) # shellcheck disable=SC2086
       "$HERE/run-kubesbc.sh" start --transport "$TRANSPORT" --port "$PORT" --bin "$A" "${backends[@]}" -- ${A_ARGS:-} >/dev/null
       pidfile="/tmp/kubesbc-bench-$PORT.pid";;
    b) # shellcheck disable=SC2086
       "$HERE/run-kubesbc.sh" start --transport "$TRANSPORT" --port "$PORT" --bin "$B" "${backends[@]}" -- ${B_ARGS:-} >/dev/null
       pidfile="/tmp/kubesbc-bench-$PORT.pid";;
    k) "$HERE/kamailio/run-kamailio.sh" start --cfg "$KAMAILIO" --transport "$TRANSPORT" --port "$PORT" >/dev/null
       pidfile="/tmp/kamailio-bench-$PORT.pid";;
  esac
  "$HERE/sip-cps.sh" --proxy "127.0.0.1:$PORT" --transport "$TRANSPORT" --rate "$RATE" "${backends[@]}" \
    --duration "$DURATION" --proxy-pidfile "$pidfile" --label "$tag-$round" >"$out/$tag-$round.json" || failed=1
  if [[ "$tag" == k ]]; then "$HERE/kamailio/run-kamailio.sh" stop --port "$PORT" >/dev/null
  else "$HERE/run-kubesbc.sh" stop --port "$PORT" >/dev/null; fi
}

tags=(a b)
[[ -n "${KAMAILIO:-}" ]] && tags+=(k)
for round in $(seq 1 "$ROUNDS"); do
  for tag in "${tags[@]}"; do run_one "$tag" "$round"; done
done

python3 - "$out" "${tags[@]}" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1]); tags = sys.argv[2:]
names = {"a": "A", "b": "B", "k": "Kamailio"}
med = {}
print(f"| side | runs ok | proxy CPU µs/call (median) | setup p50 / p99 / p99.9 / max ms (median) |")
print("| --- | ---: | ---: | --- |")
for t in tags:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{t}-*.json")) if p.read_text().strip()]
    ok = [r for r in runs if r.get("pass")]
    cpu = [r["cpu_us_per_call"]["proxy"] for r in runs if "cpu_us_per_call" in r]
    lat = {k: [r["setup_ms"][k] for r in runs if r.get("setup_ms") and r["setup_ms"].get(k) is not None]
           for k in ("p50", "p99", "p999", "max")}
    med[t] = statistics.median(cpu) if cpu else None
    l = " / ".join(f"{statistics.median(v):g}" if v else "-" for v in lat.values())
    print(f"| {names[t]} | {len(ok)}/{len(runs)} | {med[t] if med[t] is not None else '-'} | {l} |")
if med.get("a") and med.get("b"):
    print(f"\nB/A proxy CPU per call: {med['b'] / med['a']:.3f}")
print(f"\nraw: {out}")
PY
exit "$failed"
