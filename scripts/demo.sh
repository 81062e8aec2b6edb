#!/usr/bin/env bash
# Run kubesbc standalone on this machine, in front of two local sipp backends, and show how to
# place calls through it. Stops everything it started (by PID) on Ctrl-C.
#
#   ./scripts/demo.sh                # sbc on 127.0.0.1:5060 (udp+tcp), backends 5071/5072
#   PORT=5260 B1=5271 B2=5272 ADMIN=9190 ./scripts/demo.sh   # other ports
#   DEMO_CALLS=0 ./scripts/demo.sh   # do not place the 10 warm-up calls
#   SBC_BIN=target/debug/sbc ./scripts/demo.sh   # use this binary, do not build the release one
#   ./scripts/demo.sh --kamailio     # the same with Kamailio (bench/kamailio) as the proxy
#
# What it does: installs the system packages (scripts/install-deps.sh), builds the release
# sbc, writes a Kamailio-format dispatcher.list with the two backends, starts two sipp UAS
# (tests/scenarios/uas.xml) and `sbc --listen ... --dispatcher-list ...` (no config file,
# state in memory), places a few calls, prints the commands to try, and waits.
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$ROOT"
PORT="${PORT:-5060}"; B1="${B1:-5071}"; B2="${B2:-5072}"; ADMIN="${ADMIN:-9090}"
UAC_PORT="${UAC_PORT:-5090}"; DEMO_CALLS="${DEMO_CALLS:-10}"
proxy=sbc
for arg in "$@"; do
  case "$arg" in
    --kamailio) proxy=kamailio;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) echo "demo: unknown option $arg" >&2; exit 2;;
  esac
done

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

port_busy() {
  ss -H -lun "sport = :$1" 2>/dev/null | grep -q . || ss -H -ltn "sport = :$1" 2>/dev/null | grep -q .
}

if [[ "$proxy" == kamailio ]]; then ./scripts/install-deps.sh --with-kamailio; else ./scripts/install-deps.sh; fi
for p in "$PORT" "$B1" "$B2" "$ADMIN"; do
  if port_busy "$p"; then
    echo "demo: port $p is already in use; choose others, e.g. PORT=5260 B1=5271 B2=5272 ADMIN=9190 $0" >&2
    exit 1
  fi
done

if [[ -n "${SBC_BIN:-}" ]]; then
  SBC="$(readlink -f "$SBC_BIN")"
  [[ -x "$SBC" ]] || { echo "demo: SBC_BIN=$SBC_BIN is not an executable" >&2; exit 1; }
elif [[ "$proxy" == sbc ]]; then
  say "building the release sbc (cargo build --release -p kubesbc-sbc --bin sbc)"
  cargo build --release -p kubesbc-sbc --bin sbc
  SBC="$ROOT/target/release/sbc"
else
  SBC="$ROOT/target/release/sbc"
fi

