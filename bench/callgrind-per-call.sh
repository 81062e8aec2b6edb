#!/usr/bin/env bash
# Instructions per call of an sbc binary, counted by valgrind's callgrind: repeatable whatever
# else the machine is doing (CPU time at 3,000 CPS is not, on a shared 2-core box). User-space
# instructions only: the kernel's share (sendto/recvfrom, about half of the CPU at load) is
# not in it, so it complements bench/ab-cpu.sh, it does not replace it.
#
#   bench/callgrind-per-call.sh BIN [CONFIG]        # prints "<Ir per call> <Ir long> <Ir short>"
#   KEEP=1 bench/callgrind-per-call.sh BIN CONFIG   # and keeps cg-*.out for callgrind_annotate
#
# Runs the sbc under callgrind twice in front of the sipp backends of bench/sip-cps.sh, with
# 100 calls/s for LONG (30) and SHORT (10) seconds; the difference of the two totals divided by
# the difference in calls removes start-up, probes and shutdown. CONFIG (optional) is an
# sbc.yaml merged with the bench's flags (its listeners are replaced by them).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$(readlink -f "${1:?usage: callgrind-per-call.sh BIN [CONFIG]}")"
CONFIG="${2:-}"
RATE="${RATE:-100}"; LONG="${LONG:-30}"; SHORT="${SHORT:-10}"; PORT="${PORT:-5060}"
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 2; }
work="$(mktemp -d /tmp/kubesbc-callgrind.XXXXXX)"
printf '1 sip:127.0.0.1:5071\n1 sip:127.0.0.1:5072\n' >"$work/list"
if [[ -z "$CONFIG" ]]; then
  printf 'listeners: [{transport: udp, address: "127.0.0.1:%s"}]\n' "$PORT" >"$work/sbc.yaml"
  CONFIG="$work/sbc.yaml"
fi

one() { # one <seconds> -> total Ir
  local secs="$1" out="$work/cg-$1.out" vpid
  (cd "$work" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" \
      --listen "udp:127.0.0.1:$PORT" --dispatcher-list "$work/list" --admin "127.0.0.1:$((PORT + 4030))" \
      --probe-interval-ms 5000 --reply-timeout-ms 2000 --config "$CONFIG" >"$work/sbc-$secs.log" 2>&1) &
  vpid=$!
  for _ in $(seq 1 120); do ss -lun | grep -q "127.0.0.1:$PORT " && break; sleep 0.5; done
  if ! "$HERE/sip-cps.sh" --proxy "127.0.0.1:$PORT" --rate "$RATE" --duration "$secs" --probe-rate 0 \
      --proxy-pid "$vpid" >"$work/run-$secs.json"; then
    echo "sip-cps failed at $secs s: $work/run-$secs.json" >&2
    kill -KILL "$vpid" 2>/dev/null || true
    exit 1
  fi
  kill -TERM "$vpid"
  for _ in $(seq 1 240); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$vpid" 2>/dev/null && { kill -KILL "$vpid"; echo "sbc did not stop" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

long="$(one "$LONG")"; short="$(one "$SHORT")"
echo "$(( (long - short) / ((LONG - SHORT) * RATE) )) $long $short"
# KEEP=1 keeps the callgrind files for callgrind_annotate.
if [[ -n "${KEEP:-}" ]]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
