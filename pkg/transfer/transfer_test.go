package transfer_test

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

// TestSuiteInMemory runs the transport's suite between two memory pools.
func TestSuiteInMemory(t *testing.T) {
	snap, child := backend.SnapshotIDFor("base"), backend.SnapshotIDFor("child")
	src := &transfertest.MemPool{Objects: map[string][]byte{snap: randomBytes(12<<20, 1), child: randomBytes(3<<20, 2)}}
	dst := &transfertest.MemPool{Objects: map[string][]byte{}}
	transfertest.RunSuite(t, transfertest.Env{
		Source: src, Target: dst, Snapshot: snap, Child: child,
		Received: func(t *testing.T, v *backend.Volume, snapshot string) {
			if !bytes.Equal(dst.Objects[v.ID], src.Objects[snapshot]) {
				t.Fatalf("volume %s differs from snapshot %s", v.ID, snapshot)
			}
		},
		NothingLeft: func(t *testing.T, keep []string) {
			want := slices.Clone(keep)
			slices.Sort(want)
			if got := dst.IDs(); !slices.Equal(got, want) {
				t.Fatalf("target holds %v, want %v", got, want)
			}
		},
	})
}
