package btrfs_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/internal/tenant"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// publishToTenant bind-mounts a volume nosuid,nodev (as the node
// publishes it) where the tenant can reach it, and hands its root to the
// tenant; the mount goes when the test ends.
func publishToTenant(t *testing.T, path string) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mnt := filepath.Join(dir, "pod")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(path, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	if err := unix.Mount("", mnt, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(mnt, tenant.UID, tenant.UID); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// tenantPlan is what the tenant makes inside its volume, as one python
// program run as the tenant (names are bytes, some not UTF-8). argv:
// the volume, the pool's root, another volume, a file of the host.
const tenantPlan = `
import os, sys
os.chdir(sys.argv[1])
names = [b'-rf', b'a\nb', b'...', b' lead', b'\xff\xfe', b'x' * 255, b'back\\slash', b'*', b'$(reboot)', b'--help']
os.mkdir(b'names')
for n in names:
    with open(b'names/' + n, 'wb') as f:
        f.write(n)
os.makedirs(b'dir/deeper')
with open(b'dir/deeper/data', 'wb') as f:
    f.write(os.urandom(1 << 20))
os.link(b'dir/deeper/data', b'hardlink')
os.symlink(b'/etc/passwd', b'to-etc-passwd')
os.symlink(b'/etc', b'to-etc')
os.symlink(sys.argv[2].encode(), b'to-pool-root')
os.symlink(sys.argv[3].encode(), b'to-other-volume')
os.symlink(sys.argv[4].encode(), b'to-host-file')
os.symlink(b'../../../../../../../../etc/shadow', b'dotdot')
os.symlink(b'dangling/nowhere', b'dangling')
with open(b'sparse', 'wb') as f:
    f.truncate(1 << 30)
    f.seek(1 << 29)
    f.write(b'tenant' * 1000)
os.setxattr(b'dir/deeper/data', b'user.tenant', b'a value')
os.mkfifo(b'fifo')
os.chmod(b'dir', 0o700)
`

// entry describes one file for comparison: type, permissions, owner,
// size, content, link target, device, user xattrs, link count.
func describeTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("%v uid=%d gid=%d nlink=%d", fi.Mode(), st.Uid, st.Gid, st.Nlink)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			d += " -> " + target
		case fi.Mode()&os.ModeDevice != 0:
			d += fmt.Sprintf(" dev=%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
		case fi.Mode().IsRegular():
			d += fmt.Sprintf(" size=%d sha=%s", fi.Size(), fileSum(t, path))
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			d += " xattrs=" + userXattrs(t, path)
		}
		out[rel] = d
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func userXattrs(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("list xattrs of %s: %v", path, err)
	}
	var parts []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 4096)
		m, err := unix.Lgetxattr(path, name, v)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, name+"="+string(v[:m]))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func immutable(t *testing.T, path string) bool {
	t.Helper()
	out, err := exec.Command("lsattr", "-d", path).CombinedOutput()
	if err != nil {
		t.Fatalf("lsattr %s: %v: %s", path, err, out)
	}
	flags, _, _ := strings.Cut(string(out), " ")
	return strings.Contains(flags, "i")
}

