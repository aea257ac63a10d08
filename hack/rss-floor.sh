#!/usr/bin/env bash
# rss-floor.sh — the idle RSS of a do-nothing program linking csi-thin's
# base dependencies, with and without controller-runtime, next to the
# real driver's binary size. Evidence for docs/performance.md (RSS goal).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
# grpcnotrace as the Makefile builds the driver (without it, gRPC links
# golang.org/x/net/trace, and the linker keeps every exported method).
for variant in base ctrl; do
	tags=grpcnotrace
	[[ $variant == ctrl ]] && tags+=,ctrl
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -tags "$tags" -o "$tmp/$variant" ./hack/rssprobe
	printf '%-5s binary %3d MiB  idle: %s\n' "$variant" $(($(stat -c %s "$tmp/$variant") >> 20)) "$("$tmp/$variant")"
done
