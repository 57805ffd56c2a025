#!/usr/bin/env bash
# Soak under rotation against a real SPIRE: a client/server tunnel pair on the Workload API, the
# agent's workload SVIDs rotating every ~5 s (TTL 20 s), the agent SIGKILLed and restarted every
# 60-120 s, long paced echo transfers and a steady stream of short connections through the pair.
# Prints a summary table (rotations, agent restarts, transfers, bytes, failures, fds, RSS,
# session end reasons) and exits non-zero when a check fails. See docs/security.md.
#
#   scripts/soak.sh [minutes]        (default 30)
# Knobs (environment): SOAK_SVID_TTL, SOAK_AGENT_RESTART=lo-hi, SOAK_AGENT_DOWN=lo-hi, SOAK_LONG_STREAMS, SOAK_LONG_RATE
# (MiB/s per stream), SOAK_LONG_MAX (s), SOAK_SHORT_WORKERS, SOAK_SHORT_RATE (per worker per s),
# SOAK_SEED, SPIFFE_TUNNEL_BIN (default build/release/spiffe-tunnel), SPIFFE_TUNNEL_KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-30}
if [[ -z "${SPIFFE_TUNNEL_BIN:-}" && ! -x build/release/spiffe-tunnel ]]; then
  cmake --preset release >/dev/null
  cmake --build --preset release -j"${JOBS:-2}" --target spiffe-tunnel
fi
bash scripts/build-tools.sh spire peer >/dev/null
exec python3 tests/integration/soak.py "$minutes"
