package transfer_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// memPool is a Streamer in memory: a snapshot is a payload; a received
// object is kept only when its stream verified to the trailer. It tests
// the transport (the real pools are tested in test/btrfs, where the same
// suite runs on btrfs).
type memPool struct {
	mu      sync.Mutex
	objects map[string][]byte
}

func (m *memPool) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	m.mu.Lock()
	data, ok := m.objects[id]
	_, parentOK := m.objects[parentID]
	m.mu.Unlock()
	if !ok {
		return backend.SendStats{}, fmt.Errorf("snapshot %s: %w", id, backend.ErrNotFound)
	}
	if parentID != "" && !parentOK {
		return backend.SendStats{}, fmt.Errorf("parent %s: %w", parentID, backend.ErrNotFound)
	}
	sw, err := volstream.NewWriter(w, volstream.Header{Kind: volstream.KindBtrfs, VolumeBytes: backend.GiB,
		AllocatedBytes: int64(len(data)), SnapshotID: id, ParentSnapshotID: parentID})
	if err != nil {
		return backend.SendStats{}, err
	}
	for p := data; len(p) > 0; {
		n := min(len(p), 64<<10)
		if _, err := sw.Write(p[:n]); err != nil {
			return backend.SendStats{}, err
		}
		p = p[n:]
		if err := ctx.Err(); err != nil {
			return backend.SendStats{}, err
		}
	}
	return backend.SendStats{StreamBytes: sw.StreamBytes()}, sw.Close()
}

func (m *memPool) receive(id string, r io.Reader) error {
	sr, err := volstream.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	if p := sr.Header().ParentSnapshotID; p != "" {
		m.mu.Lock()
		_, ok := m.objects[p]
		m.mu.Unlock()
		if !ok {
			return backend.ErrPrecondition
		}
	}
	data, err := io.ReadAll(sr)
	if err != nil || !sr.Verified() {
		return fmt.Errorf("%w: %v", backend.ErrInvalid, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objects[id] = data
	return nil
}

func (m *memPool) ReceiveVolume(ctx context.Context, req backend.VolumeRequest, r io.Reader) (*backend.Volume, error) {
	if err := m.receive(req.ID, r); err != nil {
		return nil, err
	}
	return &backend.Volume{ID: req.ID, Name: req.Name}, nil
}

func (m *memPool) ReceiveSnapshot(ctx context.Context, id, name string, r io.Reader) (*backend.Snapshot, error) {
	if err := m.receive(id, r); err != nil {
		return nil, err
	}
	return &backend.Snapshot{ID: id, Name: name}, nil
}

func (m *memPool) ids() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.objects {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

// TestSuiteInMemory runs the transport's suite between two memory pools.
func TestSuiteInMemory(t *testing.T) {
	snap, child := backend.SnapshotIDFor("base"), backend.SnapshotIDFor("child")
	src := &memPool{objects: map[string][]byte{snap: randomBytes(12<<20, 1), child: randomBytes(3<<20, 2)}}
	dst := &memPool{objects: map[string][]byte{}}
	transfertest.RunSuite(t, transfertest.Env{
		Source: src, Target: dst, Snapshot: snap, Child: child,
		Received: func(t *testing.T, v *backend.Volume, snapshot string) {
			if !bytes.Equal(dst.objects[v.ID], src.objects[snapshot]) {
				t.Fatalf("volume %s differs from snapshot %s", v.ID, snapshot)
			}
		},
		NothingLeft: func(t *testing.T, keep []string) {
			want := slices.Clone(keep)
			slices.Sort(want)
			if got := dst.ids(); !slices.Equal(got, want) {
				t.Fatalf("target holds %v, want %v", got, want)
			}
		},
	})
}
