package main

import (
	"context"
	"sort"
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
)

// scalingPhase is measurement 7: clone, snapshot and create latency as the
// pool fills with other volumes and snapshots. A driver that lists every
// object per call, or a pool whose metadata grows per object, shows it
// here as latency rising with the population.
func (b *bench) scalingPhase(ctx context.Context) error {
	c := b.s.client
	counts := append([]int(nil), b.cfg.scale...)
	sort.Ints(counts)
	src, err := c.CreateVolume(ctx, b.name("scale-source"), b.cfg.smallVolumeBytes)
	if err != nil {
		return err
	}
	existing := 0 // objects besides the source; left for the pool teardown
	for _, want := range counts {
		if existing < want {
			b.progress("scaling: populating the pool to %d volumes+snapshots", want)
			pairs := (want - existing + 1) / 2
			_, _, fails, err := parallel(ctx, 8, pairs, func(ctx context.Context, _ int) error {
				return b.populateOne(ctx)
			})
			if err != nil {
				return err
			}
			existing += 2 * (pairs - fails)
		}
		b.progress("scaling: %d runs at %d existing objects", b.cfg.scaleRuns, existing)
		var create, snap, clone, bare []time.Duration
		for i := 0; i < b.cfg.scaleRuns; i++ {
			lat, err := b.timedCreate(ctx, func(name string) (string, error) {
				v, err := c.CreateVolume(ctx, name, b.cfg.smallVolumeBytes)
				return v.GetVolumeId(), err
			})
			if err != nil {
				return err
			}
			create = append(create, lat)
			lat, err = b.timedSnapshot(ctx, "scale-snap", src.GetVolumeId())
			if err != nil {
				return err
			}
			snap = append(snap, lat)
			lat, err = b.timedCreate(ctx, func(name string) (string, error) {
				v, err := c.CloneVolume(ctx, name, src.GetVolumeId(), src.GetCapacityBytes())
				return v.GetVolumeId(), err
			})
			if err != nil {
				return err
			}
			clone = append(clone, lat)
			d, err := b.s.pool.BareSnapshot(ctx, src.GetVolumeId(), int(b.seq.Add(1)))
			if err != nil {
				return err
			}
			bare = append(bare, d)
		}
		b.run.Scaling = append(b.run.Scaling, results.Scaling{
			ExistingObjects: existing, Clone: stats.Summarize(clone),
			Snapshot: stats.Summarize(snap), Create: stats.Summarize(create), Bare: stats.Summarize(bare),
		})
	}
	return nil
}

// populateOne adds a volume and a snapshot of it to the pool.
func (b *bench) populateOne(ctx context.Context) error {
	c := b.s.client
	v, err := c.CreateVolume(ctx, b.name("fill"), b.cfg.smallVolumeBytes)
	if err != nil {
		return err
	}
	_, err = c.CreateSnapshot(ctx, b.name("fill-snap"), v.GetVolumeId())
	return err
}
