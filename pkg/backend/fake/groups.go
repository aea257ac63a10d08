package fake

import (
	"context"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

var _ backend.GroupSnapshotter = (*Backend)(nil)

// CreateGroupSnapshot implements backend.GroupSnapshotter, one member after
// another (backend.SequentialGroups).
func (b *Backend) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	return backend.SequentialGroups{Backend: b}.CreateGroupSnapshot(ctx, req)
}

// DeleteGroupSnapshot implements backend.GroupSnapshotter.
func (b *Backend) DeleteGroupSnapshot(ctx context.Context, id string) error {
	return backend.SequentialGroups{Backend: b}.DeleteGroupSnapshot(ctx, id)
}

// GetGroupSnapshot implements backend.GroupSnapshotter.
func (b *Backend) GetGroupSnapshot(ctx context.Context, id string) (*backend.GroupSnapshot, error) {
	return backend.SequentialGroups{Backend: b}.GetGroupSnapshot(ctx, id)
}

// FailSnapshotsOf makes every new snapshot of volume id fail with err
// (nil clears it), to test what a failed member leaves behind.
func (b *Backend) FailSnapshotsOf(id string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.snapshotErr == nil {
		b.snapshotErr = map[string]error{}
	}
	b.snapshotErr[id] = err
}
