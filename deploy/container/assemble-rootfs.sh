#!/bin/sh
# Lays out the run stage's root filesystem in ROOTFS: the daemon, exactly the shared libraries
# `ldd` lists for it, passwd/group entries for the numeric user, a sticky /tmp, os-release, and
# for every Debian package a library came from, its copyright file and its dpkg status (in
# /var/lib/dpkg/status.d/, where image scanners look in distroless images).
# Runs in the build stage of deploy/container/Dockerfile.
#
# Usage: assemble-rootfs.sh BINARY ROOTFS UID
set -eu
bin=$1 root=$2 uid=$3

mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp" "$root/usr/lib" "$root/var/lib/dpkg/status.d"
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/bin/spiffe-tunnel"
strip --strip-unneeded "$root/usr/bin/spiffe-tunnel"

# "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || { echo "assemble-rootfs: ldd found no libraries for $bin" >&2; exit 1; }

packages=""
for lib in $libs; do
  cp -L --parents "$lib" "$root"
  pkg=$(dpkg -S "*/$(basename "$lib")" 2>/dev/null | head -1 | cut -d: -f1)
  [ -n "$pkg" ] && packages="$packages $pkg"
done

for pkg in $(echo "$packages" | tr ' ' '\n' | sort -u); do
  dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$pkg"
  if [ -e "/usr/share/doc/$pkg/copyright" ]; then
    mkdir -p "$root/usr/share/doc/$pkg"
    cp -L "/usr/share/doc/$pkg/copyright" "$root/usr/share/doc/$pkg/copyright"
  fi
done

cp -L /etc/os-release "$root/usr/lib/os-release"
ln -s ../usr/lib/os-release "$root/etc/os-release"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
nonroot:x:$uid:$uid:spiffe-tunnel:/nonexistent:/usr/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
nonroot:x:$uid:
EOF
echo "assemble-rootfs: $(echo "$libs" | wc -w) libraries from$(echo "$packages" | tr ' ' '\n' | sort -u | tr '\n' ' ')" >&2
