package lvmthin

import (
	"context"
	"errors"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// The LV cache. Every create, snapshot, expand and delete decides from
// the pool's state: does the LV exist, is it ours, is the source there,
// does it fit. An lvs of the VG answers all of it but costs nearly as
// much as the lvcreate it guards (docs/performance.md has the numbers).
//
// So the backend caches the state of its last lvs and updates it with
// each change it makes itself; all changes run under b.mu. Only the
// pool's fill levels, which every write moves, are read fresh for each
// call, from the kernel (dmsetup status, far cheaper than an lvs). The
// cache is trusted for at most Config.ListMaxAge, and invalidated:
//   - when a change fails in or after an LVM command (a refusal decided
//     from the state itself, such as "too full", changes nothing);
//   - when the pool was not healthy at the last lvs or is not healthy
//     now (an lvs then names the problem);
//   - after any rare path (completing a half-made LV), where rebuilding
//     the entry by hand is not worth the risk.
// Changes made behind the driver's back (an admin's lvremove of one of
// our LVs) can mislead a call made on the cache only into an LVM command
// that fails; that call then runs once more on a fresh lvs.

// lvCache is the pool's state from the last lvs with the changes this
// backend made since.
type lvCache struct {
	state    *poolState // nil: empty, list the VG on the next change
	pool     *LV        // the thin pool as that lvs reported it
	listedAt time.Time  // when that lvs ran
}

// store fills the cache from a fresh listing.
func (c *lvCache) store(st *poolState) {
	pool := *st.pool
	c.state, c.pool, c.listedAt = st, &pool, time.Now()
}

// invalidate empties the cache: the next change lists the VG again.
func (c *lvCache) invalidate() { c.state, c.pool = nil, nil }

// stateForChange returns the state to decide a change from, and whether it
// came from the cache. Called with b.mu held.
func (b *Backend) stateForChange(ctx context.Context) (st *poolState, cached bool, err error) {
	if c := &b.cache; c.state != nil && time.Since(c.listedAt) < b.cfg.ListMaxAge && b.poolProblem(c.pool) == "" {
		s, err := b.lvm.thinPoolStatus(ctx, b.cfg.VG, b.cfg.ThinPool)
		if err == nil && s.HeldMetadataRoot {
			b.releaseLeftoverMetadataSnap(ctx)
		}
		if err == nil && s.healthy() && c.pool.ChunkSize > 0 {
			pool := *c.pool
			pool.Size = s.TotalDataBlocks * c.pool.ChunkSize
			pool.DataPercent, pool.MetadataPercent = s.dataPercent(), s.metadataPercent()
			c.state.pool = &pool
			return c.state, true, nil
		}
		klog.V(2).InfoS("pool status not usable, listing LVs", "pool", b.poolPath(), "status", s, "err", err)
	}
	st, err = b.rescan(ctx)
	return st, false, err
}

// rescan lists the VG and caches the result. Called with b.mu held.
func (b *Backend) rescan(ctx context.Context) (*poolState, error) {
	b.cache.invalidate()
	st, err := b.scan(ctx)
	if err != nil {
		return nil, err
	}
	b.cache.store(st)
	return st, nil
}

// change runs one create, snapshot, expand or delete under b.mu on the
// pool's state. A failure on the cache that the cache may explain (an
// LV that LVM says exists, or does not) is retried once on a fresh lvs,
// which op, being idempotent, can start from.
func (b *Backend) change(ctx context.Context, op func(*poolState) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, cached, err := b.stateForChange(ctx)
	if err != nil {
		return err
	}
	if err = op(st); err == nil || refusal(err) {
		return err
	}
	b.cache.invalidate()
	var ee *command.Error
	if !cached || !errors.As(err, &ee) || ctx.Err() != nil ||
		!(errors.Is(err, backend.ErrExists) || errors.Is(err, backend.ErrNotFound)) {
		return err
	}
	klog.InfoS("LVM disagreed with the LV cache; retrying on a fresh lvs", "pool", b.poolPath(), "err", err)
	if st, err = b.rescan(ctx); err != nil {
		return err
	}
	if err = op(st); err != nil {
		b.cache.invalidate()
	}
	return err
}

// refusal reports an error that op decided from the state without running
// a command that failed (the volume exists with another size, the source
// is missing, the pool is too full): it changed nothing, so the cache
// stays true.
func refusal(err error) bool {
	var ee *command.Error
	if errors.As(err, &ee) {
		return false
	}
	for _, sentinel := range []error{backend.ErrExists, backend.ErrNotFound, backend.ErrOutOfRange,
		backend.ErrNoSpace, backend.ErrPrecondition, backend.ErrInvalid, backend.ErrInUse} {
		if errors.Is(err, sentinel) {
			return true
		}
	}
	return false
}

// put records an LV this backend just made or resized.
func (st *poolState) put(lv *LV) {
	if old := st.lvs[lv.Name]; old != nil {
		st.provisioned -= old.Size
	}
	st.lvs[lv.Name] = lv
	st.provisioned += lv.Size
}

// drop records an LV this backend just removed.
func (st *poolState) drop(name string) {
	if old := st.lvs[name]; old != nil {
		st.provisioned -= old.Size
		delete(st.lvs, name)
	}
}

// lvMode is how lvcreate left a new LV: writeable or read-only, active
// or not.
type lvMode struct{ writeable, active bool }

// madeLV is the entry for an LV just created by lvcreate: what an lvs
// would report of it, as far as any decision reads it.
func (b *Backend) madeLV(name string, size int64, tags []string, created time.Time, mode lvMode) *LV {
	attr := LVAttr{Type: 'V', Permission: 'r', State: '-', TargetType: 't', Health: '-'}
	if mode.writeable {
		attr.Permission = 'w'
	}
	if mode.active {
		attr.State = 'a'
	}
	return &LV{Name: name, VG: b.cfg.VG, Attr: attr, Size: size, Pool: b.cfg.ThinPool, Tags: tags,
		Segtype: "thin", DataPercent: -1, MetadataPercent: -1, Time: created, VGExtentSize: b.extentSize}
}
