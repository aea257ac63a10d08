package main

import (
	"context"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// measureSpace is measurement 4: the pool space a snapshot and a clone of
// src take, and what overwriting part of the clone's shared data adds.
func (b *bench) measureSpace(ctx context.Context, src *source) error {
	c, pool := b.s.client, b.s.pool
	write := min(b.cfg.cloneWriteBytes, src.dataBytes/2)
	b.progress("space: snapshot and clone of %s, then %s overwritten in the clone", humanBytes(src.dataBytes), humanBytes(write))
	sp := &results.Space{SourceBytes: src.dataBytes, CloneWriteBytes: write}
	u0, err := pool.Usage(ctx)
	if err != nil {
		return err
	}
	snap, err := c.CreateSnapshot(ctx, b.name("space-snap"), src.id)
	if err != nil {
		return err
	}
	u1, err := pool.Usage(ctx)
	if err != nil {
		return err
	}
	name := b.name("space-clone")
	clone, err := c.CloneVolume(ctx, name, src.id, src.sizeBytes)
	if err != nil {
		return err
	}
	u2, err := pool.Usage(ctx)
	if err != nil {
		return err
	}
	att, err := b.s.attach(ctx, clone.GetVolumeId(), name, nil)
	if err != nil {
		return err
	}
	u3, err := pool.Usage(ctx)
	if err != nil {
		return err
	}
	// Overwrite in place: the written range stops being shared with the
	// source, the rest of the file stays shared.
	cloneFile := (&source{att: att}).file()
	if err := datagen.Overwrite(ctx, cloneFile, write, 99); err != nil {
		return err
	}
	u4, err := pool.Usage(ctx)
	if err != nil {
		return err
	}
	sp.Snapshot, sp.Clone, sp.CloneMount, sp.CloneWrite = u1.Minus(u0), u2.Minus(u1), u3.Minus(u2), u4.Minus(u3)
	b.run.Space = sp
	if err := att.Detach(ctx); err != nil {
		return err
	}
	if err := c.DeleteVolume(ctx, clone.GetVolumeId()); err != nil {
		return err
	}
	return c.DeleteSnapshot(ctx, snap.GetSnapshotId())
}
