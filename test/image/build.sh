#!/usr/bin/env bash
# build.sh — build the repository's Dockerfile the way a user does (Debian's
# buildah, `buildah bud`), on a machine without a registry, then check the
# image: /csi-thin --version prints the version it was built with, and every
# tool hack/image.sh lists is there and works (the filesystem tools make,
# check, grow and identify a filesystem in a file). Fails on the first
# missing or broken one. make test-image runs it.
#
# The Dockerfile's base images come from a registry for a user; here they
# are made locally and passed as GO_IMAGE and BASE_IMAGE:
#   localhost/debian:bookworm-slim-rN   debootstrap --variant=minbase from
#                                       the Debian mirror (DEBIAN_MIRROR)
#   localhost/golang:GOVERSION-bookworm-rN-CA
#                                       that + this host's Go toolchain
#                                       (/usr/local/go) and CA bundle (CA:
#                                       its hash; a proxy that re-signs TLS
#                                       must be trusted inside the build too)
# They, buildah's layer cache and the Go caches of the build (the
# Dockerfile's cache mounts) live in IMAGE_BUILD_CACHE, outside the clone:
# a warm run only rebuilds what the source changed.
#
#   IMAGE_BUILD_CACHE    default /var/cache/csi-thin/image-build
#   IMAGE_STORAGE_DRIVER buildah's storage driver: overlay (default) or vfs
#   DEBIAN_MIRROR        default http://deb.debian.org/debian
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/hack/versions.env"
cache=${IMAGE_BUILD_CACHE:-/var/cache/csi-thin/image-build}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# The recipe's revision: bump it when the making of the base images changes.
rev=r2
image=${CSI_THIN_IMAGE}:${CSI_THIN_TAG}
version=$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)

