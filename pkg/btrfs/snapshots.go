package btrfs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// CreateSnapshot implements backend.Backend.
func (p *Pool) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(req.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if existing, err := p.readRecord(req.ID); err == nil && existing.Snapshot != nil {
		if existing.Snapshot.SourceVolumeID != req.SourceVolumeID {
			return nil, fmt.Errorf("snapshot %s of volume %s: %w", req.ID, existing.Snapshot.SourceVolumeID, backend.ErrExists)
		}
		// An earlier attempt may have failed between the rename and the
		// read-only flag: finish it before calling the snapshot ready.
		if err := p.ensureReadOnly(ctx, p.snapshotPath(req.ID)); err != nil {
			return nil, fmt.Errorf("make snapshot %s read-only: %w", req.ID, classify(err))
		}
		return existing.Snapshot, nil
	} else if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return nil, err
	}
	src, err := p.GetVolume(ctx, req.SourceVolumeID)
	if err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	if err := p.attentionError(src.ID); err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	if st, err := p.statfs(); err != nil {
		return nil, err
	} else if pct := usedPercent(st); pct >= p.cfg.FullPercent {
		return nil, fmt.Errorf("pool is %.1f%% full (limit %.0f%%): %w", pct, p.cfg.FullPercent, backend.ErrNoSpace)
	}
	staging := p.stagingPath(req.ID)
	if err := p.discardStaging(ctx, req.ID); err != nil {
		return nil, err
	}
	if err := p.cli.snapshot(ctx, p.volumePath(src.ID), staging); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", src.ID, classify(err))
	}
	snap := &backend.Snapshot{
		ID: req.ID, Name: req.Name, SourceVolumeID: src.ID, SizeBytes: src.SizeBytes,
		Node: p.cfg.NodeName, CreatedAt: time.Now().UTC(), ReadyToUse: true,
	}
	final := p.snapshotPath(req.ID)
	if err := p.commit(ctx, staging, final, &record{Snapshot: snap}, 0); err != nil {
		p.discardStaging(context.WithoutCancel(ctx), req.ID)
		return nil, err
	}
	// Read-only only once in place: btrfs cannot move a read-only
	// subvolume to another directory. Recovery re-applies it.
	if err := p.cli.makeReadOnly(ctx, final); err != nil {
		return nil, fmt.Errorf("make snapshot %s read-only: %w", req.ID, err)
	}
	klog.InfoS("btrfs snapshot created", "snapshotID", req.ID, "volumeID", src.ID, "name", req.Name)
	return snap, nil
}

// DeleteSnapshot implements backend.Backend. Volumes restored from the
// snapshot are independent and outlive it.
func (p *Pool) DeleteSnapshot(ctx context.Context, id string) error {
	if !backend.IsSnapshotID(id) {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deleteObject(ctx, id, p.snapshotPath(id))
}

// GetSnapshot implements backend.Backend.
func (p *Pool) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(id); err != nil {
		return nil, err
	}
	rec, err := p.readRecord(id)
	if err != nil {
		return nil, err
	}
	if rec.Snapshot == nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, backend.ErrNotFound)
	}
	return rec.Snapshot, nil
}

// ListSnapshots implements backend.Backend, sorted by ID.
func (p *Pool) ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error) {
	recs, err := p.listRecords()
	if err != nil {
		return nil, err
	}
	var out []*backend.Snapshot
	for _, r := range recs {
		if r.Snapshot != nil {
			out = append(out, r.Snapshot)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
