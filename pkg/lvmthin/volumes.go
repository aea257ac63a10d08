package lvmthin

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateVolume implements backend.Backend: a new thin LV, or a writeable
// thin snapshot of a snapshot (restore) or of a volume (clone), grown to
// the requested size.
//
// LVM commands: one lvcreate after a look at the pool's state (existence,
// source, admission: the LV cache and a dmsetup status, or an lvs;
// cache.go); a copy larger than its source adds one lvextend. The returned volume is
// built from what was written, not read back.
//
// Crash safety: a create that is one lvcreate is atomic (the LV appears
// with all its tags or not at all). A copy larger than its source takes
// two steps, so its lvcreate records the growth it still needs (keyGrow,
// FROM:TO) and the lvextend is the commit: until it has run, the LV is
// the source's size and counts as half made. A retry that finds a
// half-made LV with the same spec completes it; one with another spec
// removes it and starts over. Start-up removes any left over
// (removeHalfMade).
func (b *Backend) CreateVolume(ctx context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	if !backend.IsVolumeID(req.ID) {
		return nil, fmt.Errorf("volume ID %q: %w", req.ID, backend.ErrInvalid)
	}
	access, err := volumeAccess(req)
	if err != nil {
		return nil, err
	}
	if err := checkSource(req.Source); err != nil {
		return nil, err
	}
	if err := backend.CheckPlacement(req, b.cfg.NodeName); err != nil {
		return nil, err
	}

	var vol *backend.Volume
	err = b.change(ctx, func(st *poolState) error {
		v, err := b.createVolume(ctx, st, req, access)
		vol = v
		return err
	})
	if err != nil {
		return nil, err
	}
	return vol, nil
}

// createVolume is CreateVolume on one state of the pool, under b.mu.
func (b *Backend) createVolume(ctx context.Context, st *poolState, req backend.VolumeRequest, access backend.AccessType) (*backend.Volume, error) {
	existing, m, err := st.owned(req.ID)
	if err != nil {
		return nil, err
	}
	if existing != nil && !m.Creating {
		vol := b.volumeFrom(existing, m, st.pool)
		if vol.Source != req.Source || vol.AccessType != access ||
			!backend.Fits(vol.SizeBytes, req.RequiredBytes, req.LimitBytes) {
			return nil, fmt.Errorf("volume %s (%d bytes, source %+v, %s) vs request (%d..%d bytes, source %+v, %s): %w",
				req.ID, vol.SizeBytes, vol.Source, vol.AccessType, req.RequiredBytes, req.LimitBytes, req.Source, access, backend.ErrExists)
		}
		return vol, nil
	}

	src, err := st.source(req.Source)
	if err != nil {
		return nil, err
	}
	if src != nil {
		if err := st.checkCopyAccess(src, req.ID, access); err != nil {
			return nil, err
		}
	}
	size, err := b.resolveSize(req, src)
	if err != nil {
		return nil, err
	}

	if existing != nil && !resumable(existing, m, req.Source, access, size) {
		klog.InfoS("removing half-made volume with a different spec", "volumeID", req.ID)
		if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, req.ID)...); err != nil {
			return nil, fmt.Errorf("remove half-made volume %s: %w", req.ID, err)
		}
		st.drop(req.ID)
		existing = nil
	}
	// What finishVolume still has to do: grow from curSize.
	curSize, created := int64(0), m.CreatedAt
	var made *LV // the cache's entry for an LV made here
	if existing != nil {
		curSize = existing.Size
		klog.InfoS("completing half-made volume", "volumeID", req.ID, "fromBytes", curSize, "toBytes", size)
	} else {
		if err := b.admit(st, size, size); err != nil {
			return nil, fmt.Errorf("create volume %s: %w", req.ID, err)
		}
		curSize = size
		if src != nil {
			curSize = src.Size
		}
		created = now()
		meta := objectMeta{
			Kind: kindVolume, Name: req.Name, Source: req.Source, AccessType: access,
			FsType: req.FsType, CreatedAt: created, Parameters: req.Parameters,
		}
		if curSize < size {
			meta.Grow = growth{From: curSize, To: size}
		}
		tags, err := encodeTags(meta)
		if err != nil {
			return nil, err
		}
		args := createThinArgs(b.cfg.VG, b.cfg.ThinPool, req.ID, size, tags)
		if src != nil {
			args = createWritableSnapshotArgs(b.cfg.VG, src.Name, req.ID, tags)
		}
		if _, err := b.lvm.run(ctx, args...); err != nil {
			return nil, fmt.Errorf("create volume %s: %w", req.ID, err)
		}
		// A new thin LV is activated by lvcreate; a copy is not
		// (--activate n): the node activates it when it stages it.
		made = b.madeLV(req.ID, size, tags, created, lvMode{writeable: true, active: src == nil})
	}
	if err := b.finishVolume(ctx, req.ID, curSize, size); err != nil {
		return nil, err
	}
	if made != nil {
		st.put(made)
	} else {
		// Completing a half-made LV is rare: list again next time
		// rather than rebuild its entry by hand.
		b.cache.invalidate()
	}
	klog.InfoS("thin volume created", "volumeID", req.ID, "name", req.Name, "sizeBytes", size,
		"sourceKind", req.Source.Kind, "sourceID", req.Source.ID, "accessType", access)
	// Built from what was just written rather than read back: one LVM
	// command less per create (docs/performance.md has what one costs).
	return &backend.Volume{
		ID: req.ID, Name: req.Name, SizeBytes: size, Source: req.Source, AccessType: access,
		FsType: req.FsType, Parameters: req.Parameters, Node: b.cfg.NodeName, CreatedAt: created,
		Condition: b.condition(&LV{Name: req.ID}, st.pool),
	}, nil
}

