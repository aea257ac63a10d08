package lvm

import (
	"strings"
	"syscall"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestExpandWithSnapshot grows a volume that has a snapshot, grows its
// ext4 online (as NodeExpandVolume does) and checks that the snapshot
// still restores to the old size and content.
func TestExpandWithSnapshot(t *testing.T) {
	t.Parallel()
	b := shared(t)
	c := ctx(t)
	id, snap, restore := volID(t, "vol"), snapID(t, "snap"), volID(t, "restore")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 128 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	dev := target(t, b, id)
	formatExt4(t, dev)
	dir := mount(t, dev, "ext4", "discard")
	want := writePattern(t, dataFile(dir), 16*backend.MiB, 5)
	run(t, "sync")

	if _, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, SourceVolumeID: id}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteSnapshot(ctx(t), snap) })

	vol, err := b.ExpandVolume(c, id, 256*backend.MiB)
	if err != nil || vol.SizeBytes != 256*backend.MiB {
		t.Fatalf("expand = %+v, %v", vol, err)
	}
	run(t, "resize2fs", dev) // online grow of the mounted ext4
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if size := int64(st.Blocks) * st.Bsize; size < 200*backend.MiB {
		t.Fatalf("filesystem is %d bytes after expand, want about 256 MiB", size)
	}
	if got := fileSum(t, dataFile(dir)); got != want {
		t.Fatalf("data changed by the expansion")
	}

	s, err := b.GetSnapshot(c, snap)
	if err != nil || s.SizeBytes != 128*backend.MiB {
		t.Fatalf("snapshot after expand = %+v, %v; want the old size", s, err)
	}
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: restore, Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), restore) })
	m := mount(t, target(t, b, restore), "ext4", "ro,noload")
	if got := fileSum(t, dataFile(m)); got != want {
		t.Fatalf("restore after expand checksum %s, want %s", got, want)
	}
	if out := lvm(t, "lvs", "--noheadings", "-o", "lv_size", "--units", "b", "--nosuffix", sharedVG+"/"+restore); strings.TrimSpace(out) != "134217728" {
		t.Fatalf("restore size %s, want the snapshot's 134217728", out)
	}
}
