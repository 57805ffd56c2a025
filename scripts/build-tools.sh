#!/usr/bin/env bash
# Builds the real components the integration tests run against -- SPIRE server and agent,
# OPA, the go-spiffe test peer (tests/peers/spiffe-peer), Helm and the Kubernetes manifest
# checker (tests/k8scheck) -- from the Go module proxy, into a cache directory outside the
# repository.
# A tool that is already cached at the pinned version is not rebuilt; the peer is keyed by a hash
# of its sources (go.mod, go.sum, *.go), so it is rebuilt only when they change; so is k8scheck.
#
#   SPIFFE_TUNNEL_TOOLS  cache directory (default: ~/.cache/spiffe-tunnel-tools)
#
# Apache Kafka (broker, console producer/consumer) is not built: its runtime classpath is resolved
# from Maven Central with `mvn dependency:copy-dependencies` into kafka-<version>/libs.
#
# Usage: scripts/build-tools.sh [spire] [opa] [peer] [kafka] [helm] [k8scheck]   (no argument: all)
#        scripts/build-tools.sh peer-path   print the peer binary's path (no build)
#        scripts/build-tools.sh helm-path | k8scheck-path   likewise
set -euo pipefail

SPIRE_VERSION=1.13.3
OPA_VERSION=1.22.2
KAFKA_VERSION=3.9.1
HELM_VERSION=3.21.4
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

# A throwaway module in $1/module that requires tool $3 (PACKAGE@VERSION); leaves the shell there.
tool_module() {
  mkdir -p "$1/module" && cd "$1/module"
  [[ -f go.mod ]] || go mod init "example.invalid/$2-build" >/dev/null
  go get -tool "$3"
}

build_opa() {
  local out="$CACHE/opa-$OPA_VERSION"
  if [[ -x "$out/bin/opa" ]]; then log "opa $OPA_VERSION cached in $out"; return; fi
  log "building opa $OPA_VERSION"
  tool_module "$out" opa "github.com/open-policy-agent/opa@v$OPA_VERSION"
  CGO_ENABLED=0 go build -trimpath -o "$out/bin.tmp/opa" github.com/open-policy-agent/opa
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
}

PEER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/peers/spiffe-peer"

# sha256 over "sha256sum" lines of go.mod, go.sum and *.go of directory $1 (default: the peer's)
# in C-locale order; first 16 hex chars.
# tests/integration/spire.py (peer_source_hash) computes the same value.
peer_hash() {
  (cd "${1:-$PEER_SRC}" && export LC_ALL=C &&
     sha256sum go.mod go.sum $(printf '%s\n' *.go | sort) | sha256sum | cut -c1-16)
}

peer_bin() { echo "$CACHE/spiffe-peer-$(peer_hash)/bin/spiffe-peer"; }

# Builds the Go program in directory $2 into $CACHE/$1-<peer_hash of $2>/bin/$1, unless there.
build_hashed() {
  local name=$1 src=$2
  local out; out="$CACHE/$name-$(peer_hash "$src")"
  if [[ -x "$out/bin/$name" ]]; then log "$name cached in $out"; return; fi
  log "building $name from $src"
  cd "$src"
  mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -mod=readonly -o "$out/bin.tmp/$name" .
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  log "$name built: $out/bin/$name"
}

# Kafka's runtime classpath: the broker (kafka_2.13) and the console tools (kafka-tools, without
# the Connect runtime it drags in), logging through reload4j. Java 17 runs it.
build_kafka() {
  local out="$CACHE/kafka-$KAFKA_VERSION"
  if [[ -f "$out/libs/kafka_2.13-$KAFKA_VERSION.jar" ]]; then log "kafka $KAFKA_VERSION cached in $out"; return; fi
  log "resolving kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$out"
  cat >"$out/pom.xml" <<POM
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>invalid.example</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$out/libs.tmp"
  mvn -B -q -Dstyle.color=never -f "$out/pom.xml" -Dmaven.repo.local="$out/m2" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$out/libs.tmp"
  rm -rf "$out/libs" "$out/m2" && mv "$out/libs.tmp" "$out/libs"
  log "kafka $KAFKA_VERSION: $(ls "$out/libs" | wc -l) jars, $(du -sh "$out/libs" | cut -f1) in $out/libs"
}

build_peer() { build_hashed spiffe-peer "$PEER_SRC"; }

helm_bin() { echo "$CACHE/helm-$HELM_VERSION/bin/helm"; }

build_helm() {
  local out="$CACHE/helm-$HELM_VERSION"
  if [[ -x "$out/bin/helm" ]]; then log "helm $HELM_VERSION cached in $out"; return; fi
  log "building helm $HELM_VERSION"
  tool_module "$out" helm "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  # As Helm's Makefile: the Kubernetes version `helm template` and `helm lint` assume is the one
  # of its client-go (v0.36.x -> 1.36), not the library default 1.20.
  local kube; kube=$(go list -m -f '{{.Version}}' k8s.io/client-go)
  local minor; minor=$(cut -d. -f2 <<<"$kube")
  local x="-X helm.sh/helm/v3"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $x/internal/version.version=v$HELM_VERSION \
      $x/pkg/lint/rules.k8sVersionMajor=1 $x/pkg/lint/rules.k8sVersionMinor=$minor \
      $x/pkg/chartutil.k8sVersionMajor=1 $x/pkg/chartutil.k8sVersionMinor=$minor" \
    -o "$out/bin.tmp/helm" helm.sh/helm/v3/cmd/helm
  rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"
  log "helm built: $("$out/bin/helm" version --short)"
}

K8SCHECK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/k8scheck"

# Keyed like the peer; tests/deploy/test_kubernetes.py asks for the path (k8scheck-path).
k8scheck_bin() { echo "$CACHE/k8scheck-$(peer_hash "$K8SCHECK_SRC")/bin/k8scheck"; }

build_k8scheck() { build_hashed k8scheck "$K8SCHECK_SRC"; }

targets=("$@"); ((${#targets[@]})) || targets=(spire opa peer kafka helm k8scheck)
for t in "${targets[@]}"; do
  case "$t" in
    spire) (build_spire) ;;
    opa) (build_opa) ;;
    peer) (build_peer) ;;
    kafka) (build_kafka) ;;
    peer-path) peer_bin; exit 0 ;;
    helm) (build_helm) ;;
    helm-path) helm_bin; exit 0 ;;
    k8scheck) (build_k8scheck) ;;
    k8scheck-path) k8scheck_bin; exit 0 ;;
    *) log "unknown tool '$t' (expected: spire, opa, peer, kafka, helm, k8scheck, *-path)"; exit 2 ;;
  esac
done
echo "$CACHE"
