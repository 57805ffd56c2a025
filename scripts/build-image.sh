#!/usr/bin/env bash
# Builds the spiffe-tunnel container image from deploy/container/Dockerfile with podman, tags it
# spiffe-tunnel:<version> and spiffe-tunnel:latest, and prints its size. Base images are never
# pulled: scripts/seed-base-images.sh makes them from Debian packages when they are missing.
# Podman runs as root here with runc and cgroupfs (no systemd session needed). The image a
# rebuild replaces is removed once untagged; the build-stage layers stay as the layer cache.
#
# Usage: scripts/build-image.sh [podman build options, e.g. --no-cache]
#   IMAGE  repository name (default spiffe-tunnel)
#   JOBS   parallel compile jobs in the build stage (default: number of cores)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image=${IMAGE:-spiffe-tunnel}
version=$(sed -nE 's/^project\(spiffe_tunnel VERSION ([0-9][0-9.]*).*/\1/p' CMakeLists.txt)
[[ -n "$version" ]] || { echo "build-image: no version in CMakeLists.txt" >&2; exit 1; }
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dockerfile=deploy/container/Dockerfile

bash scripts/seed-base-images.sh "$dockerfile"

previous=$(podman image inspect --format '{{.Id}}' "$image:$version" 2>/dev/null || true)
start=$(date +%s%N)
podman --cgroup-manager cgroupfs build --runtime runc --pull=never --network host \
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" \
  --file "$dockerfile" --ignorefile "$dockerfile.dockerignore" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "JOBS=${JOBS:-$(nproc)}" \
  --tag "$image:$version" --tag "$image:latest" "$@" .
took_ms=$((($(date +%s%N) - start) / 1000000))

# The image this build replaced, now untagged: remove it (only it, never other images).
current=$(podman image inspect --format '{{.Id}}' "$image:$version")
if [[ -n "$previous" && "$previous" != "$current" ]] &&
   [[ -z "$(podman image inspect --format '{{join .RepoTags ""}}' "$previous" 2>/dev/null)" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

size=$(podman image inspect --format '{{.Size}}' "$image:$version")
printf 'build-image: %s:%s (revision %s) built in %d.%d s, size %d bytes (%d.%d MiB)\n' \
  "$image" "$version" "$revision" $((took_ms / 1000)) $((took_ms % 1000 / 100)) "$size" \
  $((size / 1048576)) $((size % 1048576 * 10 / 1048576))
