#!/usr/bin/env bash
# ensure-packages.sh — install the Debian packages a part of the project
# needs, when any is missing (as root, through apt-get). The one place that
# says which packages each part needs:
#
#   hack/ensure-packages.sh SET...
#
#   demo     make demo: the driver on a loop-file btrfs pool
#   host     make test's host suites: btrfs, ext4/xfs tools, loop devices,
#            gcc for -race, make and git
#   vm       test/vm: QEMU, the initramfs tools, LVM thin for the VM's image, ip (the VM brings its loopback up)
#   cluster  test/cluster: containerd, CNI plugins, iptables, gcc (pause)
#   image    hack/image.sh: the storage tools copied into the image
#   buildah  test/image/build.sh: the Dockerfile built with buildah from
#            base images made with debootstrap
#
# Installed packages are detected with dpkg-query, so a package removed by
# hand is installed again. Not root and something missing: fails, naming the
# apt-get command to run. Concurrent callers (make test runs suites side by
# side) take turns on a lock, and apt-get waits for dpkg's own lock.
set -euo pipefail

packages_of() {
	case $1 in
	demo) echo btrfs-progs util-linux mount kmod ;;
	host) echo btrfs-progs e2fsprogs xfsprogs util-linux mount kmod make git gcc libc6-dev ;;
	vm) echo qemu-system-x86 busybox-static cpio kmod lvm2 thin-provisioning-tools e2fsprogs xfsprogs util-linux iproute2 ;;
	cluster) echo containerd runc containernetworking-plugins busybox-static iptables conntrack socat ethtool \
		gcc libc6-dev openssl iproute2 util-linux mount curl jq ;;
	image) echo btrfs-progs xfsprogs e2fsprogs lvm2 thin-provisioning-tools util-linux mount ;;
	buildah) echo buildah debootstrap debian-archive-keyring ca-certificates ;;
	*) echo "ensure-packages: unknown set $1 (demo, host, vm, cluster, image, buildah)" >&2; return 2 ;;
	esac
}

installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *"ok installed" ]]
}

(($#)) || { echo "usage: $0 SET... (demo, host, vm, cluster, image, buildah)" >&2; exit 2; }
wanted=()
for set in "$@"; do
	list=$(packages_of "$set") || exit 2
	read -ra pkgs <<<"$list"
	wanted+=("${pkgs[@]}")
done

missing() {
	local p
	for p in "${wanted[@]}"; do installed "$p" || echo "$p"; done | sort -u
}
mapfile -t todo < <(missing)
((${#todo[@]})) || exit 0

if ((EUID != 0)); then
	echo "ensure-packages: missing ${todo[*]}; as root: apt-get install ${todo[*]}" >&2
	exit 1
fi
mkdir -p /var/lock
exec 9>/var/lock/csi-thin-ensure-packages.lock
flock 9
# Another caller may have installed them while this one waited.
mapfile -t todo < <(missing)
((${#todo[@]})) || exit 0
echo "ensure-packages: installing ${todo[*]}" >&2
apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
install() { DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${todo[@]}" >/dev/null; }
# The package lists on hand first (quick); fresh ones when they are stale or absent.
install 2>/dev/null || { "${apt[@]}" update && install; }
mapfile -t todo < <(missing)
((${#todo[@]} == 0)) || { echo "ensure-packages: still missing after apt-get: ${todo[*]}" >&2; exit 1; }
