#!/usr/bin/env bash
# Shared by the bench scripts (sourced, not run): option parsing and the start/stop of a
# proxy process in the background, by PID file, on loopback only.

# Reads `--name VALUE` pairs into the shell variables of the same name (dashes become
# underscores), for the names listed in BENCH_OPTIONS only; `--` ends the options and leaves
# what follows in the array BENCH_REST. Anything else exits 2.
# shellcheck disable=SC2034  # BENCH_REST is for the scripts that source this file
bench_parse_options() {
  BENCH_REST=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --) shift; BENCH_REST=("$@"); return 0;;
      --?*)
        local name="${1#--}"; name="${name//-/_}"
        if [[ " $BENCH_OPTIONS " != *" $name "* || $# -lt 2 ]]; then
          echo "unknown option: $1" >&2; exit 2
        fi
        printf -v "$name" '%s' "$2"; shift 2;;
      *) echo "unknown option: $1" >&2; exit 2;;
    esac
  done
}

# Writes a Kamailio-format dispatcher list to FILE: set 1 over the comma-separated loopback
# BACKENDS (H:P), `;transport=tcp` when TRANSPORT is tcp, after an optional HEADER comment.
bench_write_list() {
  local file="$1" transport="$2" backends="$3" header="${4:-}" b
  if [[ -n "$header" ]]; then echo "# $header" > "$file"; else : > "$file"; fi
  for b in ${backends//,/ }; do
    [[ "$b" == 127.* ]] || { echo "backend $b is not on loopback" >&2; exit 2; }
    if [[ "$transport" == tcp ]]; then echo "1 sip:$b;transport=tcp 0 0" >> "$file"
    else echo "1 sip:$b 0 0" >> "$file"; fi
  done
}

# Exits 1 when the process of PIDFILE still runs, or when one of the PORTS is bound.
bench_check_free() {
  local pidfile="$1" p; shift
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "already running: pid $(cat "$pidfile")" >&2; exit 1
  fi
  for p in "$@"; do
    if ss -H -lun "sport = :$p" | grep -q . || ss -H -ltn "sport = :$p" | grep -q .; then
      echo "port $p is already in use (another test?)" >&2; exit 1
    fi
  done
}

# Call right after starting NAME in the background: records its PID ($!) in PIDFILE and in
# BENCH_PID, then waits (TRIES x 0.1 s at most) until UDP PORT is bound; exits 1 with the end
# of LOGFILE (and removes PIDFILE) if the process dies on the way.
bench_started() {
  local pid=$! name="$1" port="$2" logfile="$3" pidfile="$4" tries="$5"
  # shellcheck disable=SC2034  # BENCH_PID is for the scripts that source this file
  BENCH_PID=$pid
  echo "$pid" > "$pidfile"
  for _ in $(seq 1 "$tries"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited during start; log:" >&2; tail -20 "$logfile" >&2; rm -f "$pidfile"; exit 1
    fi
    if ss -H -lun "sport = :$port" 2>/dev/null | grep -q .; then break; fi
    sleep 0.1
  done
}

# Stops the process of PIDFILE (NAME in messages): SIGTERM to that PID only, never by name,
# then SIGKILL after TRIES x 0.1 s.
bench_stop() {
  local name="$1" pidfile="$2" tries="$3" pid
  [[ -f "$pidfile" ]] || { echo "no pidfile $pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" || true
    for _ in $(seq 1 "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" || true; fi
  fi
  rm -f "$pidfile"
  echo "stopped $name pid $pid"
}
