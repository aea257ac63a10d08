#!/usr/bin/env bash
# image.sh — assemble the csi-thin image without Docker or a registry and
# import it into the node's containerd (k8s.io namespace):
#   a static csi-thin binary + the host tools it (and mount-utils) execs,
#   with their shared libraries (test/cluster/addbins.sh), made into a
#   single-layer OCI image (test/cluster/mkimg.sh).
# The name and tag come from hack/versions.env (localhost/csi-thin:dev).
# IMAGE_OUT=/path/x.tar writes the OCI archive instead of importing it
# (no containerd needed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/hack/versions.env"
cluster=$root/test/cluster
image=${CSI_THIN_IMAGE}:${CSI_THIN_TAG}
work=${IMAGE_WORK:-$root/_output/image}
rootfs=$work/rootfs

# Host tools the image carries. The btrfs backend: btrfs, mkfs.btrfs,
# losetup, blkid, fstrim; the node service (mount-utils): mount, umount,
# blkid, fsck*, mkfs.*, resize2fs, xfs_growfs, blockdev, dumpe2fs, xfs_io;
# the LVM backend: lvm, thin_check, dmsetup, and thin_dump and thin_delta
# (its volume streams: the mapped blocks of a snapshot); nsenter for
# --command-prefix.
# fsck.xfs and fsck.btrfs are shell scripts, hence sh.
tools=(sh cp sleep mount umount findmnt blkid losetup wipefs fstrim blockdev nsenter
	btrfs mkfs.btrfs fsck.btrfs mkfs.ext4 fsck fsck.ext4 e2fsck resize2fs dumpe2fs
	mkfs.xfs fsck.xfs xfs_growfs xfs_io lvm thin_check thin_dump thin_delta dmsetup)

# A fresh machine may lack some of them: they come from Debian packages.
"$root/hack/ensure-packages.sh" image

rm -rf "$rootfs"
mkdir -p "$rootfs"/{etc,tmp,run/lock,var/lib/csi-thin}
chmod 1777 "$rootfs/tmp"
version=$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)
# -tags grpcnotrace as in the Makefile (docs/performance.md, RSS).
(cd "$root" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags grpcnotrace \
	-ldflags "-s -w -X github.com/csi-thin/csi-thin/pkg/driver.Version=$version" \
	-o "$rootfs/csi-thin" ./cmd/csi-thin)
bash "$cluster/addbins.sh" "$rootfs" "${tools[@]}"
# Data files the tools read.
cp -r /etc/lvm "$rootfs/etc/lvm"
[[ -e /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$rootfs/etc/"
ln -sf /proc/self/mounts "$rootfs/etc/mtab"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"

if [[ -n ${IMAGE_OUT:-} ]]; then
	MKIMG_OUT=$IMAGE_OUT bash "$cluster/mkimg.sh" "$image" "$rootfs" /csi-thin
else
	bash "$cluster/mkimg.sh" "$image" "$rootfs" /csi-thin
fi
echo "$image ($version, $(du -sh "$rootfs" | cut -f1))"
