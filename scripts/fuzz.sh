#!/usr/bin/env bash
# Builds the libFuzzer targets (CMake preset `fuzz`: clang-14, ASan+UBSan, build/fuzz) and runs
# each for N seconds from its committed seed corpus, tests/fuzz/corpus/<target>/. New inputs go
# to a working corpus under build/fuzz/corpus/<target>/ (the committed seeds stay as they are).
# Prints one line per target: runs, exec/s, coverage (edges) and features, and the exit status.
# A crash, leak, timeout or sanitizer report fails the run; its reproducer is left in
# build/fuzz/crashes/ (replay: build/fuzz/tests/fuzz/fuzz_<target> <file>).
#
#   scripts/fuzz.sh [--seconds N] [--no-build|--build-only] [target...]  (30 s, every target)
# Targets: spiffe_id bundle config workload_response record_layer server_handshake
# FUZZ_NICE (default 10) is the niceness the fuzzers run at.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL=(spiffe_id bundle config workload_response record_layer server_handshake)
declare -A MAX_LEN=([spiffe_id]=512 [bundle]=16384 [config]=8192 [workload_response]=16384
                    [record_layer]=40000 [server_handshake]=16384)
seconds=30
build=1
run=1
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift ;;
    --no-build) build=0 ;;
    --build-only) run=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) [[ -n "${MAX_LEN[$1]:-}" ]] || { echo "fuzz.sh: unknown target $1" >&2; exit 2; }
       targets+=("$1") ;;
  esac
  shift
done
((${#targets[@]})) || targets=("${ALL[@]}")

out=build/fuzz
if ((build)); then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
  if command -v ccache >/dev/null; then export CMAKE_CXX_COMPILER_LAUNCHER=ccache; fi
  cmake --preset fuzz >/dev/null || exit 1
  mkdir -p "$out"
  cmake --build --preset fuzz -j"${JOBS:-2}" --target "${targets[@]/#/fuzz_}" \
    >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "fuzz.sh: build failed" >&2; exit 1; }
fi
((run)) || exit 0
mkdir -p "$out/crashes" "$out/logs"
failed=0
for t in "${targets[@]}"; do
  bin="$out/tests/fuzz/fuzz_$t"
  work="$out/corpus/$t"
  log="$out/logs/$t.$$.log"  # one per run: runs may overlap
  mkdir -p "$work"
  # halt_on_error: the first sanitizer report ends the run with its reproducer written.
  ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}" \
  nice -n "${FUZZ_NICE:-10}" "$bin" -max_total_time="$seconds" -max_len="${MAX_LEN[$t]}" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/crashes/$t-" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  status=ok
  if ((rc != 0)); then
    status="FAILED (reproducer: $(grep -ao "$out/crashes/$t-[^ ]*" "$log" | tail -1); log: $log)"
    failed=1
    grep -a -m1 -A12 'ERROR: \|runtime error' "$log"
  fi
  printf '%-18s %4ss runs=%s exec/s=%s cov=%s ft=%s exit=%d %s\n' "$t" "$seconds" \
    "${runs:-0}" "${rate:-0}" "${cov:-0}" "${ft:-0}" "$rc" "$status"
done
exit $failed
