package lvmthin

import (
	"context"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Group snapshots on LVM thin are one thin snapshot per member, one
// lvcreate after another (backend.SequentialGroups): each member is a
// clean snapshot of its own instant (lvcreate suspends its origin, which
// freezes the filesystem on it). LVM makes one snapshot per lvcreate, so
// one instant for all members needs their filesystems held still across
// the lvcreates: the node's pkg/freeze wrapper freezes the mounted members
// around this call, which kernel 6.12 allows and 6.1 refuses (lvcreate's
// suspend of a frozen origin fails busy; the wrapper then falls back to
// this call alone). Suspending the origins with dmsetup beforehand does
// not work either: lvcreate refuses the next member (the pool reads as
// past its threshold). See docs/consistency.md. Each member carries the
// group's ID and size in a tag (keyGroup), the group's only state.

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
