package freeze

import (
	"context"
	"fmt"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateGroupSnapshot implements backend.GroupSnapshotter for a pool whose
// backend takes group snapshots: member by member through this Pool's
// CreateSnapshot, so each member is frozen exactly as a snapshot of its
// own would be (not all members at once: on the kernels this is tested
// on, an lvcreate of an origin whose filesystem is already frozen fails
// busy, see docs/consistency.md).
func (p *Pool) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	if _, err := p.groups(); err != nil {
		return nil, err
	}
	return backend.SequentialGroups{Backend: p}.CreateGroupSnapshot(ctx, req)
}

// DeleteGroupSnapshot implements backend.GroupSnapshotter.
func (p *Pool) DeleteGroupSnapshot(ctx context.Context, id string) error {
	g, err := p.groups()
	if err != nil {
		return err
	}
	return g.DeleteGroupSnapshot(ctx, id)
}

// GetGroupSnapshot implements backend.GroupSnapshotter.
func (p *Pool) GetGroupSnapshot(ctx context.Context, id string) (*backend.GroupSnapshot, error) {
	g, err := p.groups()
	if err != nil {
		return nil, err
	}
	return g.GetGroupSnapshot(ctx, id)
}

func (p *Pool) groups() (backend.GroupSnapshotter, error) {
	g, ok := p.Local.(backend.GroupSnapshotter)
	if !ok {
		return nil, fmt.Errorf("%s pool: group snapshots: %w", p.Local.Kind(), backend.ErrUnsupported)
	}
	return g, nil
}
