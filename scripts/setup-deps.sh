#!/usr/bin/env bash
# Installs the Debian packages spiffe-tunnel needs to build, test and benchmark.
# Idempotent: packages already present are skipped. Run as root (or with sudo).
# Options: --bench (also the benchmark tools), --build-only (only what compiling the daemon needs).
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config
  libssl-dev openssl libasio-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  catch2 libcli11-dev libsystemd-dev nlohmann-json3-dev
  ccache
  libnghttp2-dev  # HTTP/2 for multiplexed tunnels (src/mux)
)
test_pkgs=(
  python3 python3-pytest python3-prometheus-client iproute2 socat user-mode-linux kmod procps psmisc
  haproxy  # an independent PROXY protocol receiver (tests/integration/test_proxy_protocol.py)
  systemd  # systemd-socket-activate (works without systemd running)
)
# The libFuzzer targets (tests/fuzz, scripts/fuzz.sh): clang with libFuzzer and its sanitizers.
test_pkgs+=(clang-14 libfuzzer-14-dev libclang-rt-14-dev)
# Packaging and deployment checks (tests/deploy): the .deb, the container image built with
# podman/buildah on a base image seeded by mmdebstrap, the four-site topology (iperf3).
deploy_pkgs=(podman buildah runc mmdebstrap uidmap fuse-overlayfs iperf3)
deploy_pkgs+=(openjdk-17-jre-headless maven curl)  # four-site Kafka broker: Java 17; Maven fetches its jars
deploy_pkgs+=(python3-yaml)  # tests/deploy/test_kubernetes.py reads the manifests and renderings
# The .deb: CPack's dependency scan (dpkg-shlibdeps), lintian, and man to read the page.
deploy_pkgs+=(dpkg-dev lintian man-db)
bench_pkgs=(stunnel4 nginx-light libnginx-mod-stream iperf3 python3-matplotlib linux-perf valgrind)

want=("${build_pkgs[@]}" "${test_pkgs[@]}" "${deploy_pkgs[@]}")
if [[ "${1:-}" == "--bench" ]]; then want+=("${bench_pkgs[@]}"); fi
# --build-only: what compiling the daemon needs, nothing else (the container image's build stage).
build_only=0
if [[ "${1:-}" == "--build-only" ]]; then want=("${build_pkgs[@]}"); build_only=1; fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "setup-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup-deps: all packages present"
fi

# Python packages the integration tests use (independent certificate minting).
if ((!build_only)) && ! python3 -c 'import cryptography, pytest' 2>/dev/null; then
  python3 -m pip install -q -r "$(dirname "$0")/../tests/requirements.txt"
fi
