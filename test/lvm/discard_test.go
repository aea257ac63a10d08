package lvm

import (
	"math"
	"os"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestDiscardReclaim: data written to ext4 mounted with discard and then
// deleted goes back to the pool (passdown), so data% returns to where it
// was. (A snapshot would pin those blocks; that is documented, not tested
// as a failure.)
func TestDiscardReclaim(t *testing.T) {
	v := writeThenDelete(t, "vol", "discard", 4)
	base, full := v.base, v.full
	// ext4 issues online discards when the transaction that freed the
	// blocks commits; sync forces that commit.
	var now float64
	deadline := time.Now().Add(60 * time.Second)
	for {
		run(t, "sync")
		now = poolPercent(t, sharedVG, sharedPool)
		if math.Abs(now-base) <= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("pool data: %.2f%% before, %.2f%% with %d MiB written, %.2f%% after delete", base, full, dataBytes>>20, now)
	if math.Abs(now-base) > 2 {
		t.Fatalf("pool data %.2f%% after deleting the data, want within 2%% of %.2f%%", now, base)
	}
}

// writtenVolume is a 512 MiB ext4 volume of the shared pool, mounted at
// dir, into which dataBytes were written and then deleted; base and full
// are the pool's data% before and with the data, expected the rise the
// data alone accounts for.
type writtenVolume struct {
	id, dev, dir         string
	base, full, expected float64
}

// writeThenDelete makes a writtenVolume mounted with mountOpts, checking
// that the write really raised the pool's data%.
func writeThenDelete(t *testing.T, name, mountOpts string, seed uint64) writtenVolume {
	t.Helper()
	b := shared(t)
	c := ctx(t)
	id := volID(t, name)
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 512 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	dev := target(t, b, id)
	formatExt4(t, dev)
	dir := mount(t, dev, "ext4", mountOpts)
	run(t, "sync")
	base := poolPercent(t, sharedVG, sharedPool)

	writePattern(t, dataFile(dir), dataBytes, seed)
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
	return writtenVolume{id: id, dev: dev, dir: dir, base: base, full: full, expected: expected}
}
