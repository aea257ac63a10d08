package freeze

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateGroupSnapshot implements backend.GroupSnapshotter: with two or more
// members mounted here, all of them are frozen, the backend snapshots each,
// and all are thawed, so the members are one instant (an application's
// writes across them are in all or none). Frozen's timeout bounds the
// window; a group still running then finishes thawed, each member clean on
// its own.
//
// The kernel decides whether this works. LVM's lvcreate suspends its
// origin, and on kernel 6.1 that suspend fails busy on a filesystem frozen
// already; 6.12 takes it (docs/consistency.md). So the first snapshot or
// group refused busy while held frozen turns freezing off for this process
// (the kernel does not change under it), and the group is taken again
// member by member, the way every group is taken afterwards.
func (p *Pool) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	g, err := p.groups()
	if err != nil {
		return nil, err
	}
	if req.SkipFreeze || p.frozenRefused.Load() {
		return g.CreateGroupSnapshot(ctx, req)
	}
	// The mounts first: reading them runs no storage command, and only a
	// group that would be frozen needs the backend's listing below.
	var paths []string
	allMounted := true
	for _, id := range req.SourceVolumeIDs {
		mounted, err := p.mountedAt(ctx, id)
		if err != nil {
			return nil, err
		}
		paths = append(paths, mounted...)
		allMounted = allMounted && len(mounted) > 0
	}
	if len(paths) < 2 {
		// One member mounted at most: its own snapshot freezes it (LVM's
		// suspend), and there is no other filesystem to hold still with it.
		return g.CreateGroupSnapshot(ctx, req)
	}
	if existing, err := g.GetGroupSnapshot(ctx, req.ID); err == nil && existing.ReadyToUse {
		return g.CreateGroupSnapshot(ctx, req) // a replay: nothing to freeze for
	}
	var group *backend.GroupSnapshot
	var snapErr error
	held, err := p.freezer.FrozenHeld(ctx, req.ID, paths, func(ctx context.Context) error {
		group, snapErr = g.CreateGroupSnapshot(ctx, req)
		return snapErr
	})
	if errors.Is(snapErr, backend.ErrBusy) {
		p.busyWhileFrozen(req.ID, held, snapErr)
		return g.CreateGroupSnapshot(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	if !held {
		klog.InfoS("group snapshot finished after the freeze timeout thawed its members: not one instant", "groupSnapshotID", req.ID, "paths", paths)
		return group, nil
	}
	klog.V(2).InfoS("group snapshot taken with its members' filesystems frozen together", "groupSnapshotID", req.ID, "paths", paths)
	// A member with no filesystem mounted was not held still: idle, or a
	// raw block device a pod may be writing. Only a group whose every
	// member was frozen is known to be one instant.
	group.OneInstant = allMounted
	return group, nil
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
