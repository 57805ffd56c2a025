#!/usr/bin/env bash
# Builds the real components the integration tests run against -- SPIRE server and agent,
# OPA -- from the Go module proxy, into a cache directory outside the repository.
# A tool that is already cached at the pinned version is not rebuilt.
#
#   SPIFFE_TUNNEL_TOOLS  cache directory (default: ~/.cache/spiffe-tunnel-tools)
#
# Usage: scripts/build-tools.sh [spire] [opa]   (no argument: all)
set -euo pipefail

SPIRE_VERSION=1.13.3
OPA_VERSION=1.22.2
CACHE=${SPIFFE_TUNNEL_TOOLS:-$HOME/.cache/spiffe-tunnel-tools}
mkdir -p "$CACHE"

log() { echo "build-tools: $*" >&2; }

build_spire() {
  local out="$CACHE/spire-$SPIRE_VERSION"
  if [[ -x "$out/bin/spire-server" && -x "$out/bin/spire-agent" ]]; then
    log "spire $SPIRE_VERSION cached in $out"; return
  fi
  log "building spire $SPIRE_VERSION (cgo, several minutes on first run)"
  local mod="$out/module"
  mkdir -p "$mod" && cd "$mod"
  [[ -f go.mod ]] || go mod init example.invalid/spire-build >/dev/null
  go get -tool "github.com/spiffe/spire/cmd/spire-server@v$SPIRE_VERSION"
  go get -tool "github.com/spiffe/spire/cmd/spire-agent@v$SPIRE_VERSION"
  CGO_ENABLED=1 go build -trimpath \
    -ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=$SPIRE_VERSION" \
    -o "$out/bin.tmp/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  log "spire built: $("$out/bin/spire-server" --version 2>&1)"
}

build_opa() {
  local out="$CACHE/opa-$OPA_VERSION"
  if [[ -x "$out/bin/opa" ]]; then log "opa $OPA_VERSION cached in $out"; return; fi
  log "building opa $OPA_VERSION"
  local mod="$out/module"
  mkdir -p "$mod" && cd "$mod"
  [[ -f go.mod ]] || go mod init example.invalid/opa-build >/dev/null
  go get -tool "github.com/open-policy-agent/opa@v$OPA_VERSION"
  CGO_ENABLED=0 go build -trimpath -o "$out/bin.tmp/opa" github.com/open-policy-agent/opa
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

targets=("$@"); ((${#targets[@]})) || targets=(spire opa)
for t in "${targets[@]}"; do
  case "$t" in
    spire) (build_spire) ;;
    opa) (build_opa) ;;
    *) log "unknown tool '$t' (expected: spire, opa)"; exit 2 ;;
  esac
done
echo "$CACHE"
