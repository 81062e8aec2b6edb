#!/usr/bin/env bash
# Instructions per call of an sbc binary, counted by valgrind's callgrind: repeatable whatever
# else the machine is doing (CPU time at 3,000 CPS is not, on a shared 2-core box). User-space
# instructions only: the kernel's share (sendto/recvfrom, about half of the CPU at load) is
# not in it, so it complements bench/ab-cpu.sh, it does not replace it.
#
#   bench/callgrind-per-call.sh BIN [CONFIG]        # prints "<Ir per call> <Ir long> <Ir short>"
#   KEEP=1 bench/callgrind-per-call.sh BIN CONFIG   # and keeps cg-*.out for callgrind_annotate
#   bench/callgrind-per-call.sh kamailio[:CFG]       # Kamailio instead (CFG: dispatcher, the
#                                                    # default, observe, topoh or seed; see kamailio/)
#   BACKEND_IP=127.0.0.5 bench/callgrind-per-call.sh BIN bench/topology.yaml   # topology hiding
#
# Kamailio forks its workers: callgrind follows them (--trace-children) and the count is the
# sum over every process, so the two are compared instruction for instruction. With
# observe.cfg a HEP sink must listen on 127.0.0.1:9060 (observe-ab.sh starts one with socat).
#
# Runs the sbc under callgrind twice in front of the sipp backends of bench/sip-cps.sh, with
# 100 calls/s for LONG (30) and SHORT (10) seconds; the difference of the two totals divided by
# the difference in calls removes start-up, probes and shutdown. CONFIG (optional) is an
# sbc.yaml merged with the bench's flags (its listeners are replaced by them).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARG="${1:?usage: callgrind-per-call.sh BIN|kamailio[:CFG] [CONFIG]}"
KCFG=""
case "$ARG" in
  kamailio) KCFG=dispatcher;;
  kamailio:*) KCFG="${ARG#kamailio:}";;
  *) BIN="$(readlink -f "$ARG")";;
esac
CONFIG="${2:-}"
# The proxy runs in its own directory: the config by its absolute path.
[[ -z "$CONFIG" ]] || CONFIG="$(readlink -f "$CONFIG")"
RATE="${RATE:-100}"; LONG="${LONG:-30}"; SHORT="${SHORT:-10}"; PORT="${PORT:-5060}"
command -v valgrind >/dev/null || { echo "valgrind is required" >&2; exit 2; }
work="$(mktemp -d /tmp/kubesbc-callgrind.XXXXXX)"
# BACKEND_IP: where the sipp backends listen (another loopback address, such as 127.0.0.5,
# lets an sbc config tell them apart from the caller: relay.inside for topology hiding).
# Kamailio's list stays at 127.0.0.1.
BACKEND_IP="${BACKEND_IP:-127.0.0.1}"
printf '1 sip:%s:5071\n1 sip:%s:5072\n' "$BACKEND_IP" "$BACKEND_IP" >"$work/list"
if [[ -z "$CONFIG" ]]; then
  printf 'listeners: [{transport: udp, address: "127.0.0.1:%s"}]\n' "$PORT" >"$work/sbc.yaml"
  CONFIG="$work/sbc.yaml"
fi

one() { # one <seconds> -> total Ir
  local secs="$1" out="$work/cg-$1.out" vpid
  if [[ -n "$KCFG" ]]; then
    # Kamailio's flags as kamailio/run-kamailio.sh passes them. One UDP worker (KWORKERS):
    # under valgrind two workers spin on tm's shared-memory locks far more than they do at
    # native speed, and the spinning would be counted as work per call.
    (cd "$work" && exec valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$out.%p" /usr/sbin/kamailio -f "$HERE/kamailio/$KCFG.cfg" -DD -E \
        -m 512 -M 16 -x tlsf -w "$work" -Y "$work" -A "WORKERS=${KWORKERS:-1}" -A TCP_WORKERS=1 -A "LISTEN_PORT=$PORT" \
        -A "DS_LIST=\"$HERE/kamailio/dispatcher.list\"" -A PIKE_DENSITY=65000 -A PIKE_UNIT=2 \
        -A "CTL_SOCK=\"unix:$work/kamailio.ctl\"" >"$work/kamailio-$secs.log" 2>&1) &
  else
    (cd "$work" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" \
        --listen "udp:127.0.0.1:$PORT" --dispatcher-list "$work/list" --admin "127.0.0.1:$((PORT + 4030))" \
        --probe-interval-ms 5000 --reply-timeout-ms 2000 --config "$CONFIG" >"$work/sbc-$secs.log" 2>&1) &
  fi
  vpid=$!
  for _ in $(seq 1 120); do ss -lun | grep -q "127.0.0.1:$PORT " && break; sleep 0.5; done
  # A proxy that exited at start (port taken) must not let another one answer the calls.
  sleep 1
  kill -0 "$vpid" 2>/dev/null || { echo "the proxy exited at start: $work" >&2; exit 1; }
  # sip-cps's own pass rule (retransmissions, setup rate) is for load runs; under valgrind
  # every call completing is what counts.
  local backends="127.0.0.1:5071,127.0.0.1:5072"
  [[ -n "$KCFG" ]] || backends="$BACKEND_IP:5071,$BACKEND_IP:5072"
  "$HERE/sip-cps.sh" --proxy "127.0.0.1:$PORT" --rate "$RATE" --duration "$secs" --probe-rate 0 \
      --backends "$backends" \
      --proxy-pid "$vpid" >"$work/run-$secs.json" || true
  if ! python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["uac"]; sys.exit(0 if u["created"] > 0 and u["successful"] == u["created"] else 1)' "$work/run-$secs.json"; then
    echo "calls failed at $secs s: $work/run-$secs.json" >&2
    kill -KILL "$vpid" 2>/dev/null || true
    exit 1
  fi
  if [[ -n "$KCFG" ]]; then
    # Kamailio's children may be killed before they write their counts at exit: dump every
    # process now (callgrind_control writes the dumps next to the out files).
    callgrind_control -d >/dev/null 2>&1 || true
    sleep 2
  fi
  kill -TERM "$vpid"
  for _ in $(seq 1 240); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$vpid" 2>/dev/null && { kill -KILL "$vpid"; echo "proxy did not stop" >&2; exit 1; }
  # One file for the sbc; one per process for Kamailio (children finish writing after the
  # parent has gone).
  sleep 1
  local total=0 n
  for f in "$out" "$out".*; do
    [[ -e "$f" ]] || continue
    n="$(awk '/^(summary|totals):/ {print $2; exit}' "$f")"
    total=$(( total + ${n:-0} ))
  done
  echo "$total"
}

long="$(one "$LONG")"; short="$(one "$SHORT")"
echo "$(( (long - short) / ((LONG - SHORT) * RATE) )) $long $short"
# KEEP=1 keeps the callgrind files for callgrind_annotate.
if [[ -n "${KEEP:-}" ]]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
