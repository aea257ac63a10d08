package freeze

import (
	"context"
	"fmt"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateGroupSnapshot implements backend.GroupSnapshotter by handing the
// group to the backend without FIFREEZE: LVM thin's lvcreate freezes each
// member's filesystem by suspending it, and FIFREEZE first would make it
// fail busy on the kernels this is tested on (docs/consistency.md).
func (p *Pool) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	g, err := p.groups()
	if err != nil {
		return nil, err
	}
	return g.CreateGroupSnapshot(ctx, req)
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
