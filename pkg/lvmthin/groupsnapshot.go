package lvmthin

import (
	"context"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Group snapshots on LVM thin are one thin snapshot per member, one
// lvcreate after another (backend.SequentialGroups): each member is
// consistent on its own (lvcreate suspends its origin, which freezes the
// filesystem on it), but the members are not one instant. lvcreate makes
// one snapshot per call and LVM has no call that suspends several origins
// for one metadata commit; see docs/consistency.md. Each member carries
// the group's ID and size in a tag (keyGroup), the group's only state.

var _ backend.GroupSnapshotter = (*Backend)(nil)

// CreateGroupSnapshot implements backend.GroupSnapshotter.
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
