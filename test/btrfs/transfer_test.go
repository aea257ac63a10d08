package btrfs_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

// TestTransferBetweenPools runs the transfer suite (pkg/transfer/
// transfertest) between two real btrfs pools over TLS on loopback: a
// snapshot of 24 MiB arrives whole through the server into ReceiveVolume
// (and ReceiveSnapshot, then an incremental of 4 MiB more), every file
// with its checksum; each refusal (no or a foreign certificate, a source
// that is not the token's, a forged, misdirected, expired or replayed
// token, also after the server restarted, an unknown snapshot), a
// transfer cancelled by the target and one cut by the source leave no
// volume, snapshot, scratch or qgroup on the target.
func TestTransferBetweenPools(t *testing.T) {
	ctx := context.Background()
	src := btrfstest.NewPool(t, backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, backend.GiB, btrfs.Config{NodeName: "node-b"})

	v := newVolume(t, src, "data", 256*backend.MiB, backend.Source{})
	dir := src.VolumePath(v.ID)
	writePattern(t, filepath.Join(dir, "a"), 16*backend.MiB, 1)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writePattern(t, filepath.Join(dir, "sub", "b"), 8*backend.MiB, 2)
	base := newSnapshot(t, src, "base", v.ID)
	want := map[string]map[string]string{base.ID: treeSums(t, dir)}
	writePattern(t, filepath.Join(dir, "sub", "c"), 4*backend.MiB, 3)
	if err := os.Remove(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	child := newSnapshot(t, src, "child", v.ID)
	want[child.ID] = treeSums(t, dir)

	transfertest.RunSuite(t, transfertest.Env{
		Source: src, Target: dst, Snapshot: base.ID, Child: child.ID,
		Received: func(t *testing.T, got *backend.Volume, snapshot string) {
			if got.SizeBytes != v.SizeBytes {
				t.Fatalf("received volume of %d bytes, the source's is %d", got.SizeBytes, v.SizeBytes)
			}
			sameTree(t, "received "+got.ID, treeSums(t, dst.VolumePath(got.ID)), want[snapshot])
		},
		NothingLeft: func(t *testing.T, keep []string) {
			vols, err := dst.ListVolumes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			snaps, err := dst.ListSnapshots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var have []string
			for _, v := range vols {
				have = append(have, v.ID)
			}
			for _, s := range snaps {
				have = append(have, s.ID)
			}
			slices.Sort(have)
			wantIDs := slices.Sorted(slices.Values(keep))
			if !slices.Equal(have, wantIDs) {
				t.Fatalf("target holds %v, want %v", have, wantIDs)
			}
			assertNoLeftovers(t, dst, true)
		},
	})
}
