#!/usr/bin/env bash
# Discovery and live-config benchmark: time from an EndpointSlice event (or a rewrite of the
# config file) to the first call the new backend receives, with calls flowing.
#
#   bench/discovery/run.sh [--mode endpointslices|file] [--rate 1000] [--updates 100]
#                          [--interval-ms 1537]
#
# Builds the release sbc and the e2e crate, then runs the ignored test
# `bench_update_to_first_call` (tests/tests/live.rs): a fake Kubernetes API on loopback (or
# the config file), four sipp backends of which two serve at any time, a sipp caller at
# --rate calls/s, and --updates updates each adding a backend that was out and removing
# another. The latency of an update is the first INVITE logged by the added backend after
# the event. Prints one BENCH line (p50/p99/max in ms, failed calls) and appends it to
# bench/discovery/results.txt. Target: p99 < 1000 ms and failed=0.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$HERE/../lib.sh"

# 1537 ms: not a multiple of the 500 ms file poll, so file-mode updates sample every phase.
mode=endpointslices; rate=1000; updates=100; interval_ms=1537
BENCH_OPTIONS="mode rate updates interval_ms"
bench_parse_options "$@"
[[ ${#BENCH_REST[@]} -eq 0 ]] || { echo "unknown arguments: ${BENCH_REST[*]}" >&2; exit 2; }
case "$mode" in endpointslices|file) ;; *) echo "--mode endpointslices|file" >&2; exit 2;; esac

cd "$ROOT"
cargo build --release -p kubesbc-sbc --bin sbc
# sipp stamps its message log in local time; the benchmark reads it as UTC.
out=$(TZ=UTC RUST_LOG=warn BENCH_MODE="$mode" BENCH_RATE="$rate" BENCH_UPDATES="$updates" \
  BENCH_INTERVAL_MS="$interval_ms" \
  cargo test --release -p kubesbc-e2e --test live -- --ignored --nocapture \
  bench_update_to_first_call 2>&1) || { echo "$out" | tail -40; exit 1; }
line=$(echo "$out" | grep '^BENCH ' || true)
if [[ -z "$line" ]]; then echo "$out" | tail -40; echo "no BENCH line" >&2; exit 1; fi
echo "$line"
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc)cpu $line" >> "$HERE/results.txt"
