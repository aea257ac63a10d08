package lvm

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

// TestTransferBetweenPoolsLVM runs the transfer suite (pkg/transfer/
// transfertest) between two real LVM thin pools over TLS on loopback: a
// snapshot of a 256 MiB block volume holding 12 MiB (three ranges, holes
// between) arrives through the server into ReceiveVolume (and
// ReceiveSnapshot, then an incremental of 1 MiB rewritten, 2 MiB added
// and 1 MiB discarded) with the source snapshot's checksum over the whole
// device and its size, holding about what the stream carried, not the
// volume's size; each refusal (no or a foreign certificate, a source that
// is not the token's, a forged, misdirected, expired or replayed token,
// also after the server restarted, an unknown snapshot), a transfer
// cancelled by the target and one cut by the source leave the target
// exactly the volumes and snapshots received before and no other LV; the
// source is left with no metadata snapshot reserved and its snapshots
// inactive.
func TestTransferBetweenPoolsLVM(t *testing.T) {
	t.Parallel()
	const (
		srcVG, dstVG = "csithin_xsrc", "csithin_xdst"
		mib          = backend.MiB
		size         = 256 * mib
	)
	// Each pool admits a new volume only with its size free, and the
	// target holds up to five of them at once (most of them thin snapshots
	// or holes), so 1 GiB each is plenty.
	src := loopPool(t, srcVG, backend.GiB, func(c *lvmthin.Config) { c.NodeName = "node-a" })
	dst := loopPool(t, dstVG, backend.GiB, func(c *lvmthin.Config) { c.NodeName = "node-b" })

	// The base snapshot carries more than the 4 MiB after which the suite
	// cuts a send.
	vol, dev := blockVolume(t, src, size, span{0, 8 * mib, 11}, span{100 * mib, 2 * mib, 12}, span{size - 2*mib, 2 * mib, 13})
	base := snapshot(t, src, vol, "base")
	want := map[string]string{base: fileSum(t, dev)}
	// What a received copy holds mapped: the stream's ranges. The child's
	// stream carries the MiB discarded since the base as zeros (the format
	// has no discard), written onto the base's copy, so it stays mapped.
	holds := map[string]int64{base: 12 * mib}
	writeAt(t, dev, 4*mib, mib, 14)
	writeAt(t, dev, 180*mib, 2*mib, 15)
	discard(t, dev, 100*mib, mib)
	child := snapshot(t, src, vol, "child")
	want[child] = fileSum(t, dev)
	holds[child] = 14 * mib
	if want[child] == want[base] {
		t.Fatal("the child snapshot reads as the base: the writes after the base did not land")
	}

	transfertest.RunSuite(t, transfertest.Env{
		Source: src, Target: dst, Snapshot: base, Child: child, AccessType: backend.AccessBlock,
		Received: func(t *testing.T, got *backend.Volume, snapshot string) {
			if got.SizeBytes != size {
				t.Fatalf("received volume of %d bytes, the source's is %d", got.SizeBytes, size)
			}
			// The whole device: one of another size hashes otherwise too.
			if h := fileSum(t, target(t, dst, got.ID)); h != want[snapshot] {
				t.Fatalf("received volume %s has checksum %s, snapshot %s has %s", got.ID, h, snapshot, want[snapshot])
			}
			if m, w := mappedBytes(t, dstVG, got.ID), holds[snapshot]; m < w-mib || m > w+w/100+mib {
				t.Fatalf("received volume holds %d bytes, want %d (-1 MiB, +1%% +1 MiB): holes must stay unallocated", m, w)
			}
		},
		NothingLeft: func(t *testing.T, keep []string) {
			transfertest.Holds(t, dst, keep)
			// No LV of a refused or unfinished receive either: those are
			// invisible to the listings while tagged receiving.
			wantLVs := slices.Sorted(slices.Values(append(slices.Clone(keep), "pool")))
			if have := slices.Sorted(slices.Values(lvNames(t, dstVG))); !slices.Equal(have, wantLVs) {
				t.Fatalf("target's LVs %v, want %v", have, wantLVs)
			}
		},
	})

	// The source's sends end on their own (the server does not wait for
	// them when it stops): a cancelled one may still be unwinding.
	var left string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		left = sourceLeftovers(t, srcVG, base, child)
		if left == "" || time.Now().After(deadline) {
			break
		}
	}
	if left != "" {
		t.Fatalf("the source after the transfers: %s", left)
	}
}

// sourceLeftovers says what sends left on pool vg: a reserved metadata
// snapshot or an active snapshot; "" if nothing.
func sourceLeftovers(t *testing.T, vg string, snapshots ...string) string {
	t.Helper()
	if heldMetadataRoot(t, vg) {
		return "a metadata snapshot is still reserved"
	}
	for _, s := range snapshots {
		if attr := strings.TrimSpace(lvm(t, "lvs", "--noheadings", "-o", "lv_active", vg+"/"+s)); attr == "active" {
			return "snapshot " + s + " is still active"
		}
	}
	return ""
}
