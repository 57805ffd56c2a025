#!/usr/bin/env bash
# Seeds a local podman image of Debian bookworm that boots systemd as PID 1, for testing the
# Debian package's unit under a real service manager (tests/deploy/test_debian_package.py).
# Nothing is pulled: mmdebstrap builds the root file system from the host's apt sources.
#
#   scripts/seed-systemd-image.sh IMAGE [PACKAGE...]
#
# IMAGE is the local name to import it as (e.g. localhost/spiffe-tunnel-systemd-test:abc123);
# an image of that name already present is kept. PACKAGEs are installed as well (e.g. the
# dependencies of the .deb under test, so that `dpkg -i` needs no network in the container).
set -euo pipefail
image=${1:?usage: seed-systemd-image.sh IMAGE [PACKAGE...]}
shift
if podman image exists "$image"; then
  echo "seed-systemd-image: $image present"
  exit 0
fi
include=systemd,systemd-sysv,init-system-helpers,adduser
for p in "$@"; do include+=",$p"; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# minbase: no recommends; the dependencies come from the PACKAGE arguments.
mmdebstrap --quiet --variant=minbase --include="$include" --format=tar bookworm "$tmp/root.tar"
podman import --quiet \
  --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$tmp/root.tar" "$image" >/dev/null
echo "seed-systemd-image: $image seeded with $include"
