package main

import (
	"context"
	"strings"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// openLVMThin opens (or bootstraps from devices or a loop file) the thin pool.
func openLVMThin(ctx context.Context, o *options, runner command.Runner, loopSize int64) (backend.Local, error) {
	var devices []string
	for _, d := range strings.Split(o.devices, ",") {
		if d = strings.TrimSpace(d); d != "" {
			devices = append(devices, d)
		}
	}
	return lvmthin.New(ctx, lvmthin.Config{
		VG: o.vg, ThinPool: o.thinPool, Devices: devices,
		LoopFile: o.loopFile, LoopSizeBytes: loopSize,
		NodeName: o.nodeID, Overprovision: o.overprovision,
		DataFullPercent: o.fullPercent, MetadataFullPercent: o.metaFull,
		Runner: runner, LVMConfig: o.lvmConfig, SkipZeroing: !o.lvmZero,
	})
}
