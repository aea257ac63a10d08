package lvmthin

import (
	"context"
	"fmt"
	"sort"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateSnapshot implements backend.Backend: a read-only thin snapshot of
// the volume, O(1) in data size, made by one atomic lvcreate after a look
// at the pool's state (cache.go); the result is not read back.
func (b *Backend) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if !backend.IsSnapshotID(req.ID) {
		return nil, fmt.Errorf("snapshot ID %q: %w", req.ID, backend.ErrInvalid)
	}
	if err := backend.CheckVolumeID(req.SourceVolumeID); err != nil {
		return nil, err
	}
	want := backend.Source{Kind: backend.SourceVolume, ID: req.SourceVolumeID}

	var snap *backend.Snapshot
	err := b.change(ctx, func(st *poolState) error {
		s, err := b.createSnapshot(ctx, st, req, want)
		snap = s
		return err
	})
	if err != nil {
		return nil, err
	}
	return snap, nil
}

// createSnapshot is CreateSnapshot on one state of the pool, under b.mu.
func (b *Backend) createSnapshot(ctx context.Context, st *poolState, req backend.SnapshotRequest, want backend.Source) (*backend.Snapshot, error) {
	existing, m, err := st.owned(req.ID)
	if err != nil {
		return nil, err
	}
	if existing != nil && m.Source != want {
		if !m.Creating {
			return nil, fmt.Errorf("snapshot %s is of %s, not %s: %w", req.ID, m.Source.ID, req.SourceVolumeID, backend.ErrExists)
		}
		klog.InfoS("removing half-made snapshot of another volume", "snapshotID", req.ID, "volumeID", m.Source.ID)
		if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, req.ID)...); err != nil {
			return nil, fmt.Errorf("remove half-made snapshot %s: %w", req.ID, err)
		}
		st.drop(req.ID)
		existing = nil
	}
	if existing == nil {
		src, err := st.source(want)
		if err != nil {
			return nil, err
		}
		if err := b.guard(st); err != nil {
			return nil, fmt.Errorf("snapshot %s of volume %s: %w", req.ID, req.SourceVolumeID, err)
		}
		created := now()
		// The source's access type, so that a restore keeps it
		// (access.go) even after the source is gone.
		access, _ := st.accessOf(src)
		tags, err := encodeTags(objectMeta{Kind: kindSnapshot, Name: req.Name, Source: want, AccessType: access,
			FsType: lvMeta(src).FsType, CreatedAt: created, Group: req.GroupID, GroupSize: req.GroupSize})
		if err != nil {
			return nil, err
		}
		if _, err := b.lvm.run(ctx, createSnapshotArgs(b.cfg.VG, req.SourceVolumeID, req.ID, tags)...); err != nil {
			return nil, fmt.Errorf("snapshot %s of volume %s: %w", req.ID, req.SourceVolumeID, err)
		}
		// Read-only and skipped on activation (createSnapshotArgs).
		st.put(b.madeLV(req.ID, src.Size, tags, created, lvMode{writeable: false, active: false}))
		klog.InfoS("thin snapshot created", "snapshotID", req.ID, "volumeID", req.SourceVolumeID, "name", req.Name)
		return &backend.Snapshot{ID: req.ID, Name: req.Name, SourceVolumeID: req.SourceVolumeID, SizeBytes: src.Size,
			Node: b.cfg.NodeName, CreatedAt: created, ReadyToUse: true, GroupID: req.GroupID, GroupSize: req.GroupSize}, nil
	}
	return b.snapshotFrom(existing, m), nil
}

// DeleteSnapshot implements backend.Backend. Volumes restored from the
// snapshot are independent thin LVs and stay.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	if !backend.IsSnapshotID(id) {
		return nil
	}
	return b.remove(ctx, id, kindSnapshot)
}

// GetSnapshot implements backend.Backend.
func (b *Backend) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(id); err != nil {
		return nil, err
	}
	lv, m, _, err := b.lookupWithPool(ctx, id, kindSnapshot)
	if err != nil {
		return nil, err
	}
	return b.snapshotFrom(lv, m), nil
}

// ListSnapshots implements backend.Backend, ordered by ID.
func (b *Backend) ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error) {
	st, err := b.scan(ctx)
	if err != nil {
		return nil, err
	}
	var snaps []*backend.Snapshot
	for _, lv := range st.lvs {
		m := lvMeta(lv)
		if m.Owned && !m.Creating && m.Kind == kindSnapshot {
			snaps = append(snaps, b.snapshotFrom(lv, m))
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].ID < snaps[j].ID })
	return snaps, nil
}

func (b *Backend) snapshotFrom(lv *LV, m objectMeta) *backend.Snapshot {
	created := m.CreatedAt
	if created.IsZero() {
		created = lv.Time
	}
	return &backend.Snapshot{
		ID: lv.Name, Name: m.Name, SourceVolumeID: m.Source.ID, SizeBytes: lv.Size,
		Node: b.cfg.NodeName, CreatedAt: created, ReadyToUse: true,
		GroupID: m.Group, GroupSize: m.GroupSize,
	}
}
