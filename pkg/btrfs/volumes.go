package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateVolume implements backend.Backend. The subvolume is built in
// staging and becomes visible only when its record is written and it is
// renamed into place, so a crash never leaves a half-made volume visible.
func (p *Pool) CreateVolume(ctx context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(req.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	if req.AccessType == backend.AccessBlock {
		return nil, fmt.Errorf("raw block volumes: %w (btrfs serves filesystems; use the lvmthin backend)", backend.ErrUnsupported)
	}
	if req.FsType != "" && req.FsType != FsTypeBtrfs {
		return nil, fmt.Errorf("fsType %q: %w (a btrfs pool serves btrfs subvolumes)", req.FsType, backend.ErrUnsupported)
	}
	if err := backend.CheckPlacement(req, p.cfg.NodeName); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()

	srcPath, minSize, err := p.resolveSource(req.Source)
	if err != nil {
		return nil, err
	}
	size, err := backend.ResolveSize(req.RequiredBytes, req.LimitBytes, defaultVolumeBytes, minSize, allocUnit)
	if err != nil {
		return nil, err
	}
	if existing, err := p.readRecord(req.ID); err == nil && existing.Volume != nil {
		v := existing.Volume
		if v.Source != req.Source || v.AccessType != backend.AccessMount || !backend.Fits(v.SizeBytes, req.RequiredBytes, req.LimitBytes) {
			return nil, fmt.Errorf("volume %s (%d bytes, source %+v): %w", req.ID, v.SizeBytes, v.Source, backend.ErrExists)
		}
		return p.withCondition(v), nil
	} else if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return nil, err
	}
	if err := p.checkRoom(size); err != nil {
		return nil, err
	}

	staging := p.stagingPath(req.ID)
	if err := p.discardStaging(ctx, req.ID); err != nil {
		return nil, err
	}
	if srcPath == "" {
		err = p.cli.createSubvolume(ctx, staging)
	} else {
		err = p.cli.snapshot(ctx, srcPath, staging)
	}
	if err != nil {
		return nil, fmt.Errorf("create subvolume for %s: %w", req.ID, classify(err))
	}
	vol := &backend.Volume{
		ID: req.ID, Name: req.Name, SizeBytes: size, Source: req.Source,
		AccessType: backend.AccessMount, FsType: FsTypeBtrfs, Parameters: req.Parameters,
		Node: p.cfg.NodeName, CreatedAt: time.Now().UTC().Truncate(time.Second),
	}
	if err := p.commit(ctx, staging, p.volumePath(req.ID), &record{Volume: vol}, size); err != nil {
		p.discardStaging(context.WithoutCancel(ctx), req.ID)
		return nil, err
	}
	p.provisioned.Add(size)
	klog.InfoS("btrfs volume created", "volumeID", req.ID, "name", req.Name, "sizeBytes", size, "source", req.Source.ID)
	return p.withCondition(vol), nil
}

// resolveSource returns the subvolume to snapshot and the smallest size a
// volume made from it may have.
func (p *Pool) resolveSource(src backend.Source) (string, int64, error) {
	switch src.Kind {
	case backend.SourceNone:
		return "", 0, nil
	case backend.SourceSnapshot:
		s, err := p.GetSnapshot(context.Background(), src.ID)
		if err != nil {
			return "", 0, fmt.Errorf("source snapshot: %w", err)
		}
		if err := p.attentionError(src.ID); err != nil {
			return "", 0, fmt.Errorf("source snapshot: %w", err)
		}
		return p.snapshotPath(src.ID), s.SizeBytes, nil
	case backend.SourceVolume:
		v, err := p.GetVolume(context.Background(), src.ID)
		if err != nil {
			return "", 0, fmt.Errorf("source volume: %w", err)
		}
		if err := p.attentionError(src.ID); err != nil {
			return "", 0, fmt.Errorf("source volume: %w", err)
		}
		return p.volumePath(src.ID), v.SizeBytes, nil
	}
	return "", 0, fmt.Errorf("source kind %q: %w", src.Kind, backend.ErrInvalid)
}

