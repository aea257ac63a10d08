package main

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// The btrfs pools' metrics are served by the node agent's /metrics
// endpoint, which reads controller-runtime's registry.
func init() { metrics.Registry.MustRegister(btrfs.Collectors()...) }

// openLocal opens (bootstrapping if configured) this node's pool.
func openLocal(ctx context.Context, o *options) (backend.Local, error) {
	runner := &command.Host{Prefix: o.commandPrefix()}
	var loopSize int64
	if o.loopFile != "" {
		n, err := o.loopSizeBytes()
		if err != nil {
			return nil, err
		}
		loopSize = n
	}
	switch o.backend {
	case "btrfs":
		return btrfs.Open(ctx, btrfs.Config{
			PoolPath: o.poolPath, LoopFile: o.loopFile, LoopSizeBytes: loopSize,
			NodeName: o.nodeID, Overprovision: o.overprovision, FullPercent: o.fullPercent,
			QuotaMode: btrfs.QuotaMode(o.quotaMode), Runner: runner,
		})
	case "lvmthin":
		pool, err := openLVMThin(ctx, o, runner, loopSize)
		if err != nil {
			return nil, err
		}
		return withFreeze(o, pool)
	}
	return nil, fmt.Errorf("unknown --backend %q (btrfs or lvmthin)", o.backend)
}
