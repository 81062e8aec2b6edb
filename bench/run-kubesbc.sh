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
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

cmd="${1:-}"; shift || true
transport=udp; port=5060; backends="127.0.0.1:5071,127.0.0.1:5072"; admin_port=""; cpus=""
bin="$ROOT/target/release/sbc"
BENCH_OPTIONS="transport port backends admin_port cpus bin"
bench_parse_options "$@"
extra=("${BENCH_REST[@]}")
[[ -n "$admin_port" ]] || admin_port=$((port + 4030))   # 5060 -> 9090
pidfile="/tmp/kubesbc-bench-${port}.pid"
logfile="/tmp/kubesbc-bench-${port}.log"
listfile="/tmp/kubesbc-bench-${port}.list"

case "$cmd" in
  start)
    case "$transport" in udp|tcp) ;; *) echo "transport must be udp or tcp" >&2; exit 2;; esac
    bench_check_free "$pidfile" "$port" "$admin_port"
    if [[ "$bin" == "$ROOT/target/release/sbc" ]]; then
      (cd "$ROOT" && cargo build --release -q -p kubesbc-sbc --bin sbc)
    fi
    bin="$(readlink -f "$bin")"
    [[ -x "$bin" ]] || { echo "no sbc binary at $bin" >&2; exit 1; }
    bench_write_list "$listfile" "$transport" "$backends" \
      "setid destination flags priority attrs (kubesbc bench, $transport)"
    taskset_cmd=()
    [[ -n "$cpus" ]] && taskset_cmd=(taskset -c "$cpus")
    (cd /tmp && RUST_LOG="${RUST_LOG:-warn}" exec "${taskset_cmd[@]}" "$bin" \
        --listen "udp:127.0.0.1:$port" --listen "tcp:127.0.0.1:$port" \
        --dispatcher-list "$listfile" --admin "127.0.0.1:$admin_port" \
        --probe-interval-ms 5000 --reply-timeout-ms 2000 "${extra[@]}" \
        >"$logfile" 2>&1) &
    bench_started kubesbc "$port" "$logfile" "$pidfile" 100
    echo "kubesbc started: pid $BENCH_PID transport=$transport port=$port admin=127.0.0.1:$admin_port list=$listfile log=$logfile"
    ;;
  stop) bench_stop kubesbc "$pidfile" 100;;
  pid) cat "$pidfile";;
  *) echo "usage: $0 start|stop|pid [options]" >&2; exit 2;;
esac