// TestTenantVolumeStreams: a tenant (an unprivileged uid in its own
// volume, mounted nosuid,nodev) fills its volume with what could trip a
// send or a receive: nested subvolumes and a snapshot of one, symlinks to
// /etc, to the pool's root, to another volume and to a host file, hostile
// file names, a hard link, a 1 GiB sparse file, a user xattr, a fifo; it
// cannot make a device node or an immutable file, which root (a
// privileged pod) then plants. The snapshot's stream holds none of the
// bytes of the files outside the volume and stays small; the volume
// received on another pool holds exactly the snapshot's files (nested
// subvolumes are not part of it: see below), the host's files are
// unchanged, the received volume's limit holds against the tenant (also
// through a nested subvolume), and after the deletes neither pool holds
// anything; both keep serving.
func TestTenantVolumeStreams(t *testing.T) {
	btrfstest.Require(t)
	for _, c := range []string{"setpriv", "/usr/bin/python3", "lsattr", "chattr", "mknod", "dd"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("missing %s", c)
		}
	}
	ctx := context.Background()
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-b"})

	// What lies outside the tenant's volume, with bytes found nowhere else.
	hostFile := filepath.Join(t.TempDir(), "host-secret")
	hostSum := writePattern(t, hostFile, 64<<10, 101)
	other := newVolume(t, src, "other", 256*backend.MiB, backend.Source{})
	otherFile := filepath.Join(src.VolumePath(other.ID), "other-secret")
	otherSum := writePattern(t, otherFile, 64<<10, 102)
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}

	v := newVolume(t, src, "tenant", 256*backend.MiB, backend.Source{})
	mnt := publishToTenant(t, src.VolumePath(v.ID))
	if out, err := tenant.Run("/usr/bin/python3", "-c", tenantPlan, mnt, src.MountPath(), src.VolumePath(other.ID), hostFile); err != nil {
		t.Fatalf("tenant plan: %v: %s", err, out)
	}
	for _, argv := range [][]string{
		{"btrfs", "subvolume", "create", filepath.Join(mnt, "nested")},
		{"btrfs", "subvolume", "create", filepath.Join(mnt, "nested", "inner")},
		{"dd", "if=/dev/urandom", "of=" + filepath.Join(mnt, "nested", "inner", "data"), "bs=1M", "count=4", "status=none"},
		{"btrfs", "subvolume", "snapshot", filepath.Join(mnt, "nested"), filepath.Join(mnt, "nested-snap")},
	} {
		if out, err := tenant.Run(argv...); err != nil {
			t.Fatalf("tenant %v: %v: %s", argv, err, out)
		}
	}
	if out, err := tenant.Run("mknod", filepath.Join(mnt, "mem"), "c", "1", "1"); err == nil {
		t.Fatal("the tenant made a device node")
	} else if !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("mknod: %s", out)
	}
	if out, err := tenant.Run("chattr", "+i", filepath.Join(mnt, "hardlink")); err == nil {
		t.Fatal("the tenant made a file immutable")
	} else if !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("chattr: %s", out)
	}
	// What a privileged pod could plant.
	vol := src.VolumePath(v.ID)
	if err := unix.Mknod(filepath.Join(vol, "rootdev"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "frozen"), []byte("immutable"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chattr", "+i", filepath.Join(vol, "frozen")).CombinedOutput(); err != nil {
		t.Fatalf("chattr: %v: %s", err, out)
	}

	snap := newSnapshot(t, src, "tenant-snap", v.ID)
	snapDir := snapshotDir(src, snap.ID)
	want := describeTree(t, snapDir)
	stream, st := send(t, src, snap.ID, "")

	t.Run("the stream holds nothing from outside the volume", func(t *testing.T) {
		for what, path := range map[string]string{"host file": hostFile, "other volume": otherFile} {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off+64 <= len(b); off += 4096 {
				if bytes.Contains(stream, b[off:off+64]) {
					t.Fatalf("the stream holds bytes of the %s at %d", what, off)
				}
			}
		}
		if bytes.Contains(stream, bytes.TrimSpace(passwd)) {
			t.Fatal("the stream holds /etc/passwd")
		}
		// 1 MiB of data, 6 KB in the sparse file, names: not the 1 GiB.
		if st.StreamBytes > 4*backend.MiB {
			t.Fatalf("stream of %d bytes for ~1 MiB of data", st.StreamBytes)
		}
	})

	got, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("restored"), Name: "restored"}, bytes.NewReader(stream))
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	restored := dst.VolumePath(got.ID)

	t.Run("the received volume holds the snapshot's files", func(t *testing.T) {
		have := describeTree(t, restored)
		// Nested subvolumes: in a snapshot they are empty directories
		// (btrfs snapshots do not descend into them); btrfs send does not
		// send those placeholders at all.
		for _, n := range []string{"nested", "nested-snap"} {
			if w := want[n]; !strings.HasPrefix(w, "drwx") {
				t.Fatalf("%s in the snapshot: %q, want an empty directory", n, w)
			}
			if e, err := os.ReadDir(filepath.Join(snapDir, n)); err != nil || len(e) != 0 {
				t.Fatalf("%s in the snapshot holds %v (%v)", n, e, err)
			}
			if _, ok := have[n]; ok {
				t.Fatalf("%s was received: %q", n, have[n])
			}
			delete(want, n)
		}
		// The root's timestamps and the immutable flag are not compared
		// here: the flag is checked below.
		if len(have) != len(want) {
			t.Fatalf("%d entries received, the snapshot has %d:\n%v\n%v", len(have), len(want), have, want)
		}
		for k, w := range want {
			if have[k] != w {
				t.Errorf("%q: received %q, the snapshot has %q", k, have[k], w)
			}
		}
		if inode(t, filepath.Join(restored, "hardlink")) != inode(t, filepath.Join(restored, "dir", "deeper", "data")) {
			t.Error("the hard link became two files")
		}
		if b := allocatedBlocks(t, filepath.Join(restored, "sparse")); b > backend.MiB {
			t.Errorf("the 1 GiB sparse file has %d bytes allocated after the receive", b)
		}
		// btrfs send (protocol 1) carries no inode flags: the received
		// copy of an immutable file is not immutable.
		if !immutable(t, filepath.Join(snapDir, "frozen")) || immutable(t, filepath.Join(restored, "frozen")) {
			t.Error("want frozen immutable in the snapshot and not in the received volume")
		}
	})

	t.Run("the host's files are unchanged", func(t *testing.T) {
		if fileSum(t, hostFile) != hostSum || fileSum(t, otherFile) != otherSum {
			t.Fatal("a file outside the volume changed")
		}
		now, err := os.ReadFile("/etc/passwd")
		if err != nil || !bytes.Equal(now, passwd) {
			t.Fatalf("/etc/passwd changed (%v)", err)
		}
	})

	t.Run("the received volume's limit holds against the tenant", func(t *testing.T) {
		rmnt := publishToTenant(t, restored)
		if out, err := tenant.Run("btrfs", "subvolume", "create", filepath.Join(rmnt, "nested")); err != nil {
			t.Fatalf("nested subvolume: %v: %s", err, out)
		}
		for _, path := range []string{filepath.Join(rmnt, "fill"), filepath.Join(rmnt, "nested", "fill")} {
			out, err := tenant.Run("dd", "if=/dev/zero", "of="+path, "bs=1M", "count=512", "conv=fsync", "status=none")
			if err == nil || !strings.Contains(out, "Disk quota exceeded") {
				t.Fatalf("512 MiB into %s of a 256 MiB volume: %v: %s", path, err, out)
			}
			os.Remove(path)
		}
		unix.Unmount(rmnt, unix.MNT_DETACH)
	})

	unix.Unmount(mnt, unix.MNT_DETACH)
	if err := dst.DeleteVolume(ctx, got.ID); err != nil {
		t.Fatalf("delete the received volume: %v", err)
	}
	if err := src.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("delete the snapshot: %v", err)
	}
	// Root's immutable file inside: the driver deletes the subvolume
	// whole, flags inside it do not stop it.
	if err := src.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("delete the tenant's volume: %v", err)
	}
	if err := src.DeleteVolume(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*btrfs.Pool{src, dst} {
		assertNoLeftovers(t, p, true)
		if vols, err := p.ListVolumes(ctx); err != nil || len(vols) != 0 {
			t.Fatalf("%s holds %v (%v)", p.NodeName(), vols, err)
		}
		again := newVolume(t, p, "after", 64*backend.MiB, backend.Source{})
		if err := p.DeleteVolume(ctx, again.ID); err != nil {
			t.Fatal(err)
		}
	}
}
