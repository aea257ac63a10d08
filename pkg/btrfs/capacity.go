package btrfs

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// fsStats is the pool filesystem's space as statfs sees it.
type fsStats struct {
	total, free int64
	readOnly    bool
}

func (p *Pool) statfs() (fsStats, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.mountPath, &st); err != nil {
		return fsStats{}, fmt.Errorf("statfs pool %s: %w", p.mountPath, err)
	}
	return fsStats{
		total:    int64(st.Blocks) * st.Bsize,
		free:     int64(st.Bavail) * st.Bsize,
		readOnly: st.Flags&unix.ST_RDONLY != 0,
	}, nil
}

func usedPercent(s fsStats) float64 {
	if s.total == 0 {
		return 100
	}
	return 100 * float64(s.total-s.free) / float64(s.total)
}

// Capacity implements backend.Backend.
func (p *Pool) Capacity(ctx context.Context, _ string) (backend.Capacity, error) {
	c, _, err := p.capacity()
	return c, err
}

// capacity reads the pool's space; the sum of volume sizes is kept in
// memory (see Pool.provisioned), so a create does not re-read every record.
func (p *Pool) capacity() (backend.Capacity, fsStats, error) {
	st, err := p.statfs()
	if err != nil {
		return backend.Capacity{}, st, err
	}
	return p.capacityFrom(st, p.provisioned.Load()), st, nil
}

// sumProvisioned adds up the sizes of all volume records.
func (p *Pool) sumProvisioned() (int64, error) {
	recs, err := p.listRecords()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, r := range recs {
		if r.Volume != nil {
			n += r.Volume.SizeBytes
		}
	}
	return n, nil
}

func (p *Pool) capacityFrom(st fsStats, provisioned int64) backend.Capacity {
	maxVirtual := int64(float64(st.total) * p.cfg.Overprovision)
	c := backend.Capacity{
		TotalBytes:         st.total,
		UsedBytes:          st.total - st.free,
		ProvisionedBytes:   provisioned,
		MaximumVolumeBytes: maxVirtual,
		DataPercent:        usedPercent(st),
	}
	if c.DataPercent < p.cfg.FullPercent && !st.readOnly {
		c.AvailableBytes = max(0, maxVirtual-provisioned)
	}
	return c
}

// checkRoom refuses a new volume of size bytes while the pool is full or
// the volume would push provisioning past the overprovision bound.
func (p *Pool) checkRoom(size int64) error {
	c, st, err := p.capacity()
	if err != nil {
		return err
	}
	switch {
	case size > c.MaximumVolumeBytes:
		return fmt.Errorf("%d bytes exceeds the largest volume this pool can hold (%d = %.0f bytes × overprovision %.1f): %w",
			size, c.MaximumVolumeBytes, float64(st.total), p.cfg.Overprovision, backend.ErrOutOfRange)
	case st.readOnly:
		return fmt.Errorf("pool %s is read-only: %w", p.mountPath, backend.ErrUnavailable)
	case c.DataPercent >= p.cfg.FullPercent:
		return fmt.Errorf("pool is %.1f%% full (limit %.0f%%): %w", c.DataPercent, p.cfg.FullPercent, backend.ErrNoSpace)
	case size > c.AvailableBytes:
		return fmt.Errorf("%d bytes requested, %d provisionable (overprovision %.1f): %w", size, c.AvailableBytes, p.cfg.Overprovision, backend.ErrNoSpace)
	}
	return nil
}