// DeleteVolume implements backend.Backend. Snapshots and clones of the
// volume are independent subvolumes and outlive it; a mounted volume is
// ErrInUse (inuse.go).
func (p *Pool) DeleteVolume(ctx context.Context, id string) error {
	if !backend.IsVolumeID(id) {
		return nil // no such volume can exist
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkNotMounted(id, p.volumePath(id)); err != nil {
		return err
	}
	return p.deleteObject(ctx, id, p.volumePath(id))
}

// GetVolume implements backend.Backend.
func (p *Pool) GetVolume(ctx context.Context, id string) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	rec, err := p.readRecord(id)
	if err != nil {
		return nil, err
	}
	if rec.Volume == nil {
		return nil, fmt.Errorf("volume %s: %w", id, backend.ErrNotFound)
	}
	return p.withCondition(rec.Volume), nil
}

// withCondition fills in the volume's health as seen now.
func (p *Pool) withCondition(v *backend.Volume) *backend.Volume {
	out := *v
	out.Condition = backend.Condition{Message: "ok"}
	if err := p.attentionError(v.ID); err != nil {
		out.Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonNeedsAttention, Message: err.Error()}
		return &out
	}
	if _, err := os.Stat(p.volumePath(v.ID)); err != nil {
		out.Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonMissing, Message: fmt.Sprintf("subvolume missing: %v", err)}
		return &out
	}
	st, err := p.statfs()
	switch {
	case err != nil:
		out.Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonPoolError, Message: err.Error()}
	case st.readOnly:
		out.Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonPoolReadOnly, Message: "pool is read-only"}
	case st.free == 0:
		out.Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonPoolFull, Message: "pool is out of space: writes fail"}
	}
	return &out
}

// ListVolumes implements backend.Backend, sorted by ID for stable paging.
func (p *Pool) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	recs, err := p.listRecords()
	if err != nil {
		return nil, err
	}
	var out []*backend.Volume
	for _, r := range recs {
		if r.Volume != nil {
			out = append(out, p.withCondition(r.Volume))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ExpandVolume implements backend.Backend: only the qgroup limit moves, so
// it is instant and online; the filesystem is the pool's own.
func (p *Pool) ExpandVolume(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rec, err := p.readRecord(id)
	if err != nil {
		return nil, err
	}
	if rec.Volume == nil {
		return nil, fmt.Errorf("volume %s: %w", id, backend.ErrNotFound)
	}
	size, err := backend.RoundUp(sizeBytes, allocUnit)
	if err != nil {
		return nil, err
	}
	if size <= rec.Volume.SizeBytes {
		return p.withCondition(rec.Volume), nil
	}
	if err := p.checkRoom(size - rec.Volume.SizeBytes); err != nil {
		return nil, err
	}
	if rec.Qgroup == "" {
		// Migration at Open failed for this volume: a second chance.
		if err := p.migrateVolumeQgroup(ctx, id, rec); err != nil {
			p.needsAttention(id, fmt.Errorf("move the limit to a level-1 qgroup: %w", err))
			return nil, p.attentionError(id)
		}
		p.attended(id)
	}
	if p.quota == QuotaFull {
		// Full qgroups do not add nested subvolumes by themselves.
		if err := p.adoptNested(ctx, id, rec.SubvolumeID, rec.Qgroup); err != nil {
			return nil, err
		}
	}
	if err := p.cli.limitQgroup(ctx, rec.Qgroup, size, p.mountPath); err != nil {
		return nil, fmt.Errorf("raise limit of %s: %w", id, classify(err))
	}
	old := rec.Volume.SizeBytes
	rec.Volume.SizeBytes = size
	if err := p.writeRecord(id, rec); err != nil {
		return nil, err
	}
	p.provisioned.Add(size - old)
	klog.InfoS("btrfs volume expanded", "volumeID", id, "sizeBytes", size)
	return p.withCondition(rec.Volume), nil
}
