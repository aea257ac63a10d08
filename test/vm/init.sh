#!/bin/sh
# PID 1 of the test VM (busybox): load modules, mount the host root
# read-only and the work dir read-write, run /tmp/vm-run.sh, power off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" 2>/dev/null; done
case " $(cat /proc/cmdline) " in
  *" csi_thin.node "*) for m in /mods/node/*.ko; do insmod "$m" 2>/dev/null; done ;;
esac
o=trans=virtio,version=9p2000.L,msize=512000
# The host root is read-only and does not change under a test run, so the
# guest may cache it (cache=loose): without that every exec of lvm re-reads
# its binary and libraries over 9p, which dominated the suite's time.
if ! mount -t 9p -o $o,ro,cache=loose hostroot /mnt/root; then
  echo "VM-INIT: cannot mount the host root"; poweroff -f
fi
for d in proc sys dev; do mount --bind /$d /mnt/root/$d; done
# /run holds TMPDIR and the tests' small loop-file pools.
mount -t tmpfs -o size=75% run /mnt/root/run
mount -t 9p -o $o,cache=none work /mnt/root/tmp
# run.sh waits for this mark to tell a booted VM from a hung kernel.
: >/mnt/root/tmp/.booted
# The host root becomes the VM's root mount, as switch_root makes it, not
# only a chroot: a process that joins a mount namespace (setns, as runc
# exec does for `kubectl exec` on a VM node of the test cluster) is put
# at the namespace's root mount, which would otherwise be this initramfs.
# This shell keeps the initramfs as its root (busybox for the end) and
# the moved host root as its working directory.
cd /mnt/root
mount -o move . /
chroot . /tmp/vm-run.sh
echo "VM-EXIT-STATUS=$(cat tmp/.exit-status 2>/dev/null)"
sync
poweroff -f
