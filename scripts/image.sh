#!/usr/bin/env bash
# Build the spiredb image with podman, without a registry:
#   scripts/image.sh [BINARY] [TAG]
# BINARY is a spiredb built on this machine (default: bin/spiredb, built by
# `make build`); TAG defaults to localhost/spiredb:dev. The Dockerfile's base
# (debian:trixie-slim) is made here by mmdebstrap from Debian's mirror, in
# the way Debian's slim images are (no docs, man pages or locales), cached as
# a tarball in $SPIREDB_CACHE and imported under the name the Dockerfile
# uses. Prints the image's size in bytes on the last line.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPIREDB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiredb}
binary=${1:-$here/bin/spiredb}
tag=${2:-localhost/spiredb:dev}
base=docker.io/library/debian:trixie-slim
mkdir -p "$cache/image"

log() { printf 'image: %s\n' "$*" >&2; }

for p in podman buildah mmdebstrap runc; do
  command -v "$p" >/dev/null || { log "$p is missing: run scripts/setup.sh image"; exit 1; }
done
[ -x "$binary" ] || { log "no spiredb binary at $binary: run make build"; exit 1; }

# crun fails on hybrid cgroups and on rlimits above the hard limit: runc,
# with limits the machine allows
conf=$cache/image/containers.conf
nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
# podman caps its own nproc at 32768 and a container cannot raise it
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat >"$conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$conf

rootfs=$cache/image/trixie-slim.tar
if [ ! -s "$rootfs" ]; then
  log "making the debian:trixie-slim base with mmdebstrap (about 40 s)"
  tmp=$(mktemp "$cache/image/.rootfs.XXXXXX")
  mmdebstrap --quiet --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    trixie "$tmp" \
    "deb http://deb.debian.org/debian trixie main" \
    "deb http://deb.debian.org/debian trixie-updates main" \
    "deb http://deb.debian.org/debian-security trixie-security main" >&2
  mv "$tmp" "$rootfs"
fi
if ! podman image exists "$base"; then
  podman import --quiet "$rootfs" "$base" >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$binary" "$ctx/spiredb"
log "building $tag"
podman build --quiet --isolation chroot --network host --layers \
  -f "$here/deploy/Dockerfile" --target prebuilt -t "$tag" "$ctx" >/dev/null
podman image inspect --format '{{.Size}}' "$tag"
