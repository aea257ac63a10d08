package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// discardPhase is measurement 5: write data, delete it, and see how much
// space comes back to the pool (LVM) or to the host under the pool file
// (btrfs), with discard on (the default), with it off plus fstrim, and
// when the whole volume is deleted.
func (b *bench) discardPhase(ctx context.Context) error {
	size := b.cfg.discardBytes
	b.progress("discard: %s written and deleted, three ways", humanBytes(size))
	d, err := b.discardOnce(ctx, size, "default (discard)", false, "rm")
	if err != nil {
		return err
	}
	b.run.Discard = append(b.run.Discard, *d)
	if d, err = b.discardOnce(ctx, size, "nodiscard + fstrim", true, "rm"); err != nil {
		return err
	}
	b.run.Discard = append(b.run.Discard, *d)
	if d, err = b.discardOnce(ctx, size, "default (discard)", false, "DeleteVolume"); err != nil {
		return err
	}
	b.run.Discard = append(b.run.Discard, *d)
	return nil
}

func (b *bench) discardOnce(ctx context.Context, size int64, mode string, nodiscard bool, how string) (*results.Discard, error) {
	c, pool := b.s.client, b.s.pool
	d := &results.Discard{Mode: mode, WrittenBytes: size, Delete: how}
	var flags []string
	if nodiscard {
		pooled, err := pool.SetDiscard(ctx, false)
		if err != nil {
			return nil, err
		}
		if pooled {
			d.How = "pool filesystem remounted nodiscard"
			defer pool.SetDiscard(context.WithoutCancel(ctx), true)
		} else {
			flags = []string{"nodiscard"}
			d.How = "volume staged with mount option nodiscard"
		}
	} else if b.s.pool.Kind() == "btrfs" {
		d.How = "pool filesystem mounted with the kernel default, discard=async"
	} else {
		d.How = "volume staged with the driver default, discard"
	}
	name := b.name("discard")
	v, err := c.CreateVolume(ctx, name, volumeSizeFor(size))
	if err != nil {
		return nil, err
	}
	att, err := b.s.attach(ctx, v.GetVolumeId(), name, flags)
	if err != nil {
		return nil, err
	}
	if d.Before, err = b.settle(ctx); err != nil {
		return nil, err
	}
	file := (&source{att: att}).file()
	if _, err := datagen.WriteFile(ctx, file, size, 7); err != nil {
		return nil, err
	}
	if d.AfterWrite, err = b.settle(ctx); err != nil {
		return nil, err
	}
	switch how {
	case "rm":
		if err := os.Remove(file); err != nil {
			return nil, fmt.Errorf("delete data: %w", err)
		}
		if err := syncFS(att.TargetPath); err != nil {
			return nil, err
		}
	case "DeleteVolume":
		if err := att.Detach(ctx); err != nil {
			return nil, err
		}
		if err := c.DeleteVolume(ctx, v.GetVolumeId()); err != nil {
			return nil, err
		}
	}
	if d.AfterDelete, err = b.settle(ctx); err != nil {
		return nil, err
	}
	if nodiscard {
		if err := b.trim(ctx, att.StagingPath); err != nil {
			return nil, err
		}
		u, err := b.settle(ctx)
		if err != nil {
			return nil, err
		}
		d.AfterTrim = &u
	}
	if how == "rm" {
		if err := att.Detach(ctx); err != nil {
			return nil, err
		}
		if err := c.DeleteVolume(ctx, v.GetVolumeId()); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// trim runs fstrim on the pool where discard is a pool matter (btrfs),
// else on the volume's own filesystem (ext4 on a thin LV).
func (b *bench) trim(ctx context.Context, volumeMount string) error {
	done, err := b.s.pool.Trim(ctx)
	if err != nil || done {
		return err
	}
	if _, err := (&command.Host{Timeout: 10 * time.Minute}).Run(ctx, "fstrim", volumeMount); err != nil {
		return fmt.Errorf("fstrim volume: %w", err)
	}
	return nil
}

// settle waits until the pool's usage stops moving: btrfs frees deleted
// extents at transaction commit and discards them asynchronously
// (discard=async queues freed ranges and issues them after a delay), so
// a single reading right after a delete would understate what comes back.
func (b *bench) settle(ctx context.Context) (results.Usage, error) {
	limit := 3 * time.Minute
	if b.cfg.smoke {
		limit = 20 * time.Second
	}
	deadline := time.Now().Add(limit)
	prev, err := b.s.pool.Usage(ctx)
	if err != nil {
		return prev, err
	}
	for {
		pending, err := b.s.pool.DiscardPending(ctx)
		if err != nil {
			return prev, err
		}
		if pending == 0 {
			// One more reading: the last discards may have just landed.
			if cur, err := b.s.pool.Usage(ctx); err != nil || cur == prev {
				return cur, err
			} else {
				prev = cur
			}
		}
		if time.Now().After(deadline) {
			b.note("pool usage still moving after %s (%s waiting for async discard); took the reading then", limit, humanBytes(pending))
			return prev, nil
		}
		select {
		case <-ctx.Done():
			return prev, ctx.Err()
		case <-time.After(time.Second):
		}
		if prev, err = b.s.pool.Usage(ctx); err != nil {
			return prev, err
		}
	}
}
