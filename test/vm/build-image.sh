#!/usr/bin/env bash
# Builds (once) the VM's kernel and busybox initramfs from Debian's
# linux-image-amd64 and prints the cache directory that holds them.
# The cache lives outside the clone so every checkout and CI run shares it:
#   ${CSI_THIN_VM_CACHE:-/var/cache/csi-thin/vm}/<kernel-version>/{vmlinuz,initrd.gz}
#
# CSI_THIN_VM_KERNEL=backports takes the kernel of the release's
# backports suite instead (bookworm-backports: 6.12, where the release's
# own is 6.1), through an apt configuration of its own under the cache:
# the host's package sources are not touched.
set -euo pipefail
root=${CSI_THIN_VM_CACHE:-/var/cache/csi-thin/vm}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root"

apt_opts=()
case ${CSI_THIN_VM_KERNEL:-stable} in
  stable) ;;
  backports)
    # shellcheck source=/dev/null
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")-backports
    # Images of their own, so that no stable run ever boots one.
    root=$root/backports
    apt_dir=$root/.apt-$suite
    mkdir -p "$apt_dir/lists/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" >"$apt_dir/sources.list"
    # Only this list, and no binary caches built from the host's lists.
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    ;;
  *) echo "build-image: CSI_THIN_VM_KERNEL=$CSI_THIN_VM_KERNEL: want stable or backports" >&2; exit 2 ;;
esac

kernel_package() {
  { apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null || true; } | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
pkg=$(kernel_package)
if [ -z "$pkg" ]; then
  apt-get "${apt_opts[@]}" update -qq >&2
  pkg=$(kernel_package)
fi
if [ -z "$pkg" ]; then
  # Offline and no package lists: fall back to any kernel built before.
  last=$(ls -d "$root"/[0-9]*/ 2>/dev/null | sort -V | tail -1)
  [ -n "$last" ] && [ -f "$last/initrd.gz" ] || { echo "build-image: cannot find a Debian kernel package" >&2; exit 1; }
  echo "${last%/}"; exit 0
fi
kv=${pkg#linux-image-}
# The init script is part of the image: rebuild when it changes.
stamp=$(sha256sum "$here/init.sh" "$0" | sha256sum | cut -c1-12)
dir=$root/$kv
if [ -f "$dir/initrd.gz" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$dir"; exit 0
fi

exec 9>"$root/.lock"
flock 9
if [ -f "$dir/initrd.gz" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$dir"; exit 0
fi
# A build downloads the package: fresh lists first, since a suite's mirror
# keeps only its latest kernel (backports moves on without the host's
# lists noticing).
if apt-get "${apt_opts[@]}" update -qq >&2; then
  pkg=$(kernel_package)
  [ -n "$pkg" ] || { echo "build-image: no Debian kernel package in the refreshed lists" >&2; exit 1; }
  kv=${pkg#linux-image-}
  dir=$root/$kv
  if [ -f "$dir/initrd.gz" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$dir"; exit 0
  fi
fi
echo "build-image: building VM image for kernel $kv in $dir" >&2
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  apt-get "${apt_opts[@]}" download "$pkg" >/dev/null
  mkdir kpkg
  dpkg-deb -x "$pkg"_*.deb kpkg
  depmod -b "$PWD/kpkg" "$kv"
  cp "kpkg/boot/vmlinuz-$kv" vmlinuz
  mkdir -p initrd/{bin,proc,sys,dev,mnt/root,mods/node}
  cp "$(command -v busybox)" initrd/bin/busybox
  for a in sh mount insmod chroot poweroff sync mkdir echo cat; do ln -s busybox "initrd/bin/$a"; done
  i=0
  # Modules in dependency order; insmod'ed one by one at boot (no modprobe
  # in the initramfs). loop is a module on Debian.
  # add_modules DIR MODULE...: MODULE and what it needs, into DIR.
  add_modules() {
    local dir=$1 m f base; shift
    for m in "$@"; do
      for f in $(modprobe -d "$PWD/kpkg" -S "$kv" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
        base=$(basename "$f")
        [ -n "$(find initrd/mods -name "*-$base")" ] && continue
        i=$((i+1)); cp "$f" "$dir/$(printf %03d $i)-$base"
      done
    done
  }
  add_modules initrd/mods dm-thin-pool dm-snapshot loop virtio_blk virtio_pci ext4 xfs 9p 9pnet_virtio
  # A VM that joins the test cluster as a node (test/cluster/vm-node.sh,
  # kernel argument csi_thin.node) also needs a network card, what
  # containerd and the CNI bridge plugin use, and kube-proxy's iptables
  # (nf_tables) rules.
  add_modules initrd/mods/node virtio_net overlay bridge veth br_netfilter \
    nf_tables nft_compat nft_chain_nat nf_nat nf_conntrack nft_ct nft_masq \
    xt_tcpudp xt_conntrack xt_MASQUERADE xt_comment xt_mark xt_addrtype xt_multiport xt_nat xt_statistic \
    xt_physdev ipt_REJECT nft_reject_ipv4
  # Debian ships modules compressed (.ko.xz); busybox insmod needs them plain.
  for f in initrd/mods/*.ko.xz initrd/mods/node/*.ko.xz; do [ -e "$f" ] && xz -d "$f"; done
  for f in initrd/mods/*.ko.zst initrd/mods/node/*.ko.zst; do [ -e "$f" ] && zstd -q -d --rm "$f"; done
  install -m 0755 "$here/init.sh" initrd/init
  (cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz)
  echo "$stamp" > stamp
)
rm -rf "$dir"
mkdir -p "$dir"
mv "$tmp/vmlinuz" "$tmp/initrd.gz" "$tmp/stamp" "$dir/"
echo "$dir"