// volumeAccess checks a new volume's access and filesystem types (a
// created and a received volume alike) and returns its access type, mount
// when unset.
func volumeAccess(req backend.VolumeRequest) (backend.AccessType, error) {
	access := req.AccessType
	if access == "" {
		access = backend.AccessMount
	}
	if access != backend.AccessMount && access != backend.AccessBlock {
		return "", fmt.Errorf("access type %q: %w", req.AccessType, backend.ErrInvalid)
	}
	if !fsType.MatchString(req.FsType) {
		return "", fmt.Errorf("fsType %q: %w", req.FsType, backend.ErrInvalid)
	}
	return access, nil
}

// resumable reports whether a half-made LV can be completed into the
// requested volume: same source and access type, and a size that the
// remaining steps reach. A pending grow completes only by an lvextend,
// so it needs a size above the LV's.
func resumable(lv *LV, m objectMeta, src backend.Source, access backend.AccessType, size int64) bool {
	had := m.AccessType
	if had == "" {
		had = backend.AccessMount // as volumeFrom reads it
	}
	if m.Source != src || had != access || m.Receiving {
		return false // a half-received LV is only ever removed
	}
	return lv.Size < size
}

// now is a creation time as it reads back from its tag (UTC, whole
// nanoseconds, no monotonic clock), so that repeated reads compare equal.
func now() time.Time { return time.Unix(0, time.Now().UnixNano()).UTC() }

// finishVolume grows a new clone or restore from curSize to its size,
// the step that completes it; it is skipped when done, so a retry can run
// it again.
func (b *Backend) finishVolume(ctx context.Context, id string, curSize, size int64) error {
	if curSize < size {
		if _, err := b.lvm.run(ctx, extendArgs(b.cfg.VG, id, size)...); err != nil {
			return fmt.Errorf("grow volume %s to %d bytes: %w", id, size, err)
		}
	}
	return nil
}

func checkSource(s backend.Source) error {
	switch s.Kind {
	case backend.SourceNone:
		if s.ID != "" {
			return fmt.Errorf("source ID %q without a kind: %w", s.ID, backend.ErrInvalid)
		}
		return nil
	case backend.SourceSnapshot:
		return backend.CheckSnapshotID(s.ID)
	case backend.SourceVolume:
		return backend.CheckVolumeID(s.ID)
	}
	return fmt.Errorf("source kind %q: %w", s.Kind, backend.ErrInvalid)
}

// source returns the complete, owned LV a clone or restore copies, or nil.
func (st *poolState) source(s backend.Source) (*LV, error) {
	if s.Kind == backend.SourceNone {
		return nil, nil
	}
	want := kindVolume
	if s.Kind == backend.SourceSnapshot {
		want = kindSnapshot
	}
	lv, m, err := st.owned(s.ID)
	if err != nil {
		return nil, err
	}
	if lv == nil || m.Creating || m.Kind != want {
		return nil, fmt.Errorf("source %s %s: %w", s.Kind, s.ID, backend.ErrNotFound)
	}
	return lv, nil
}

// resolveSize applies the capacity range. A copy is never smaller than its
// source (a thin snapshot cannot shrink): it gets at least the source's
// size, whatever less was required, and is OutOfRange only when the
// limit is below that. This is backend.ResolveSize's rule with the source
// as the minimum, as on btrfs, so both backends size copies alike.
func (b *Backend) resolveSize(req backend.VolumeRequest, src *LV) (int64, error) {
	def, minimum := b.cfg.DefaultVolumeBytes, int64(0)
	if src != nil {
		def, minimum = src.Size, src.Size
	}
	size, err := backend.ResolveSize(req.RequiredBytes, req.LimitBytes, def, minimum, b.extentSize)
	if err != nil {
		if src != nil {
			return 0, fmt.Errorf("volume %s from %s (%d bytes): %w", req.ID, src.Name, src.Size, err)
		}
		return 0, fmt.Errorf("volume %s: %w", req.ID, err)
	}
	return size, nil
}

// DeleteVolume implements backend.Backend. Thin snapshots and clones do
// not depend on their origin, so a volume can go whenever it is not in
// use on the node (ErrInUse, inuse.go).
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	if !backend.IsVolumeID(id) {
		return nil // nothing with that name can exist
	}
	return b.remove(ctx, id, kindVolume)
}

