#!/usr/bin/env bash
# THE test command of kubesbc: what CI runs (.ci/run) and what a developer runs before a push.
#
#   ./scripts/test.sh
#
# Steps: system packages (scripts/install-deps.sh), shellcheck, cargo fmt --check, cargo clippy
# -D warnings, build every binary (the e2e tests start target/debug/sbc), the whole test suite
# (cargo nextest if installed, else cargo test), then scripts/chart-check.sh when it exists.
# Every step runs even if an earlier one failed; a summary comes at the end; the exit code is
# non-zero if any step failed.
#
# Environment:
#   CI=true                  everything is mandatory: a missing tool fails the run (the e2e
#                            tests panic instead of printing SKIP), package installation must work
#   KUBESBC_E2E_PROXY=kamailio  run the proxy e2e tests against Kamailio instead of the sbc
#   SKIP_INSTALL=1           do not run install-deps.sh (ignored under CI=true)
#   CARGO_TEST_ARGS          extra arguments for the test runner (e.g. a test name filter)
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.." || exit 1
export CI="${CI:-false}"
ci() { [[ "$CI" == "true" || "$CI" == "1" ]]; }

declare -a names=() results=() times=()
failed=0
step() {
  local name="$1"; shift
  echo
  echo "==================== $name ===================="
  echo "+ $*"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  names+=("$name"); times+=("$((SECONDS - start))s")
  if [[ $rc -eq 0 ]]; then results+=("ok"); else results+=("FAILED (exit $rc)"); failed=1; fi
  return 0
}
note() { names+=("$1"); results+=("$2"); times+=("-"); }
# A step for a tool that is missing under CI=true: it fails, with MESSAGE.
missing() { echo "test.sh: $*" >&2; return 1; }

# Disk left, at the start and in the summary: a full disk once failed a CI run mid-way.
df -h . 2>/dev/null | tail -1 | awk '{print "disk: " $4 " free of " $2}'

if [[ "${SKIP_INSTALL:-}" == "1" ]] && ! ci; then
  note "install system packages" "skipped (SKIP_INSTALL=1)"
else
  step "install system packages" ./scripts/install-deps.sh
fi

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is not installed (https://rustup.rs)" >&2
  exit 1
fi
# rustfmt and clippy come with rustup's default profile; add them when they are missing.
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null; then
    rustup component add "$comp" || true
  fi
done

# Every shell script git tracks (scripts/, .ci/run, bench/, and any under docker/ or tests/),
# sourced files followed. Deliberate exclusions are inline `# shellcheck disable=...` lines with
# a reason; there is no .shellcheckrc.
shellcheck_all() {
  local -a files=()
  mapfile -d '' files < <(git ls-files -z '*.sh' .ci/run)
  [[ ${#files[@]} -gt 0 ]] || { echo "shellcheck: no shell scripts found (git ls-files)" >&2; return 1; }
  echo "shellcheck: ${#files[@]} files"
  shellcheck -x "${files[@]}"
}
if command -v shellcheck >/dev/null && command -v git >/dev/null; then
  step "shellcheck" shellcheck_all
elif ci; then
  step "shellcheck" missing "shellcheck (or git) is not installed (scripts/install-deps.sh)"
else
  note "shellcheck" "skipped (shellcheck not installed; a failure under CI=true)"
fi

step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build (binaries)" cargo build --workspace --bins

# Skipped e2e tests (tool missing outside CI, or sbc-only tests under Kamailio) are listed here.
skips_log="target/debug/e2e-skips.log"
rm -f "$skips_log"
# The test output is also kept, so the summary (the part of a CI log that is read) can name the
# tests that failed.
tests_log="target/debug/tests.log"
rm -f "$tests_log"
run_logged() { "$@" 2>&1 | tee "$tests_log"; return "${PIPESTATUS[0]}"; }
# shellcheck disable=SC2086
if cargo nextest --version >/dev/null 2>&1; then
  step "tests (cargo nextest)" run_logged cargo nextest run --workspace --no-fail-fast ${CARGO_TEST_ARGS:-}
else
  step "tests (cargo test)" run_logged cargo test --workspace --no-fail-fast ${CARGO_TEST_ARGS:-}
fi

# Each fuzz target for about a minute (FUZZ_SECS); fails on a crash.
step "fuzz (60 s per target)" ./scripts/fuzz.sh

if [[ -x scripts/chart-check.sh ]]; then
  step "chart check" ./scripts/chart-check.sh
elif [[ -e scripts/chart-check.sh ]]; then
  step "chart check" bash scripts/chart-check.sh
else
  note "chart check" "not present (scripts/chart-check.sh)"
fi

echo
echo "==================== summary ===================="
for i in "${!names[@]}"; do
  printf '  %-28s %-8s %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
done
if [[ -s "$tests_log" ]] && grep -qE '^ *(FAIL|TIMEOUT|SIGSEGV|SIGABRT) \[|^test .* FAILED$' "$tests_log"; then
  echo
  echo "  failed tests:"
  grep -E '^ *(FAIL|TIMEOUT|SIGSEGV|SIGABRT) \[|^test .* FAILED$' "$tests_log" | sed 's/^ */    /' | sort -u
fi
if [[ -s "$skips_log" ]]; then
  echo
  echo "  skipped e2e tests:"
  sed 's/^/    /' "$skips_log"
fi
df -h . 2>/dev/null | tail -1 | awk '{print "  disk at the end: " $4 " free of " $2}'
echo "  proxy under e2e test: ${KUBESBC_E2E_PROXY:-sbc}${KUBESBC_SBC_BIN:+ (KUBESBC_SBC_BIN=$KUBESBC_SBC_BIN)}; CI=$CI"
if [[ $failed -ne 0 ]]; then
  echo "  RESULT: FAILED"
  exit 1
fi
echo "  RESULT: ok"
