#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds spiffe-tunnel and runs its built-in demo: two throwaway
# trust domains, a server tunnel in front of an echo service, a client tunnel, a message through
# both, and a stranger refused. Extra arguments go to `spiffe-tunnel demo` (e.g. --wait).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target spiffe-tunnel
exec ./build/release/spiffe-tunnel demo "$@"
