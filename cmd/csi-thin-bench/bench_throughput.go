package main

import (
	"context"
	"fmt"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
)

// throughputPhase is measurement 6: N CreateVolume calls, then N
// DeleteVolume calls, from c concurrent clients, as a provisioner under a
// burst of PVCs would send them; and the driver's peak memory after it.
func (b *bench) throughputPhase(ctx context.Context) error {
	c := b.s.client
	for _, conc := range b.cfg.concurrency {
		n := b.cfg.throughputN
		b.progress("throughput: %d creates then %d deletes at concurrency %d", n, n, conc)
		names := make([]string, n)
		for i := range names {
			names[i] = b.name("tp")
		}
		ids := make([]string, n)
		createLat, createWall, createFails, err := parallel(ctx, conc, n, func(ctx context.Context, i int) error {
			v, err := c.CreateVolume(ctx, names[i], b.cfg.smallVolumeBytes)
			ids[i] = v.GetVolumeId()
			return err
		})
		if err != nil && ctx.Err() != nil {
			return err
		}
		if err != nil {
			b.note("throughput c=%d: %d of %d creates failed, first: %v", conc, createFails, n, err)
		}
		deleteLat, deleteWall, deleteFails, err := parallel(ctx, conc, n, func(ctx context.Context, i int) error {
			if ids[i] == "" {
				return nil
			}
			return c.DeleteVolume(ctx, ids[i])
		})
		if err != nil && ctx.Err() != nil {
			return err
		}
		if err != nil {
			b.note("throughput c=%d: %d of %d deletes failed, first: %v", conc, deleteFails, n, err)
		}
		b.run.Throughput = append(b.run.Throughput, results.Throughput{
			Concurrency: conc, N: n,
			CreateOpsPerSec: float64(n-createFails) / createWall.Seconds(),
			DeleteOpsPerSec: float64(n-deleteFails) / deleteWall.Seconds(),
			Create:          stats.Summarize(createLat), Delete: stats.Summarize(deleteLat),
			Errors: createFails + deleteFails,
		})
	}
	peak, err := b.s.driver.PeakRSS()
	if err != nil {
		return fmt.Errorf("driver memory: %w", err)
	}
	b.run.Memory.PeakAfterThroughputBytes = peak
	return nil
}
