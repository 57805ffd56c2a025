#!/usr/bin/env bash
# Runs every test of spiffe-tunnel and ends with one summary line "N passed, N failed".
#   1. Release build (-Werror) and its unit tests (Catch2, through ctest), with the layering
#      check (scripts/check-layers.py) as one more ctest test.
#   2. The unit tests again under AddressSanitizer+UBSan and under ThreadSanitizer.
#   3. Integration tests (pytest, tests/integration): real OpenSSL peers, a real SPIRE (two
#      federated trust domains), the go-spiffe peer, kTLS inside User-Mode Linux. The file-based
#      tunnel tests also run against the ASan build of the daemon. The tests of scripts/
#      (tests/scripts) run in the same pytest session.
# It first installs what it needs (both steps are idempotent and quick once done):
# scripts/setup-deps.sh (Debian packages) and scripts/build-tools.sh (SPIRE, OPA, the
# go-spiffe peer, Helm and the Kubernetes checker, built once into ~/.cache/spiffe-tunnel-tools).
#
# Options: --quick   release build and its tests only (no sanitizer builds)
#          -k EXPR   passed to pytest to select integration tests
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
pytest_args=()
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    -k) pytest_args+=(-k "$2"); shift ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

JOBS=${JOBS:-$(nproc)}
mkdir -p build
bash scripts/setup-deps.sh || { echo "test.sh: installing packages failed"; exit 1; }
bash scripts/build-tools.sh >/dev/null || { echo "test.sh: building SPIRE/OPA/peer/Helm/k8scheck failed"; exit 1; }
passed=0 failed=0 skipped=0 broken=()

note() { printf '\n== %s\n' "$*"; }

# Builds a preset and runs its ctest; adds the counts from ctest's summary line.
unit_tests() {
  local preset=$1
  note "unit tests ($preset)"
  if ! cmake --preset "$preset" >"build/$preset-configure.log" 2>&1 ||
     ! cmake --build --preset "$preset" -j"$JOBS" >"build/$preset-build.log" 2>&1; then
    tail -40 "build/$preset-configure.log" "build/$preset-build.log" 2>/dev/null
    broken+=("$preset build"); failed=$((failed + 1)); return
  fi
  local log="build/$preset-ctest.log"
  TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp halt_on_error=1" \
  ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="print_stacktrace=1" \
    ctest --preset "$preset" -j"$JOBS" >"$log" 2>&1
  local rc=$?
  grep -E "tests passed|Failed|\*\*\*" "$log" | tail -20
  local line total bad
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -1)
  if [[ -z "$line" ]]; then
    broken+=("$preset ctest"); failed=$((failed + 1)); tail -30 "$log"; return
  fi
  bad=$(sed -E 's/.* ([0-9]+) tests failed.*/\1/' <<<"$line")
  total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
  passed=$((passed + total - bad)); failed=$((failed + bad))
  ((rc == 0)) || broken+=("$preset ctest")
}

# Runs pytest; adds the counts from its summary line.
integration_tests() {
  local name=$1; shift
  note "integration tests ($name)"
  local log="build/pytest-$name.log"
  python3 -m pytest -q -p no:cacheprovider -rfEs "$@" 2>&1 | tee "$log" | tail -25
  local rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped)|no tests ran" "$log" | tail -1)
  local p f e s
  p=$(grep -oE "[0-9]+ passed" <<<"$line" | grep -oE "[0-9]+" || true)
  f=$(grep -oE "[0-9]+ failed" <<<"$line" | grep -oE "[0-9]+" || true)
  e=$(grep -oE "[0-9]+ errors?" <<<"$line" | grep -oE "[0-9]+" || true)
  s=$(grep -oE "[0-9]+ skipped" <<<"$line" | grep -oE "[0-9]+" || true)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0} + ${e:-0})); skipped=$((skipped + ${s:-0}))
  if ((rc != 0 && rc != 5)) || [[ -z "$line" ]]; then
    broken+=("pytest $name")
    [[ -n "$line" ]] || failed=$((failed + 1))
  fi
}

unit_tests release
if ((!quick)); then
  unit_tests asan
  unit_tests tsan
fi
rm -f build/soak-summary.txt
integration_tests all tests/integration tests/scripts tests/deploy "${pytest_args[@]}"
# What the deployment checks measured (image size, build times, four-site throughput).
sed -n '/= deployment facts =/,/^=\{5,\}/p' build/pytest-all.log | sed '$d'
# What the 3-minute soak under rotation measured (tests/integration/test_soak.py).
[[ -f build/soak-summary.txt ]] && { note "soak under rotation"; cat build/soak-summary.txt; }
if ((!quick)) && [[ -x build/asan/spiffe-tunnel ]]; then
  SPIFFE_TUNNEL_BIN=$PWD/build/asan/spiffe-tunnel ASAN_OPTIONS="detect_leaks=1" \
    integration_tests asan-daemon tests/integration/test_files_tunnels.py tests/integration/test_admin.py \
      tests/integration/test_cli_config.py tests/integration/test_opa.py \
      tests/integration/test_metrics.py tests/integration/test_reload.py \
      tests/integration/test_proxy_protocol.py tests/integration/test_logs.py \
      tests/integration/test_multiplex.py tests/integration/test_resumption.py
fi

echo
if ((${#broken[@]})); then
  echo "failing steps: ${broken[*]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
((${#broken[@]} == 0 && failed == 0))
