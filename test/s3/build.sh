#!/usr/bin/env bash
# build.sh — build SeaweedFS's `weed` (the real S3 server the export tests
# run against; Apache-2.0) once per version from the Go module proxy into
#   $SEAWEEDFS_CACHE/<version>/weed   (default /var/cache/csi-thin/seaweedfs)
# Idempotent: a built version is kept and the script returns at once.
# The module and build caches are the cluster build's (test/cluster/env.sh),
# so modules both need are downloaded once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../cluster/env.sh" # GOMODCACHE, GOCACHE, log, hack/versions.env
SEAWEEDFS_CACHE=${SEAWEEDFS_CACHE:-/var/cache/csi-thin/seaweedfs}
out=$SEAWEEDFS_CACHE/$SEAWEEDFS_VERSION
if [[ -x $out/weed ]]; then
	log "weed $SEAWEEDFS_VERSION: cached in $out"
	exit 0
fi
mkdir -p "$SEAWEEDFS_CACHE"
exec 8>"$SEAWEEDFS_CACHE/.build.lock"
flock 8
[[ -x $out/weed ]] && exit 0
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
start=$SECONDS
mod=github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION
if ! j=$(cd /tmp && go mod download -json "$mod" 2>&1); then
	printf '%s\n' "$j" | sed -n 's/^\t"Error": //p' >&2
	log "download of $mod failed"
	exit 1
fi
dir=$(printf '%s\n' "$j" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
# Built as the main module (its go.mod's replace directives apply, which
# `go install mod@version` refuses), from a writable copy.
src=$SEAWEEDFS_CACHE/src-$SEAWEEDFS_VERSION
rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src" && rm -rf "$src/vendor"
log "weed $SEAWEEDFS_VERSION: building (cold: many minutes on 2 cores)"
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
(cd "$src" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/weed" ./weed)
rm -rf "$out" && mv "$out.tmp" "$out" && rm -rf "$src"
log "weed $SEAWEEDFS_VERSION: built in $((SECONDS - start)) s into $out"
