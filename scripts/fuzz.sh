#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails on a crash.
#
#   scripts/fuzz.sh            # each target for FUZZ_SECS seconds (default 60)
#   FUZZ_SECS=600 scripts/fuzz.sh sip_parse
#
# The committed seeds in fuzz/corpus/TARGET are read, never written: new inputs go to a
# scratch corpus under fuzz/target/corpus (ignored by git). A crash leaves its input in
# fuzz/artifacts/TARGET and the script exits non-zero. cargo-fuzz needs nightly features:
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build the instrumented targets. cargo-fuzz is
# installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../fuzz"
secs="${FUZZ_SECS:-60}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
# No sanitizer: the targets are safe Rust, what is looked for is a panic, a hang or an
# unbounded allocation; ASan would only slow the search down.
cargo fuzz build --sanitizer none
failed=0
for t in "${targets[@]}"; do
    scratch="target/corpus/$t"
    mkdir -p "$scratch"
    echo "== fuzz $t for ${secs}s"
    if ! cargo fuzz run --sanitizer none "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=70000; then
        echo "FAIL fuzz $t: see fuzz/artifacts/$t"
        failed=1
    fi
done
exit "$failed"