WORK="$(mktemp -d /tmp/kubesbc-demo.XXXXXX)"
pids=()
kamailio_started=""
# shellcheck disable=SC2317  # run by the EXIT trap, which shellcheck does not follow
cleanup() {
  trap - INT TERM EXIT
  echo
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [[ -n "$kamailio_started" ]]; then bench/kamailio/run-kamailio.sh stop --port "$PORT" || true; fi
  say "logs kept in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$WORK/dispatcher.list" <<LIST
# setid destination flags priority attrs   (Kamailio's format, read as is)
1 sip:127.0.0.1:$B1 0 0
1 sip:127.0.0.1:$B2 0 0
LIST

for b in "$B1" "$B2"; do
  sipp -sf "$ROOT/tests/scenarios/uas.xml" -i 127.0.0.1 -p "$b" -t u1 -nostdin \
    >"$WORK/backend-$b.log" 2>&1 &
  pids+=($!)
  say "backend sipp UAS on 127.0.0.1:$b (pid $!)"
done

if [[ "$proxy" == sbc ]]; then
  RUST_LOG="${RUST_LOG:-info}" "$SBC" --listen "udp:127.0.0.1:$PORT" --listen "tcp:127.0.0.1:$PORT" \
    --dispatcher-list "$WORK/dispatcher.list" --admin "127.0.0.1:$ADMIN" >"$WORK/sbc.log" 2>&1 &
  sbc_pid=$!
  pids+=("$sbc_pid")
  say "sbc on 127.0.0.1:$PORT udp+tcp, admin http://127.0.0.1:$ADMIN (pid $sbc_pid, log $WORK/sbc.log)"
else
  bench/kamailio/run-kamailio.sh start --port "$PORT" --backends "127.0.0.1:$B1,127.0.0.1:$B2"
  kamailio_started=1
  sbc_pid="$(bench/kamailio/run-kamailio.sh pid --port "$PORT")"
fi

# Wait (bounded) until the proxy answers an OPTIONS addressed to it.
options_ok() {
  python3 - "$PORT" <<'PY'
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); s.settimeout(0.5)
me = "127.0.0.1:%d" % s.getsockname()[1]
msg = ("OPTIONS sip:127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKdemo%d;rport\r\n"
       "Max-Forwards: 70\r\nFrom: <sip:demo@%s>;tag=d\r\nTo: <sip:127.0.0.1:%d>\r\n"
       "Call-ID: demo-%d@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
       % (port, me, s.getsockname()[1], me, port, s.getsockname()[1]))
s.sendto(msg.encode(), ("127.0.0.1", port))
try:
    data = s.recv(65535).decode(errors="replace")
except OSError:
    sys.exit(1)
sys.exit(0 if data.startswith("SIP/2.0 200") else 1)
PY
}
ready=""
for _ in $(seq 1 100); do
  if ! kill -0 "$sbc_pid" 2>/dev/null; then
    echo "demo: the proxy exited; last log lines:" >&2
    tail -30 "$WORK/sbc.log" /tmp/kamailio-bench-"$PORT".log 2>/dev/null >&2 || true
    exit 1
  fi
  if options_ok; then ready=1; break; fi
  sleep 0.2
done
[[ -n "$ready" ]] || { echo "demo: the proxy does not answer OPTIONS on 127.0.0.1:$PORT" >&2; exit 1; }

UAC_CMD="sipp 127.0.0.1:$PORT -sf $ROOT/tests/scenarios/uac.xml -i 127.0.0.1 -p $UAC_PORT -t u1 -r 5 -m 10 -d 500"
if [[ "$DEMO_CALLS" -gt 0 ]]; then
  say "placing $DEMO_CALLS calls through the proxy"
  if sipp 127.0.0.1:"$PORT" -sf "$ROOT/tests/scenarios/uac.xml" -i 127.0.0.1 -p "$UAC_PORT" -t u1 \
      -r 10 -m "$DEMO_CALLS" -d 200 -nostdin -timeout 60s -timeout_error \
      -trace_stat -stf "$WORK/warmup.csv" -fd 1 >"$WORK/warmup.log" 2>&1; then
    say "all $DEMO_CALLS calls succeeded"
  else
    say "some warm-up calls failed (sipp exit $?); see $WORK/warmup.log"
  fi
fi

cat <<INFO

  kubesbc is running on 127.0.0.1:$PORT (UDP and TCP) in front of 127.0.0.1:$B1 and 127.0.0.1:$B2.

  Place calls through it (sipp's screen; q to quit):
    $UAC_CMD
  Over TCP:
    ${UAC_CMD/-t u1/-t t1}
  Dispatcher state, as kamcmd dispatcher.list shows it:
    $SBC ctl dispatcher list --admin 127.0.0.1:$ADMIN
  Health and metrics:
    curl -s http://127.0.0.1:$ADMIN/readyz; curl -s http://127.0.0.1:$ADMIN/metrics | head
  Stop a backend to watch failover:   kill ${pids[1]}

  Ctrl-C stops everything.
INFO
[[ "$proxy" == kamailio ]] && echo "  (proxy is Kamailio: use kamcmd -s unix:/tmp/kamailio-bench-$PORT.ctl dispatcher.list)"

# Run until Ctrl-C, or until the proxy dies.
while kill -0 "$sbc_pid" 2>/dev/null; do sleep 1; done
say "the proxy exited"
exit 1
