package lvm

import (
	"math"
	"os"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/node"
	"github.com/csi-thin/csi-thin/pkg/trim"
)

// TestScheduledTrimReturnsSpace: data written to ext4 mounted nodiscard
// (a StorageClass with mountOptions [nodiscard]) and then deleted stays
// mapped in the thin pool; one round of the node agent's scheduled trim,
// with the finder and locks the agent uses, finds the volume, discards
// the free space and the pool's data% falls back to where it was.
func TestScheduledTrimReturnsSpace(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	id := volID(t, "trim")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 512 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	dev := target(t, b, id)
	formatExt4(t, dev)
	dir := mount(t, dev, "ext4", "nodiscard")
	run(t, "sync")
	base := poolPercent(t, sharedVG, sharedPool)

	writePattern(t, dataFile(dir), dataBytes, 5)
	run(t, "sync")
	full := poolPercent(t, sharedVG, sharedPool)
	capacity, err := b.Capacity(c, "")
	if err != nil {
		t.Fatal(err)
	}
	expected := float64(dataBytes) / float64(capacity.TotalBytes) * 100
	if full-base < 0.9*expected {
		t.Fatalf("writing %d MiB raised pool data from %.2f%% to %.2f%%, want about +%.2f%%", dataBytes>>20, base, full, expected)
	}
	if err := os.Remove(dataFile(dir)); err != nil {
		t.Fatal(err)
	}
	run(t, "sync")
	time.Sleep(2 * time.Second)
	run(t, "sync")
	deleted := poolPercent(t, sharedVG, sharedPool)
	if full-deleted > 0.1*expected {
		t.Fatalf("pool data fell from %.2f%% to %.2f%% on the delete alone: the volume discards online", full, deleted)
	}

	tr := &trim.Trimmer{Find: trim.BlockVolumes(b, nil), Lock: node.New(b, node.Options{}).TryLockMount}
	results, err := tr.RunOnce(c)
	if err != nil {
		t.Fatal(err)
	}
	var got *trim.Result
	for i := range results {
		if results[i].VolumeID == id {
			got = &results[i]
		}
	}
	if got == nil || got.Err != nil || got.Skipped || got.Path != dir {
		t.Fatalf("the trim round did not trim %s at %s: %+v", id, dir, results)
	}
	run(t, "sync")
	trimmed := poolPercent(t, sharedVG, sharedPool)
	t.Logf("pool data: %.2f%% before, %.2f%% with %d MiB written, %.2f%% after the delete, %.2f%% after the trim (FITRIM: %d MiB in %s)",
		base, full, dataBytes>>20, deleted, trimmed, got.Bytes>>20, got.Duration.Round(time.Millisecond))
	if got.Bytes < uint64(dataBytes) {
		t.Errorf("FITRIM reported %d bytes, less than the %d deleted", got.Bytes, dataBytes)
	}
	if deleted-trimmed < 0.9*expected || math.Abs(trimmed-base) > 2 {
		t.Errorf("pool data %.2f%% after the trim, want it back near %.2f%% (from %.2f%%)", trimmed, base, deleted)
	}

	// Mounted with discard, the same volume is no longer the trim's.
	umount(t, dir)
	dir = mount(t, dev, "ext4", "discard")
	results, err = tr.RunOnce(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.VolumeID == id {
			t.Errorf("a volume mounted with discard at %s was trimmed: %+v", dir, r)
		}
	}
}
