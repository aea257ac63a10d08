package transfertest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// MemPool is a Streamer in memory: a snapshot is a payload in Objects; a
// received object is kept only when its stream verified to the trailer.
// It tests the transport alone (the real pools are tested in test/btrfs,
// where the same suite runs on btrfs).
type MemPool struct {
	mu      sync.Mutex
	Objects map[string][]byte
}

func (m *MemPool) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	m.mu.Lock()
	data, ok := m.Objects[id]
	_, parentOK := m.Objects[parentID]
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

func (m *MemPool) receive(id string, r io.Reader) error {
	sr, err := volstream.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	if p := sr.Header().ParentSnapshotID; p != "" {
		m.mu.Lock()
		_, ok := m.Objects[p]
		m.mu.Unlock()
		if !ok {
			return backend.ErrPrecondition
		}
	}
	data, err := io.ReadAll(sr)
	if err != nil || !sr.Verified() {
		return fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Objects[id] = data
	return nil
}

func (m *MemPool) ReceiveVolume(ctx context.Context, req backend.VolumeRequest, r io.Reader) (*backend.Volume, error) {
	if err := m.receive(req.ID, r); err != nil {
		return nil, err
	}
	return &backend.Volume{ID: req.ID, Name: req.Name}, nil
}

func (m *MemPool) ReceiveSnapshot(ctx context.Context, id, name string, r io.Reader) (*backend.Snapshot, error) {
	if err := m.receive(id, r); err != nil {
		return nil, err
	}
	return &backend.Snapshot{ID: id, Name: name}, nil
}

func (m *MemPool) IDs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.Objects {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
