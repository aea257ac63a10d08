package lvmthin

import (
	"context"
	"fmt"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// poolState is one `lvs <vg>` report: the pool and the thin LVs in it.
// Every decision (exists? compatible? fits?) is made from one report so
// that the numbers agree with each other.
type poolState struct {
	pool *LV
	// lvs are the thin LVs of our pool, ours or not, by name.
	lvs map[string]*LV
	// provisioned is the sum of their virtual sizes.
	provisioned int64
}

func (b *Backend) scan(ctx context.Context) (*poolState, error) {
	all, err := b.lvm.lvs(ctx, b.cfg.VG)
	if err != nil {
		return nil, fmt.Errorf("list LVs of %s: %w", b.cfg.VG, err)
	}
	return b.stateOf(all)
}

// stateOf sorts one lvs report of the VG into the pool and its thin LVs.
func (b *Backend) stateOf(all []LV) (*poolState, error) {
	st := &poolState{lvs: map[string]*LV{}}
	for i := range all {
		lv := &all[i]
		switch {
		case lv.Name == b.cfg.ThinPool:
			st.pool = lv
		case lv.Pool == b.cfg.ThinPool && lv.Attr.IsThinVolume():
			st.lvs[lv.Name] = lv
			st.provisioned += lv.Size
		}
	}
	if st.pool == nil {
		return nil, fmt.Errorf("thin pool %s is gone: %w", b.poolPath(), backend.ErrUnavailable)
	}
	return st, nil
}

// owned returns our LV called name, or nil when there is none. An LV of
// that name without our tag is an error: we must not touch it.
func (st *poolState) owned(name string) (*LV, objectMeta, error) {
	lv := st.lvs[name]
	if lv == nil {
		return nil, objectMeta{}, nil
	}
	m := lvMeta(lv)
	if !m.Owned {
		return nil, m, fmt.Errorf("LV %s exists but was not made by csi-thin: %w", name, backend.ErrPrecondition)
	}
	return lv, m, nil
}

// poolProblem says why the pool cannot take writes, or "".
func (b *Backend) poolProblem(pool *LV) string {
	switch pool.Attr.Health {
	case 'F':
		// LVM reports no fill levels for a failed pool, so the cause
		// cannot be named for certain; exhausted metadata is the usual one.
		return fmt.Sprintf("thin pool %s has failed: every read and write of its volumes fails "+
			"(most often its metadata ran out; recovery: docs/lvm-metadata.md)", b.poolPath())
	case 'M':
		return fmt.Sprintf("thin pool %s metadata is read-only (metadata full or damaged): "+
			"no new blocks can be allocated (recovery: docs/lvm-metadata.md)", b.poolPath())
	}
	if p := pool.Attr.Problem(); p != "" {
		return fmt.Sprintf("thin pool %s: %s", b.poolPath(), p)
	}
	if pool.HealthStatus != "" {
		return fmt.Sprintf("thin pool %s: %s", b.poolPath(), pool.HealthStatus)
	}
	if !pool.Attr.Active() {
		return fmt.Sprintf("thin pool %s is not active", b.poolPath())
	}
	if pool.DataPercent >= 100 {
		return fmt.Sprintf("thin pool %s is out of data space", b.poolPath())
	}
	return ""
}

// poolReason is the volume-condition reason for what poolProblem reports.
func poolReason(pool *LV) string {
	switch {
	case pool.Attr.Health == 'D' || pool.DataPercent >= 100:
		return backend.ReasonPoolFull
	case pool.Attr.Health == 'M':
		return backend.ReasonPoolReadOnly
	}
	return backend.ReasonPoolError
}

// fullness says which guard threshold the pool has crossed, or "".
func (b *Backend) fullness(pool *LV) string {
	switch {
	case pool.DataPercent >= b.cfg.DataFullPercent:
		return fmt.Sprintf("thin pool %s data is %.2f%% full (limit %.0f%%)", b.poolPath(), pool.DataPercent, b.cfg.DataFullPercent)
	case pool.MetadataPercent >= b.cfg.MetadataFullPercent:
		return fmt.Sprintf("thin pool %s metadata is %.2f%% full (limit %.0f%%)", b.poolPath(), pool.MetadataPercent, b.cfg.MetadataFullPercent)
	}
	return ""
}

// capacity computes backend.Capacity from one report.
func (b *Backend) capacity(st *poolState) backend.Capacity {
	total := st.pool.Size
	used := int64(float64(total) * max(st.pool.DataPercent, 0) / 100)
	budget := int64(float64(total)*b.cfg.Overprovision) - st.provisioned
	c := backend.Capacity{
		TotalBytes:         total,
		UsedBytes:          used,
		ProvisionedBytes:   st.provisioned,
		AvailableBytes:     max(min(total-used, budget), 0),
		MaximumVolumeBytes: total / b.extentSize * b.extentSize,
		DataPercent:        max(st.pool.DataPercent, 0),
		MetadataPercent:    max(st.pool.MetadataPercent, 0),
	}
	if b.poolProblem(st.pool) != "" || b.fullness(st.pool) != "" {
		c.AvailableBytes = 0
	}
	c.AvailableBytes = c.AvailableBytes / b.extentSize * b.extentSize
	return c
}

// guard refuses any new object while the pool has a problem or is past a
// fullness threshold. A snapshot, which adds no virtual size and only
// consumes space as its origin diverges, is refused by nothing else.
func (b *Backend) guard(st *poolState) error {
	if p := b.poolProblem(st.pool); p != "" {
		return fmt.Errorf("%s: %w", p, backend.ErrNoSpace)
	}
	if f := b.fullness(st.pool); f != "" {
		return fmt.Errorf("%s: %w", f, backend.ErrNoSpace)
	}
	return nil
}

// admit checks that the pool may take a volume of newSize bytes that adds
// growBytes of virtual size.
func (b *Backend) admit(st *poolState, newSize, growBytes int64) error {
	if err := b.guard(st); err != nil {
		return err
	}
	c := b.capacity(st)
	if newSize > c.MaximumVolumeBytes {
		return fmt.Errorf("%d bytes exceed the largest volume thin pool %s can hold (%d): %w",
			newSize, b.poolPath(), c.MaximumVolumeBytes, backend.ErrOutOfRange)
	}
	if growBytes > c.AvailableBytes {
		return fmt.Errorf("%d bytes requested, %d available in thin pool %s (%.2f%% data used, %d of %d bytes provisioned at %.1fx overprovisioning): %w",
			growBytes, c.AvailableBytes, b.poolPath(), c.DataPercent, c.ProvisionedBytes, c.TotalBytes, b.cfg.Overprovision, backend.ErrNoSpace)
	}
	return nil
}

// condition is the CSI VolumeCondition of one LV in its pool.
func (b *Backend) condition(lv, pool *LV) backend.Condition {
	if p := b.poolProblem(pool); p != "" {
		return backend.Condition{Abnormal: true, Reason: poolReason(pool), Message: p}
	}
	if p := lv.Attr.Problem(); p != "" {
		return backend.Condition{Abnormal: true, Reason: backend.ReasonPoolError, Message: "thin volume " + lv.Name + ": " + p}
	}
	if f := b.fullness(pool); f != "" {
		return backend.Condition{Abnormal: true, Reason: backend.ReasonPoolFull, Message: f + "; writes may fail soon"}
	}
	return backend.Condition{Message: "thin volume and pool healthy"}
}

// Health implements backend.Backend.
func (b *Backend) Health(ctx context.Context) backend.Health {
	lvs, err := b.lvm.lvs(ctx, b.poolPath())
	if err != nil {
		return backend.Health{Message: fmt.Sprintf("thin pool %s: %v", b.poolPath(), err)}
	}
	for i := range lvs {
		pool := &lvs[i]
		if pool.Name != b.cfg.ThinPool {
			continue
		}
		if p := b.poolProblem(pool); p != "" {
			return backend.Health{Message: p}
		}
		return backend.Health{Healthy: true, Message: fmt.Sprintf("thin pool %s: data %.2f%%, metadata %.2f%%",
			b.poolPath(), pool.DataPercent, pool.MetadataPercent)}
	}
	return backend.Health{Message: fmt.Sprintf("thin pool %s not found", b.poolPath())}
}

// Capacity implements backend.Backend. node is ignored: this backend is
// one pool on one node.
func (b *Backend) Capacity(ctx context.Context, _ string) (backend.Capacity, error) {
	st, err := b.scan(ctx)
	if err != nil {
		return backend.Capacity{}, err
	}
	return b.capacity(st), nil
}
