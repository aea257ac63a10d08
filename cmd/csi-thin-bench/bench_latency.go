package main

import (
	"context"
	"fmt"
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
)

// latencyPhase is measurements 1-3 (and 4, on the source closest to
// 1 GiB): a volume per source size is filled once; then each run
// snapshots, clones and restores every source in turn, with the bare
// backend command beside each clone, and a full copy of each source is
// timed at the end. Interleaving the sizes within each run means a
// change of load on the (shared) machine over time cannot pass for a
// dependence on the size.
func (b *bench) latencyPhase(ctx context.Context) error {
	spaceSize := closestTo(b.cfg.sizes, 1<<30)
	if spaceSize <= 0 && b.cfg.phases["space"] {
		b.note("space phase skipped: no source size above 0 in --sizes")
	}
	var sources []*source
	for i, size := range b.cfg.sizes {
		if !b.cfg.phases["latency"] && size != spaceSize {
			continue
		}
		src, err := b.newSource(ctx, size, uint64(i+1))
		if err != nil {
			return err
		}
		sources = append(sources, src)
	}
	if b.cfg.phases["latency"] {
		if err := b.measureLatency(ctx, sources); err != nil {
			return err
		}
	}
	for _, src := range sources {
		if src.dataBytes == spaceSize && spaceSize > 0 && b.cfg.phases["space"] {
			if err := b.measureSpace(ctx, src); err != nil {
				return err
			}
		}
	}
	for _, src := range sources {
		if err := b.drop(ctx, src); err != nil {
			return err
		}
	}
	return nil
}

// closestTo returns the positive size nearest to target (0 if none).
func closestTo(sizes []int64, target int64) int64 {
	best := int64(0)
	for _, s := range sizes {
		if s > 0 && (best == 0 || abs(s-target) < abs(best-target)) {
			best = s
		}
	}
	return best
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// samples are one source's latencies.
type samples struct {
	snap, clone, restore, bare []time.Duration
	restoreFrom                string
}

func (b *bench) measureLatency(ctx context.Context, sources []*source) error {
	c := b.s.client
	b.progress("latency: %d runs of snapshot, clone, restore and %s over %d sources", b.cfg.runs, b.s.pool.BareCommand(), len(sources))
	all := make([]*samples, len(sources))
	for i, src := range sources {
		base, err := c.CreateSnapshot(ctx, b.name("restore-base"), src.id)
		if err != nil {
			return err
		}
		all[i] = &samples{restoreFrom: base.GetSnapshotId()}
	}
	for run := 0; run < b.cfg.runs; run++ {
		for k := range sources {
			// Rotate the order too, so no size is always first after a
			// size's deletes.
			i := (k + run) % len(sources)
			if err := b.latencyRun(ctx, sources[i], all[i]); err != nil {
				return err
			}
		}
	}
	for i, src := range sources {
		if err := c.DeleteSnapshot(ctx, all[i].restoreFrom); err != nil {
			return err
		}
		copies, err := b.measureCopies(ctx, src)
		if err != nil {
			return err
		}
		sm := all[i]
		b.run.Latency = append(b.run.Latency, results.SizeLatency{
			SourceBytes: src.dataBytes, Snapshot: stats.Summarize(sm.snap), Clone: stats.Summarize(sm.clone),
			Restore: stats.Summarize(sm.restore), Bare: stats.Summarize(sm.bare), BareCommand: b.s.pool.BareCommand(),
			Copy: stats.Summarize(copies),
		})
	}
	return nil
}

// latencyRun takes one sample of each operation on src, interleaved so
// that noise falls on every operation alike and their ratios stay fair.
func (b *bench) latencyRun(ctx context.Context, src *source, sm *samples) error {
	c := b.s.client
	lat, err := b.timedSnapshot(ctx, "snap", src.id)
	if err != nil {
		return err
	}
	sm.snap = append(sm.snap, lat)
	if lat, err = b.timedCreate(ctx, func(name string) (string, error) {
		v, err := c.CloneVolume(ctx, name, src.id, src.sizeBytes)
		return v.GetVolumeId(), err
	}); err != nil {
		return err
	}
	sm.clone = append(sm.clone, lat)
	if lat, err = b.timedCreate(ctx, func(name string) (string, error) {
		v, err := c.RestoreSnapshot(ctx, name, sm.restoreFrom, src.sizeBytes)
		return v.GetVolumeId(), err
	}); err != nil {
		return err
	}
	sm.restore = append(sm.restore, lat)
	d, err := b.s.pool.BareSnapshot(ctx, src.id, int(b.seq.Add(1)))
	if err != nil {
		return err
	}
	sm.bare = append(sm.bare, d)
	return nil
}

// timedSnapshot times one CreateSnapshot of volumeID and deletes the
// snapshot afterwards, untimed (the delete once ran inside the timed
// function, through a defer, and doubled the snapshot's latency).
func (b *bench) timedSnapshot(ctx context.Context, prefix, volumeID string) (time.Duration, error) {
	var id string
	lat, err := timed(func() error {
		s, err := b.s.client.CreateSnapshot(ctx, b.name(prefix), volumeID)
		id = s.GetSnapshotId()
		return err
	})
	if id != "" {
		if derr := b.s.client.DeleteSnapshot(context.WithoutCancel(ctx), id); derr != nil && err == nil {
			err = derr
		}
	}
	return lat, err
}

// timedCreate times one CreateVolume (through create) and deletes the
// volume afterwards, untimed.
func (b *bench) timedCreate(ctx context.Context, create func(name string) (string, error)) (time.Duration, error) {
	var id string
	lat, err := timed(func() error {
		var err error
		id, err = create(b.name("vol"))
		return err
	})
	if err != nil {
		return 0, err
	}
	return lat, b.s.client.DeleteVolume(ctx, id)
}

// measureCopies times the copy-based way: cp of the source's files into
// a fresh empty volume (its creation and deletion untimed).
func (b *bench) measureCopies(ctx context.Context, src *source) ([]time.Duration, error) {
	c := b.s.client
	var out []time.Duration
	for i := 0; i < b.cfg.copyRuns; i++ {
		name := b.name("copy")
		v, err := c.CreateVolume(ctx, name, src.sizeBytes)
		if err != nil {
			return nil, err
		}
		att, err := b.s.attach(ctx, v.GetVolumeId(), name, nil)
		if err != nil {
			return nil, err
		}
		lat, err := timed(func() error { return copyTree(ctx, src.att.TargetPath, att.TargetPath) })
		if err != nil {
			return nil, err
		}
		out = append(out, lat)
		b.progress("full copy of %s: %s", humanBytes(src.dataBytes), lat.Round(time.Millisecond))
		if err := att.Detach(ctx); err != nil {
			return nil, err
		}
		if err := c.DeleteVolume(ctx, v.GetVolumeId()); err != nil {
			return nil, err
		}
		// Let the pool reclaim the copy before the next run is timed.
		if _, err := b.s.pool.Usage(ctx); err != nil {
			return nil, fmt.Errorf("settle after copy: %w", err)
		}
	}
	return out, nil
}
