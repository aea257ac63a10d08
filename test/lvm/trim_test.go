package lvm

import (
	"math"
	"testing"
	"time"

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
	v := writeThenDelete(t, "trim", "nodiscard", 5)
	id, dev, dir := v.id, v.dev, v.dir
	base, full, expected := v.base, v.full, v.expected
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