func (b *Backend) remove(ctx context.Context, id, kind string) error {
	return b.change(ctx, func(st *poolState) error {
		lv := st.lvs[id]
		if lv == nil {
			return nil
		}
		m := lvMeta(lv)
		if !m.Owned || (m.Kind != kind && !m.Creating) {
			return fmt.Errorf("delete %s %s: the LV of that name is not a csi-thin %s: %w", kind, id, kind, backend.ErrPrecondition)
		}
		if kind == kindVolume {
			if err := b.checkNotMounted(id); err != nil {
				return err
			}
		}
		// Not found means it went behind the driver's back: gone either way.
		if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, id)...); err != nil && !errors.Is(err, backend.ErrNotFound) {
			if kind == kindVolume {
				err = b.openError(id, err)
			}
			return fmt.Errorf("delete %s %s: %w", kind, id, err)
		}
		st.drop(id)
		klog.InfoS("thin LV deleted", "volumeID", id, "kind", kind)
		return nil
	})
}

// lookupWithPool reports one complete LV of ours of the given kind and the
// pool, in one lvs call.
func (b *Backend) lookupWithPool(ctx context.Context, id, kind string) (*LV, objectMeta, *LV, error) {
	lvs, err := b.lvm.lvs(ctx, lvPath(b.cfg.VG, id), b.poolPath())
	if err != nil {
		return nil, objectMeta{}, nil, fmt.Errorf("%s %s: %w", kind, id, err)
	}
	var lv, pool *LV
	for i := range lvs {
		switch {
		case lvs[i].Name == b.cfg.ThinPool:
			pool = &lvs[i]
		case lvs[i].Name == id && lvs[i].Pool == b.cfg.ThinPool:
			lv = &lvs[i]
		}
	}
	if pool == nil {
		return nil, objectMeta{}, nil, fmt.Errorf("thin pool %s is gone: %w", b.poolPath(), backend.ErrUnavailable)
	}
	if lv == nil {
		return nil, objectMeta{}, nil, fmt.Errorf("%s %s: %w", kind, id, backend.ErrNotFound)
	}
	m := lvMeta(lv)
	if !m.Owned || m.Creating || m.Kind != kind {
		return nil, objectMeta{}, nil, fmt.Errorf("%s %s: %w", kind, id, backend.ErrNotFound)
	}
	return lv, m, pool, nil
}

// GetVolume implements backend.Backend.
func (b *Backend) GetVolume(ctx context.Context, id string) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	lv, m, pool, err := b.lookupWithPool(ctx, id, kindVolume)
	if err != nil {
		return nil, err
	}
	return b.volumeFrom(lv, m, pool), nil
}

// ListVolumes implements backend.Backend, ordered by ID.
func (b *Backend) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	st, err := b.scan(ctx)
	if err != nil {
		return nil, err
	}
	var vols []*backend.Volume
	for _, lv := range st.lvs {
		m := lvMeta(lv)
		if m.Owned && !m.Creating && m.Kind == kindVolume {
			vols = append(vols, b.volumeFrom(lv, m, st.pool))
		}
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	return vols, nil
}

// ExpandVolume implements backend.Backend. lvextend works on a thin LV
// with snapshots, active or not; the node grows the filesystem.
func (b *Backend) ExpandVolume(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	size, err := backend.RoundUp(sizeBytes, b.extentSize)
	if err != nil {
		return nil, err
	}
	var vol *backend.Volume
	err = b.change(ctx, func(st *poolState) error {
		lv, m, err := st.owned(id)
		if err != nil {
			return err
		}
		if lv == nil || m.Creating || m.Kind != kindVolume {
			return fmt.Errorf("expand volume %s: %w", id, backend.ErrNotFound)
		}
		if lv.Size < size {
			if err := b.admit(st, size, size-lv.Size); err != nil {
				return fmt.Errorf("expand volume %s: %w", id, err)
			}
			if _, err := b.lvm.run(ctx, extendArgs(b.cfg.VG, id, size)...); err != nil {
				return fmt.Errorf("expand volume %s: %w", id, err)
			}
			klog.InfoS("thin volume expanded", "volumeID", id, "fromBytes", lv.Size, "toBytes", size)
			// lvextend either made it this size or failed: the entry is
			// updated, not read back.
			grown := *lv
			grown.Size = size
			lv = &grown
			st.put(lv)
		}
		vol = b.volumeFrom(lv, m, st.pool)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return vol, nil
}

func (b *Backend) volumeFrom(lv *LV, m objectMeta, pool *LV) *backend.Volume {
	created := m.CreatedAt
	if created.IsZero() {
		created = lv.Time
	}
	access := m.AccessType
	if access == "" {
		access = backend.AccessMount
	}
	return &backend.Volume{
		ID: lv.Name, Name: m.Name, SizeBytes: lv.Size, Source: m.Source, AccessType: access,
		FsType: m.FsType, Parameters: m.Parameters, Node: b.cfg.NodeName, CreatedAt: created,
		Condition: b.condition(lv, pool),
	}
}
