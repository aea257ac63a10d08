#!/usr/bin/env bash
# Installs what the VM harness needs (Debian packages) when it is missing.
set -euo pipefail
need=(qemu-system-x86_64 busybox cpio modprobe depmod lvm thin_check mkfs.ext4 mkfs.xfs blkid losetup)
for b in "${need[@]}"; do
  if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ] && [ ! -x "/sbin/$b" ]; then
    echo "ensure-tools: installing VM harness packages ($b is missing)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 busybox-static cpio kmod lvm2 thin-provisioning-tools e2fsprogs xfsprogs util-linux >/dev/null
    break
  fi
done
