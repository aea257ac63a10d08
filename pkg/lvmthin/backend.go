// Package lvmthin is a backend.Local on an LVM thin pool: volumes are thin
// LVs named by their volume ID, snapshots are read-only thin snapshots, and
// clones and restores are writeable thin snapshots, so every copy is O(1)
// in data size. All state is kept in LV tags (tags.go).
package lvmthin

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Backend serves one thin pool on this node.
type Backend struct {
	cfg Config
	lvm *lvm
	// mu serialises metadata-changing operations: LVM locks the VG per
	// command, but check-then-act sequences (look up, check space, create,
	// untag) must not interleave. Reports run without it.
	mu sync.Mutex
	// cache is the pool's state from the last lvs, updated with every
	// change made since (cache.go). Guarded by mu.
	cache lvCache
	// extentSize is the VG's allocation unit: sizes are rounded to it.
	extentSize int64
	loopDevice string
	streams    streams
}

var _ backend.Local = (*Backend)(nil)

// New opens (bootstrapping if configured) the pool and removes the
// leftovers of creates that a crash interrupted.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Backend{cfg: cfg, lvm: newLVM(cfg.Runner, cfg.LVMConfig)}
	all, err := b.ensurePool(ctx)
	if err != nil {
		return nil, fmt.Errorf("lvmthin: %w", err)
	}
	if err := b.removeHalfMade(ctx, all); err != nil {
		return nil, fmt.Errorf("lvmthin: %w", err)
	}
	klog.InfoS("LVM thin pool ready", "pool", b.poolPath(), "node", cfg.NodeName, "extentBytes", b.extentSize)
	return b, nil
}

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return "lvmthin" }

// NodeName implements backend.Local.
func (b *Backend) NodeName() string { return b.cfg.NodeName }

// LoopDevice is the loop device of a loop-file pool, or "".
func (b *Backend) LoopDevice() string { return b.loopDevice }

// PoolPath is "vg/pool".
func (b *Backend) PoolPath() string { return b.poolPath() }

func (b *Backend) poolPath() string { return lvPath(b.cfg.VG, b.cfg.ThinPool) }

// removeHalfMade deletes our half-made LVs (see lvMeta), found in the
// report start-up already has: a create was interrupted between lvcreate
// and its last step. The CO retries the create, which then starts clean.
// Only LVs that carry our ownership tag and live in our pool are touched.
// What is left is the first content of the LV cache (cache.go).
func (b *Backend) removeHalfMade(ctx context.Context, all []LV) error {
	st, err := b.stateOf(all)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, lv := range st.lvs {
		m := lvMeta(lv)
		if !m.Owned || !m.Creating {
			continue
		}
		klog.InfoS("removing half-made LV left by an interrupted create", "volumeID", lv.Name, "kind", m.Kind)
		if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, lv.Name)...); err != nil {
			return fmt.Errorf("remove half-made LV %s: %w", lv.Name, err)
		}
		st.drop(lv.Name)
	}
	b.cache.store(st)
	return nil
}
