package lvm

import (
	"os"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestRawBlock writes and reads a block volume through its device, and
// checks that a snapshot restore of it reads back the same bytes.
func TestRawBlock(t *testing.T) {
	t.Parallel()
	b := shared(t)
	c := ctx(t)
	id, snap, restore := volID(t, "vol"), snapID(t, "snap"), volID(t, "restore")
	vol, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 64 * backend.MiB, AccessType: backend.AccessBlock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	if vol.AccessType != backend.AccessBlock {
		t.Fatalf("access type %q", vol.AccessType)
	}
	dev := target(t, b, id)
	const n = 32 * backend.MiB
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, err := copyPattern(f, n, 6)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("write %s: %v", dev, err)
	}
	if got := deviceSum(t, dev, n); got != want {
		t.Fatalf("read back checksum %s, want %s", got, want)
	}

	if _, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, SourceVolumeID: id}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteSnapshot(ctx(t), snap) })
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: restore, AccessType: backend.AccessBlock,
		Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), restore) })
	if got := deviceSum(t, target(t, b, restore), n); got != want {
		t.Fatalf("restored block volume checksum %s, want %s", got, want)
	}
}
