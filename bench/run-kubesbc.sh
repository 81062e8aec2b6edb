#!/usr/bin/env bash
# Start/stop the release kubesbc for the benchmark, the same way run-kamailio.sh does Kamailio.
#
#   run-kubesbc.sh start [--transport udp|tcp] [--port 5060] [--backends H:P,H:P]
#                        [--admin-port 9090] [--cpus LIST] [--bin PATH] [-- EXTRA SBC ARGS]
#   run-kubesbc.sh stop  [--port 5060]
#   run-kubesbc.sh pid   [--port 5060]
#
# `start` builds target/release/sbc when it is missing (or older than its sources), writes a
# Kamailio-format dispatcher list /tmp/kubesbc-bench-PORT.list for the backends (;transport=tcp
# for --transport tcp), runs
#   sbc --listen udp:127.0.0.1:PORT --listen tcp:127.0.0.1:PORT --dispatcher-list LIST
#       --admin 127.0.0.1:ADMIN --probe-interval-ms 5000 --reply-timeout-ms 2000
# (Kamailio's ds_ping_interval 5 s and fr_timer 2 s in dispatcher.cfg) in the background with
# RUST_LOG=warn (Kamailio logs errors only), writes its PID to /tmp/kubesbc-bench-PORT.pid and its
# log to /tmp/kubesbc-bench-PORT.log, and waits (bounded) until the UDP port is bound.
# `stop` sends SIGTERM to that PID only, then SIGKILL after 10 s.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

cmd="${1:-}"; shift || true
transport=udp; port=5060; backends="127.0.0.1:5071,127.0.0.1:5072"; admin_port=""; cpus=""
bin="$ROOT/target/release/sbc"; extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --transport) transport="$2"; shift 2;;
    --port) port="$2"; shift 2;;
    --backends) backends="$2"; shift 2;;
    --admin-port) admin_port="$2"; shift 2;;
    --cpus) cpus="$2"; shift 2;;
    --bin) bin="$2"; shift 2;;
    --) shift; extra=("$@"); break;;
    *) echo "unknown option: $1" >&2; exit 2;;
  esac
done
[[ -n "$admin_port" ]] || admin_port=$((port + 4030))   # 5060 -> 9090
pidfile="/tmp/kubesbc-bench-${port}.pid"
logfile="/tmp/kubesbc-bench-${port}.log"
listfile="/tmp/kubesbc-bench-${port}.list"

stop() {
  [[ -f "$pidfile" ]] || { echo "no pidfile $pidfile"; return 0; }
  local pid; pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  fi
  rm -f "$pidfile"
  echo "stopped kubesbc pid $pid"
}

case "$cmd" in
  start)
    case "$transport" in udp|tcp) ;; *) echo "transport must be udp or tcp" >&2; exit 2;; esac
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "already running: pid $(cat "$pidfile")" >&2; exit 1
    fi
    for p in "$port" "$admin_port"; do
      if ss -H -lun "sport = :$p" | grep -q . || ss -H -ltn "sport = :$p" | grep -q .; then
        echo "port $p is already in use (another test?)" >&2; exit 1
      fi
    done
    if [[ "$bin" == "$ROOT/target/release/sbc" ]]; then
      (cd "$ROOT" && cargo build --release -q -p kubesbc-sbc --bin sbc)
    fi
    bin="$(readlink -f "$bin")"
    [[ -x "$bin" ]] || { echo "no sbc binary at $bin" >&2; exit 1; }
    echo "# setid destination flags priority attrs (kubesbc bench, $transport)" > "$listfile"
    for b in ${backends//,/ }; do
      [[ "$b" == 127.* ]] || { echo "backend $b is not on loopback" >&2; exit 2; }
      if [[ "$transport" == tcp ]]; then echo "1 sip:$b;transport=tcp 0 0" >> "$listfile"
      else echo "1 sip:$b 0 0" >> "$listfile"; fi
    done
    taskset_cmd=()
    [[ -n "$cpus" ]] && taskset_cmd=(taskset -c "$cpus")
    (cd /tmp && RUST_LOG="${RUST_LOG:-warn}" exec "${taskset_cmd[@]}" "$bin" \
        --listen "udp:127.0.0.1:$port" --listen "tcp:127.0.0.1:$port" \
        --dispatcher-list "$listfile" --admin "127.0.0.1:$admin_port" \
        --probe-interval-ms 5000 --reply-timeout-ms 2000 "${extra[@]}" \
        >"$logfile" 2>&1) &
    pid=$!
    echo "$pid" > "$pidfile"
    for _ in $(seq 1 100); do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "kubesbc exited during start; log:" >&2; tail -20 "$logfile" >&2; rm -f "$pidfile"; exit 1
      fi
      if ss -H -lun "sport = :$port" 2>/dev/null | grep -q .; then break; fi
      sleep 0.1
    done
    echo "kubesbc started: pid $pid transport=$transport port=$port admin=127.0.0.1:$admin_port list=$listfile log=$logfile"
    ;;
  stop) stop;;
  pid) cat "$pidfile";;
  *) echo "usage: $0 start|stop|pid [options]" >&2; exit 2;;
esac
