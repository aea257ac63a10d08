package main

import (
	"fmt"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/freeze"
)

// withFreeze makes a block-device pool take its group snapshots with the
// members' mounted filesystems frozen together (one instant, where the
// kernel allows it) and, with --snapshot-freeze, single snapshots with
// the source frozen, after thawing whatever a killed predecessor left
// frozen. (btrfs pools are not wrapped: see package freeze.)
func withFreeze(o *options, pool backend.Local) (backend.Local, error) {
	f, err := freeze.New(o.freezeStateDir, o.freezeTimeout, freeze.ObserveWindow)
	if err != nil {
		return nil, err
	}
	// Recover even when freezing is off now: a marker is a frozen filesystem.
	thawed, err := f.Recover()
	if err != nil {
		return nil, fmt.Errorf("thaw filesystems left frozen: %w", err)
	}
	if len(thawed) > 0 {
		klog.InfoS("thawed filesystems a previous run left frozen", "paths", thawed)
	}
	return freeze.Wrap(pool, f, freeze.Options{Snapshots: o.snapshotFreeze}), nil
}
