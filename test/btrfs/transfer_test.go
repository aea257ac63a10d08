package btrfs_test

import (
	"os"
	"path/filepath"
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
		Source: src, Target: dst, Snapshot: base.ID, Child: child.ID, AccessType: backend.AccessMount,
		Received: func(t *testing.T, got *backend.Volume, snapshot string) {
			if got.SizeBytes != v.SizeBytes {
				t.Fatalf("received volume of %d bytes, the source's is %d", got.SizeBytes, v.SizeBytes)
			}
			sameTree(t, "received "+got.ID, treeSums(t, dst.VolumePath(got.ID)), want[snapshot])
		},
		NothingLeft: func(t *testing.T, keep []string) {
			transfertest.Holds(t, dst, keep)
			assertNoLeftovers(t, dst, true)
		},
	})
}
