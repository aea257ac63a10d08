#!/usr/bin/env bash
# Runs one program (normally a compiled Go test binary) inside a throwaway
# QEMU VM whose kernel has device-mapper thin provisioning, for hosts whose
# own kernel lacks it. The VM's exit status is the program's.
#
#   test/vm/run.sh [--disk SIZE] [--mem MiB] [--cpus N] [--timeout SEC] [--stage FILE]...
#                  [--workdir DIR] [--tap IFNAME] [--pidfile FILE] PROGRAM [ARGS...]
#
# --cpus N: the VM's virtual CPUs (default CSI_THIN_VM_CPUS, else 1). One
# is the default because the hosts that need this VM are small and busy:
# under TCG a second vCPU costs more host CPU than it saves (the vCPU
# threads contend for the host's cores, and a guest spinning on a lock
# whose holder's thread the host has descheduled burns its slice). The
# benchmark asks for 2, to keep its concurrency levels meaningful.
# CSI_THIN_VM_CPU_MODEL (default qemu64, QEMU's baseline x86-64) is the
# emulated CPU: -cpu max emulates AVX and friends, which programs then
# use, and which cost TCG more than the baseline instructions they
# replace. test/README.md "The test VM's CPUs" has the measurements.
#
# --workdir DIR: the VM's work dir is DIR (made if missing) instead of a
# temporary one, and it is left in place: a long-lived VM (a cluster node,
# test/cluster/vm-node.sh) and its host share files there while it runs.
# --tap IFNAME: a virtio network card on the host's tap device IFNAME
# (made by the caller, e.g. on a bridge); the kernel gets csi_thin.node,
# so the VM also loads what a Kubernetes node needs (init.sh).
# --pidfile FILE: QEMU writes its PID there (SIGTERM stops the VM).
#
# A VM whose kernel has not reached init within CSI_THIN_VM_BOOT_TIMEOUT
# seconds (default 300; a quiet host boots it in ~5) is killed and booted
# again, three boots at most.
#
# PROGRAM and every --stage FILE are copied into the VM's work dir: inside
# the VM, a staged FILE is /tmp/$(basename FILE) and the program runs from
# /tmp. Hand the VM staged paths, never paths in the checkout: the VM
# mounts its work dir over /tmp, which hides a checkout that lives there.
#
# Inside the VM:
#   - the host's root is mounted read-only (no Go toolchain needed inside);
#   - /tmp is a fresh read-write work dir shared over 9p (slow for big
#     writes: keep data on the disk);
#   - /dev/vda is a blank sparse virtio disk (default 5G) for LVM;
#   - there is no udev, so LVM runs with LVM_SYSTEM_DIR=/tmp/lvm whose
#     lvm.conf turns udev off and makes LVM create its own device nodes;
#   - the loopback interface is up (127.0.0.1, for tests that serve and
#     dial on it);
#   - env: CSI_THIN_VM=1, CSI_THIN_TEST_DEVICE=/dev/vda, TMPDIR=/run/tmp
#     (tmpfs: unix sockets and mount points do not belong on 9p), CI as on
#     the host.
#
# The kernel and initramfs are cached outside the clone in
# $CSI_THIN_VM_CACHE (default /var/cache/csi-thin/vm/<kernel-version>/).
# Software emulation (TCG) is used: KVM on this kind of host needs a special
# guest kernel, so expect ~10x slower than hardware.
set -euo pipefail

disk_size=5G mem=3072 cpus=${CSI_THIN_VM_CPUS:-1} timeout_s=${CSI_THIN_VM_TIMEOUT:-1500} staged=() workdir= tap= pidfile=
while [ $# -gt 0 ]; do
  case $1 in
    --disk) disk_size=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --stage) staged+=("$2"); shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --tap) tap=$2; shift 2 ;;
    --pidfile) pidfile=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--disk SIZE] [--mem MiB] [--cpus N] [--timeout SEC] [--stage FILE]... PROGRAM [ARGS...]" >&2; exit 2; }
program=$1; shift
[ -x "$program" ] || { echo "run.sh: $program is not an executable file" >&2; exit 2; }
for f in ${staged[@]+"${staged[@]}"}; do
  [ -f "$f" ] || { echo "run.sh: --stage $f is not a file" >&2; exit 2; }
  case $(basename "$f") in program|vm-run.sh|lvm|.exit-status) echo "run.sh: --stage $f: that name is the harness's own" >&2; exit 2 ;; esac
done

here=$(cd "$(dirname "$0")" && pwd)
"$here/ensure-tools.sh"
cache=$("$here/build-image.sh")

if [ -n "$workdir" ]; then
  mkdir -p "$workdir"
  work=$(cd "$workdir" && pwd)
  disk=$(mktemp /var/tmp/csi-thin-vm.XXXXXX.disk)
  cleanup() { rm -f "$disk"; }