log() { printf '[%s] image-build: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

"$root/hack/ensure-packages.sh" buildah

mkdir -p "$cache/tmp"
exec 9>"$cache/.lock"
flock 9
# TMPDIR: where buildah keeps the cache mounts (the Go caches) and its
# temporary files.
export TMPDIR=$cache/tmp
bah=(buildah --root "$cache/storage" --runroot /run/csi-thin-image-build
	--storage-driver "${IMAGE_STORAGE_DRIVER:-overlay}")
# Containers left by a killed run (the storage is this script's alone).
"${bah[@]}" rm --all >/dev/null

have() { [[ -n $("${bah[@]}" images -q "$1" 2>/dev/null) ]]; }
# drop_other_tags REPO KEEP removes the images of older recipes (or Go
# versions, or CA bundles).
drop_other_tags() {
	local ref
	for ref in $("${bah[@]}" images --format '{{.Name}}:{{.Tag}}' --filter reference="$1"); do
		[[ $ref == "$2" ]] || "${bah[@]}" rmi "$ref" >/dev/null
	done
}

base=localhost/debian:$suite-slim-$rev
if ! have "$base"; then
	log "making $base (debootstrap from $mirror)"
	rootfs=$cache/tmp/rootfs
	rm -rf "$rootfs"
	nice -n 19 debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache/tmp/debootstrap.log" 2>&1 ||
		{ tail -20 "$cache/tmp/debootstrap.log" >&2; die "debootstrap failed"; }
	# As Debian's own images: the release, its updates and the security
	# archive; no package lists nor this host's name and resolver.
	rm -f "$rootfs/etc/apt/sources.list"
	cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: $mirror
		Suites: $suite $suite-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: ${mirror%/debian}/debian-security
		Suites: $suite-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
	# Slim as debian:bookworm-slim: no manuals, documentation (but the
	# copyright files) nor translations, now and in packages installed later.
	cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<-EOF
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/locale/*
		path-include /usr/share/locale/locale.alias
	EOF
	find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$rootfs/usr/share/man" "$rootfs/usr/share/info" -mindepth 1 -delete
	find "$rootfs/usr/share/locale" -mindepth 1 ! -type d ! -name locale.alias -delete
	find "$rootfs/usr/share/doc" "$rootfs/usr/share/locale" -mindepth 1 -type d -empty -delete
	: >"$rootfs/etc/hostname"
	: >"$rootfs/etc/resolv.conf"
	c=$("${bah[@]}" from scratch)
	mnt=$("${bah[@]}" mount "$c")
	cp -a "$rootfs/." "$mnt/"
	"${bah[@]}" umount "$c" >/dev/null
	"${bah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd bash "$c"
	"${bah[@]}" commit -q --rm "$c" "$base" >/dev/null
	rm -rf "$rootfs"
fi

goroot=$(go env GOROOT)
gover=$(go env GOVERSION)
ca=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca ]] || die "no CA bundle at $ca (Debian package ca-certificates)"
cakey=$(sha256sum "$ca" | cut -c1-8)
builder=localhost/golang:${gover#go}-$suite-$rev-$cakey
if ! have "$builder"; then
	log "making $builder ($goroot)"
	c=$("${bah[@]}" from "$base")
	mnt=$("${bah[@]}" mount "$c")
	cp -a "$goroot" "$mnt/usr/local/go"
	mkdir -p "$mnt/etc/ssl/certs" "$mnt/go"
	cp "$ca" "$mnt/etc/ssl/certs/ca-certificates.crt"
	"${bah[@]}" umount "$c" >/dev/null
	# As the golang images: GOPATH /go, the toolchain on PATH.
	"${bah[@]}" config --env GOPATH=/go --workingdir /go \
		--env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
	"${bah[@]}" commit -q --rm "$c" "$builder" >/dev/null
fi
drop_other_tags localhost/debian "$base"
drop_other_tags localhost/golang "$builder"

log "buildah bud $image (version $version)"
start=$SECONDS
nice -n 19 "${bah[@]}" bud --isolation chroot --layers \
	--build-arg GO_IMAGE="$builder" --build-arg BASE_IMAGE="$base" \
	--build-arg VERSION="$version" --build-arg GOPROXY="$(go env GOPROXY)" \
	-t "$image" "$root"
log "built $image in $((SECONDS - start)) s"
# The build stage's layers go (the Go caches make its rebuild quick); the
# tools' layer stays, a parent of the image.
"${bah[@]}" rmi --prune >/dev/null

# The checks run in a container of the image, as a user's pod would run it
# (buildah run: the image's own files, libraries and configuration).
ctr=$("${bah[@]}" from -q "$image")
trap '"${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
# in_image CMD...: run CMD in the image; its output (stdout and stderr
# together) and exit status are CMD's. Under load, the runtime can fail
# to seal the in-memory copy of itself that it runs from ("sealing memfd
# copy: Device or resource busy", the EBUSY of runc#2059) before CMD
# starts: that is no answer of CMD's, so the run is made again (twice at
# most), and said so.
in_image() {
	local out rc attempt
	for attempt in 1 2 3; do
		rc=0
		out=$("${bah[@]}" run --isolation chroot "$ctr" -- "$@" 2>&1) || rc=$?
		if ((rc != 0 && attempt < 3)) && [[ $out == *"sealing memfd copy"* || $out == *"cloned binary"* ]]; then
			log "the runtime failed before $1 started ($(printf '%s' "$out" | tail -1)); running it again"
			continue
		fi
		break
	done
	printf '%s\n' "$out"
	return "$rc"
}

# The comparisons run in the image and pass or fail by its exit status,
# never by what buildah relays of a short-lived process's stdout: that
# capture can come back empty under load while the tool exited 0. The
# output is printed too, for the failure message.
# shellcheck disable=SC2016 # expanded by the image's sh
got=$(in_image sh -c 'v=$(/csi-thin --version 2>&1); printf "%s\n" "$v"; [ "$v" = "csi-thin $1" ]' sh "$version") ||
	die "/csi-thin --version does not say \"csi-thin $version\" (printed \"$got\")"
[[ $("${bah[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image") == '[/csi-thin]' ]] ||
	die "the image's entrypoint is not /csi-thin"

declare -A checked=()
# check TOOL ARG... runs TOOL in the image; it must exit 0.
check() {
	local out
	checked[$1]=1
	out=$(in_image "$@" 2>&1) || die "in the image, $* failed: $(printf '%s' "$out" | tail -5)"
}
# expect PATTERN TOOL ARG...: also its output must match PATTERN (an
# extended regular expression, matched by grep -E in the image).
expect() {
	local want=$1 out rc=0
	shift
	checked[$1]=1
	# shellcheck disable=SC2016 # expanded by the image's sh
	out=$(in_image sh -c 'want=$1; shift; out=$("$@" 2>&1) || { printf "%s\n" "$out"; exit 100; }
		printf "%s\n" "$out"; printf "%s\n" "$out" | grep -Eq -- "$want" || exit 101' sh "$want" "$@" 2>&1) || rc=$?
	case $rc in
	0) ;;
	101) die "in the image, the output of $* does not match /$want/: \"$out\"" ;;
	*) die "in the image, $* failed (status $rc): $(printf '%s' "$out" | tail -5)" ;;
	esac
}

check sh -c 'exit 0'
check cp --version
check sleep 0
check mount -V
check umount -V
check findmnt -V
check losetup -V
check fstrim -V
check blockdev -V
check nsenter -V
# ext4 in a file: make, check, grow, read back, and fsck's dispatch by type.
check truncate -s 64M /tmp/ext4.img
check mkfs.ext4 -q -F -b 4096 /tmp/ext4.img
check e2fsck -fn /tmp/ext4.img
check truncate -s 96M /tmp/ext4.img
check resize2fs /tmp/ext4.img
expect 'Block count: +24576' dumpe2fs -h /tmp/ext4.img
check fsck.ext4 -n /tmp/ext4.img
check fsck -t ext4 -n /tmp/ext4.img
expect 'TYPE="ext4"' blkid -p /tmp/ext4.img
# btrfs and xfs the same way.
check truncate -s 256M /tmp/btrfs.img
check mkfs.btrfs -q /tmp/btrfs.img
expect 'TYPE="btrfs"' blkid -p /tmp/btrfs.img
check btrfs check --readonly /tmp/btrfs.img
check fsck.btrfs /tmp/btrfs.img
expect 'btrfs' wipefs -n /tmp/btrfs.img
check truncate -s 320M /tmp/xfs.img
check mkfs.xfs -q /tmp/xfs.img
expect 'TYPE="xfs"' blkid -p /tmp/xfs.img
check fsck.xfs /tmp/xfs.img
check xfs_growfs -V
check xfs_io -V
# The LVM backend's tools (no device-mapper needed to print versions).
expect 'LVM version: +[0-9]+\.' lvm version
expect '^[0-9]+\.[0-9]+' thin_check -V
expect '^[0-9]+\.[0-9]+' thin_dump -V
expect '^[0-9]+\.[0-9]+' thin_delta -V
# dmsetup prints its library's version, then fails where the kernel (or
# the container) has no device-mapper: the library line is the check.
checked[dmsetup]=1
# shellcheck disable=SC2016 # expanded by the image's sh
in_image sh -c 'dmsetup --version 2>&1 | grep -Eq "Library version: +[0-9]+\."' >/dev/null ||
	die "in the image, dmsetup --version does not print its library's version: $(in_image dmsetup --version 2>&1)"
for f in /etc/lvm/lvm.conf /etc/mke2fs.conf; do
	check test -s "$f"
done

# Every tool hack/image.sh puts in its image is checked here too.
mapfile -t listed < <(sed -n '/^tools=(/,/)/p' "$root/hack/image.sh" | tr -d '()' | sed 's/^tools=//' | tr -s ' \t' '\n' | grep .)
((${#listed[@]} > 20)) || die "could not read the tools list of hack/image.sh"
for t in "${listed[@]}"; do
	[[ -n ${checked[$t]:-} ]] || die "hack/image.sh lists $t, which test/image/build.sh does not check"
done
log "ok: $image runs /csi-thin $version and ${#listed[@]} tools of hack/image.sh"
