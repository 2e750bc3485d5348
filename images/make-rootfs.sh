#!/bin/sh
# Assemble the complete root filesystem of a rolebridge image in DEST:
#   /<binary name>                         the static binary (root-owned, 0555)
#   /etc/ssl/certs/ca-certificates.crt     CA bundle (the AWS SDK's HTTPS client refuses to
#                                          start without one)
#   /etc/passwd, /etc/group                the nonroot user 65532 (numeric USER works without
#                                          them; they only give the id a name)
#   /etc/nsswitch.conf                     "hosts: files dns" for the static glibc resolver
# Nothing else: no shell, no libc, no package manager.
#
# Used by images/*.Dockerfile (into the `scratch` final stage) and by
# scripts/empty-root-test.sh, so the test runs the binaries in exactly the image's filesystem.
#
#   images/make-rootfs.sh BINARY DEST [CA_BUNDLE]
# POSIX sh on purpose: it runs in the Debian build stage and on developer machines alike.
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 BINARY DEST [CA_BUNDLE]" >&2
  exit 2
fi
bin=$1
dest=$2
ca=${3:-/etc/ssl/certs/ca-certificates.crt}

[ -f "$bin" ] || { echo "make-rootfs: no binary at $bin" >&2; exit 1; }
[ -s "$ca" ] || { echo "make-rootfs: no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }
grep -q "BEGIN CERTIFICATE" "$ca" || { echo "make-rootfs: $ca is not a PEM bundle" >&2; exit 1; }

# A static binary has no program interpreter and needs no shared library. Checked here so that a
# dynamically linked build fails the image build instead of failing at pod start.
if command -v readelf >/dev/null 2>&1; then
  if readelf -lW "$bin" | grep -q "Requesting program interpreter"; then
    echo "make-rootfs: $bin is dynamically linked (has a program interpreter)" >&2
    exit 1
  fi
  if readelf -dW "$bin" | grep -q "(NEEDED)"; then
    echo "make-rootfs: $bin needs shared libraries:" >&2
    readelf -dW "$bin" | grep "(NEEDED)" >&2
    exit 1
  fi
else
  echo "make-rootfs: readelf not found (binutils); cannot prove $bin is static" >&2
  exit 1
fi

name=$(basename "$bin")
mkdir -p "$dest/etc/ssl/certs"
chmod 0755 "$dest" "$dest/etc" "$dest/etc/ssl" "$dest/etc/ssl/certs"
cp "$bin" "$dest/$name"
chmod 0555 "$dest/$name"
cp "$ca" "$dest/etc/ssl/certs/ca-certificates.crt"
chmod 0444 "$dest/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' > "$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$dest/etc/group"
printf 'hosts: files dns\n' > "$dest/etc/nsswitch.conf"
chmod 0444 "$dest/etc/passwd" "$dest/etc/group" "$dest/etc/nsswitch.conf"
echo "make-rootfs: $dest ready ($(du -sk "$dest" | cut -f1) KiB)"