else
  work=$(mktemp -d /var/tmp/csi-thin-vm.XXXXXX)
  disk=$work.disk
  cleanup() { rm -rf "$work" "$disk"; }
fi
trap cleanup EXIT

# The program and the staged files run from the work dir: the host root is
# visible in the VM, but not a checkout under /tmp (the work dir hides it).
cp "$program" "$work/program"
for f in ${staged[@]+"${staged[@]}"}; do cp -p "$f" "$work/"; done
mkdir -p "$work/lvm"
cp "$here/lvm.conf" "$work/lvm/lvm.conf"
{
  echo '#!/bin/sh'
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/tmp LVM_SYSTEM_DIR=/tmp/lvm CSI_THIN_VM=1 CSI_THIN_TEST_DEVICE=/dev/vda'
  # The kernel leaves lo down; nothing in the initramfs brings it up.
  echo 'ip link set lo up'
  # Temporary files (mount points, unix sockets) on tmpfs, not on 9p.
  echo 'mkdir -p /run/tmp && export TMPDIR=/run/tmp'
  printf 'export CI=%q\n' "${CI:-}"
  printf 'cd /tmp && ./program'
  for a in "$@"; do printf ' %q' "$a"; done
  echo
  echo 'echo $? > /tmp/.exit-status'
} > "$work/vm-run.sh"
chmod +x "$work/vm-run.sh"

extra=() append=
if [ -n "$tap" ]; then
  # A MAC of its own (from the tap's name): QEMU gives every VM the same
  # one, and two VMs on one bridge would answer each other's ARP.
  mac=52:54:00:$(printf %s "$tap" | sha256sum | sed -E 's/^(..)(..)(..).*/\1:\2:\3/')
  extra+=(-netdev "tap,id=net0,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=net0,mac=$mac")
  append=" csi_thin.node"
fi
qemu_pidfile=${pidfile:-$disk.pid}
qemu_status_file=$disk.status

# One boot of the VM, in the background; its QEMU's status lands in
# $qemu_status_file. The serial console ends lines with CRLF and the
# firmware clears the screen: strip both so that the program's output (go
# test's summary lines) reads as ordinary text on the host. sed -u: a
# block-buffered filter would hold back the last lines of a hung run.
# cryptomgr.notests: the kernel's crypto self-tests are no part of any
# test here, and under TCG one of them once spun a CPU for a whole run.
boot() {
  rm -f "$disk" "$work/.exit-status" "$work/.booted" "$qemu_pidfile" "$qemu_status_file"
  truncate -s "$disk_size" "$disk"
  { timeout "$timeout_s" qemu-system-x86_64 -accel tcg,thread=multi -cpu "${CSI_THIN_VM_CPU_MODEL:-qemu64}" -m "$mem" -smp "$cpus" \
      -nographic -no-reboot -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
      -append "console=ttyS0 quiet loglevel=3 panic=-1 cryptomgr.notests=1$append" ${extra[@]+"${extra[@]}"} \
      -pidfile "$qemu_pidfile" \
      -drive "file=$disk,if=virtio,format=raw,discard=unmap,cache=unsafe" \
      -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
      -virtfs "local,path=$work,mount_tag=work,security_model=passthrough" \
      </dev/null
    echo $? >"$qemu_status_file"
  } | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' &
  console=$!
}

# A kernel that hangs before init (seen once under TCG on a loaded host)
# would hold the run until its timeout: init.sh marks the work dir once it
# has mounted it, and a VM that has not within $boot_timeout seconds is
# killed and booted again.
boot_timeout=${CSI_THIN_VM_BOOT_TIMEOUT:-300} boot_attempts=3
start=$(date +%s)
set +e
for attempt in $(seq 1 "$boot_attempts"); do
  boot
  waited=0 hung=0
  while [ ! -e "$work/.booted" ] && kill -0 "$console" 2>/dev/null; do
    if [ "$waited" -ge "$boot_timeout" ]; then hung=1; break; fi
    sleep 1; waited=$((waited + 1))
  done
  if [ "$hung" = 0 ]; then wait "$console"; break; fi
  echo "run.sh: the VM did not reach its init within ${boot_timeout}s (boot $attempt of $boot_attempts): killing it" >&2
  kill "$(cat "$qemu_pidfile" 2>/dev/null)" 2>/dev/null
  wait "$console"
done
qemu_status=$(cat "$qemu_status_file" 2>/dev/null || echo '?')
rm -f "$qemu_status_file" "$disk.pid"
set -e
elapsed=$(( $(date +%s) - start ))
if [ -s "$work/.exit-status" ]; then
  status=$(cat "$work/.exit-status")
else
  echo "run.sh: the VM ended without the program's exit status (qemu/timeout status $qemu_status)" >&2
  status=98
fi
echo "run.sh: VM finished in ${elapsed}s, program exit status $status"
exit "$status"
