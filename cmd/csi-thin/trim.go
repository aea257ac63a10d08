package main

import (
	"context"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/node"
	"github.com/csi-thin/csi-thin/pkg/trim"
)

// newTrimmer is the scheduled trim of the pool's filesystems that do not
// discard online (package trim): on btrfs the pool's own filesystem, on
// LVM thin each staged volume mounted nodiscard. It takes the node
// service's locks so that it never holds a mount an unstage or unpublish
// is removing. report may be nil (local mode: log line and metrics only).
func newTrimmer(o *options, pool backend.Local, ns *node.Server, report func(context.Context, trim.Result)) *trim.Trimmer {
	find := trim.BlockVolumes(pool, nil)
	if o.backend == "btrfs" {
		find = trim.Pool(o.poolPath, nil)
	}
	return &trim.Trimmer{Interval: o.trimInterval, Find: find, Lock: ns.TryLockMount, Report: report}
}
