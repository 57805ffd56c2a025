#!/usr/bin/env bash
# Makes the Debian base images that deploy/container/Dockerfile names available to podman
# without pulling: each `FROM docker.io/library/debian:<suite>` (or `<suite>-slim`) is built from
# Debian packages with mmdebstrap and imported under exactly that name, so the same Dockerfile
# builds unchanged where images can be pulled.
#
# mmdebstrap gets no mirror argument: the image's apt sources are Debian's defaults for the suite
# (main, updates, security), which is also where `apt-get` inside the build stage installs from.
# An image that already exists is left alone. The root filesystem tarball is cached in
# $SPIFFE_TUNNEL_TOOLS (default ~/.cache/spiffe-tunnel-tools), keyed by suite, variant,
# architecture and ISO week, so a re-seed costs an import (~2 s) and the base follows Debian's
# updates weekly.
#
# Usage: scripts/seed-base-images.sh [--force] [DOCKERFILE]
#   --force   re-import even when the image exists (the cached tarball is still used)
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile=${1:-$root/deploy/container/Dockerfile}
CACHE=${SPIFFE_TUNNEL_TOOLS:-$HOME/.cache/spiffe-tunnel-tools}
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)

log() { echo "seed-base-images: $*" >&2; }

# The rootfs tarball of `suite` (minbase, plus the slim path excludes when `slim` is 1).
rootfs_tarball() {
  local suite=$1 slim=$2 arch week variant=minbase
  arch=$(dpkg --print-architecture)
  week=$(date -u +%G-w%V)
  ((slim)) && variant=minbase-slim
  local tar="$CACHE/debian-$suite-$variant-$arch-$week.tar"
  if [[ ! -s "$tar" ]]; then
    mkdir -p "$CACHE"
    rm -f "$CACHE/debian-$suite-$variant-$arch-"*.tar   # older weeks
    local opts=(--variant=minbase --mode=root --format=tar --quiet)
    if ((slim)); then
      # What Debian's -slim images drop: documentation, manuals and translations.
      opts+=(--dpkgopt='path-exclude=/usr/share/doc/*'
             --dpkgopt='path-include=/usr/share/doc/*/copyright'
             --dpkgopt='path-exclude=/usr/share/man/*'
             --dpkgopt='path-exclude=/usr/share/locale/*'
             --dpkgopt='path-exclude=/usr/share/info/*')
    fi
    log "building $suite ($variant) with mmdebstrap"
    mmdebstrap "${opts[@]}" "$suite" "$tar.tmp"
    mv "$tar.tmp" "$tar"
  fi
  echo "$tar"
}

seed() {
  local image=$1 tag suite slim=0
  tag=${image##*:}
  suite=${tag%-slim}
  [[ "$tag" == *-slim ]] && slim=1
  if ((!force)) && "${PODMAN[@]}" image exists "$image"; then
    log "$image present"; return
  fi
  local tar; tar=$(rootfs_tarball "$suite" "$slim")
  "${PODMAN[@]}" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debian $tag, mmdebstrap --variant=minbase" \
    "$tar" "$image" >/dev/null
  log "$image imported from $tar"
}

mapfile -t images < <(awk 'toupper($1) == "FROM" {
    for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' "$dockerfile" |
  grep -E '^(docker\.io/)?(library/)?debian:' | sort -u)
if ((${#images[@]} == 0)); then
  log "no debian base image in $dockerfile"; exit 0
fi
for image in "${images[@]}"; do
  seed "$image"
done
