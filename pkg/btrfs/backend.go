package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

const (
	// allocUnit rounds volume sizes: qgroup limits are byte-exact, but
	// MiB-aligned sizes read better everywhere they are shown.
	allocUnit = backend.MiB
	// defaultVolumeBytes is the size of a volume created without a range.
	defaultVolumeBytes = backend.GiB
	// FsTypeBtrfs is the only filesystem this backend serves.
	FsTypeBtrfs = "btrfs"
)

var _ backend.Local = (*Pool)(nil)

// Kind implements backend.Backend.
func (p *Pool) Kind() string { return "btrfs" }

// NodeName implements backend.Local.
func (p *Pool) NodeName() string { return p.cfg.NodeName }

func (p *Pool) volumePath(id string) string   { return filepath.Join(p.base, "volumes", id) }
func (p *Pool) snapshotPath(id string) string { return filepath.Join(p.base, "snapshots", id) }
func (p *Pool) stagingPath(id string) string  { return filepath.Join(p.base, "staging", id) }

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

// Health implements backend.Backend.
func (p *Pool) Health(ctx context.Context) backend.Health {
	st, err := p.statfs()
	if err != nil {
		return backend.Health{Message: err.Error()}
	}
	if st.readOnly {
		return backend.Health{Message: fmt.Sprintf("pool %s is mounted read-only", p.mountPath)}
	}
	if _, err := os.Stat(filepath.Join(p.base, "meta")); err != nil {
		return backend.Health{Message: fmt.Sprintf("pool layout unreadable: %v", err)}
	}
	if pct := usedPercent(st); pct >= p.cfg.FullPercent {
		return backend.Health{Healthy: true, Message: fmt.Sprintf("pool %.1f%% full: new volumes are refused", pct)}
	}
	return backend.Health{Healthy: true, Message: "ok"}
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
	if req.Node != "" && req.Node != p.cfg.NodeName {
		return nil, fmt.Errorf("volume requested on node %q, this pool is on %q: %w", req.Node, p.cfg.NodeName, backend.ErrPrecondition)
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

// commit limits a staged subvolume (through its level-1 qgroup, which
// subvolumes nested in it later join: nested.go), writes its record and
// moves it into place. The record is written before the rename: a crash
// in between leaves a record whose subvolume is still in staging, which
// recovery removes together.
func (p *Pool) commit(ctx context.Context, staging, final string, rec *record, limit int64) error {
	subvolID, err := subvolumeIDOf(staging)
	if err != nil {
		return fmt.Errorf("subvolume id of %s: %w", staging, err)
	}
	rec.SubvolumeID = subvolID
	if limit > 0 {
		if rec.Qgroup, err = p.setUpVolumeQgroup(ctx, subvolID, limit); err != nil {
			return fmt.Errorf("limit %s: %w", staging, err)
		}
	}
	id := filepath.Base(final)
	if err := p.writeRecord(id, rec); err != nil {
		return err
	}
	if err := os.Rename(staging, final); err != nil {
		os.Remove(p.metaPath(id))
		return fmt.Errorf("move %s into place: %w", id, err)
	}
	return syncDir(filepath.Dir(final))
}

// discardStaging removes a leftover staged subvolume of id, which can only
// be an unfinished create of ours, with the level-1 qgroup it may have
// got.
func (p *Pool) discardStaging(ctx context.Context, id string) error {
	path := p.stagingPath(id)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		p.attended(id)
		return nil
	}
	if subvolID, err := subvolumeIDOf(path); err == nil && backend.IsVolumeID(id) {
		if err := p.scheduleReap(volumeQgroup(subvolID)); err != nil {
			return err
		}
	}
	if err := p.deleteTree(ctx, id, path); err != nil {
		return fmt.Errorf("remove unfinished %s: %w", id, err)
	}
	p.attended(id)
	p.reapQgroups()
	klog.InfoS("removed unfinished staged subvolume", "volumeID", id)
	return nil
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

func (p *Pool) deleteObject(ctx context.Context, id, path string) error {
	rec, err := p.readRecord(id)
	if errors.Is(err, errCorruptRecord) {
		// Deleting is the way out for an unreadable record: what it
		// would have said is read from the subvolume itself below.
		klog.InfoS("deleting an object whose record is unreadable", "volumeID", id, "err", err)
		rec, err = nil, nil
	}
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	if err := p.markDeleting(id); err != nil {
		return err
	}
	// Only the call that commits the delete stops counting the volume: a
	// retry, or recovery, finds the record already in the marker.
	if rec != nil && rec.Volume != nil {
		p.provisioned.Add(-rec.Volume.SizeBytes)
	}
	// A delete that an earlier attempt or a crash cut off after its commit
	// point finds its record in the marker.
	marked := rec
	if marked == nil {
		if marked, err = p.readRecordOrMarker(id); errors.Is(err, errCorruptRecord) {
			marked = nil
		} else if err != nil && !errors.Is(err, backend.ErrNotFound) {
			return err
		}
	}
	if _, statErr := os.Lstat(path); statErr == nil {
		if sid, err := subvolumeIDOf(path); err == nil && backend.IsVolumeID(id) {
			// The subvolume itself names its level-1 qgroup, whatever
			// the record says (or if it says nothing).
			if err := p.scheduleReap(volumeQgroup(sid)); err != nil {
				return err
			}
		}
		// Subvolumes a tenant nested in the volume go first: btrfs
		// refuses to delete a subvolume that holds others.
		if err := p.deleteTree(ctx, id, path); err != nil {
			return fmt.Errorf("delete subvolume %s: %w", id, err)
		}
	}
	if marked != nil && marked.Volume != nil && marked.SubvolumeID != 0 {
		// Scheduled before the marker goes, so that a crash cannot lose
		// it; destroyed once the cleaner has emptied it (nested.go).
		if err := p.scheduleReap(volumeQgroup(marked.SubvolumeID)); err != nil {
			return err
		}
		// A received volume's limit is on the qgroup it was received
		// into (stream.go), which the record names.
		if marked.Qgroup != "" && marked.Qgroup != volumeQgroup(marked.SubvolumeID) {
			if err := p.scheduleReap(marked.Qgroup); err != nil {
				return err
			}
		}
	}
	if marked != nil && marked.SubvolumeID != 0 {
		// Before the marker goes, so that a crash here leaves recovery the
		// qgroup's ID. Best effort: until the cleaner has dropped the
		// subvolume the kernel may refuse, and newer kernels remove a
		// deleted subvolume's qgroup themselves; a leftover is an empty
		// qgroup 0/<id> that charges nothing.
		if err := p.cli.destroyQgroup(ctx, marked.SubvolumeID, p.mountPath); err != nil {
			klog.V(4).InfoS("qgroup not destroyed yet", "volumeID", id, "err", err)
		}
	}
	if err := p.forgetDeleting(id); err != nil {
		return err
	}
	p.attended(id)
	p.reapQgroups()
	if marked != nil {
		klog.InfoS("btrfs object deleted", "volumeID", id)
	}
	return nil
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
	if err := p.cli.setReadOnly(ctx, final, true); err != nil {
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

// Target implements backend.Local: the node bind-mounts the subvolume.
func (p *Pool) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := p.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	path := p.volumePath(id)
	if _, err := os.Stat(path); err != nil {
		return backend.Target{}, fmt.Errorf("subvolume of %s: %w", id, backend.ErrUnavailable)
	}
	return backend.Target{Path: path}, nil
}

// Usage implements backend.Local from the volume's level-1 qgroup, which
// counts the subvolumes nested in it too: statfs on a subvolume reports
// the whole pool. With full qgroups it first adopts nested subvolumes
// made since the last look (the kernel adds them only with simple quotas).
func (p *Pool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	v, err := p.GetVolume(ctx, id)
	if err != nil {
		return backend.Usage{}, err
	}
	rec, err := p.readRecord(id)
	if err != nil {
		return backend.Usage{}, err
	}
	want := rec.Qgroup
	if want == "" {
		want = levelZeroQgroup(rec.SubvolumeID) // not migrated yet
	} else if p.quota == QuotaFull {
		p.mu.Lock()
		err := p.adoptNested(ctx, id, rec.SubvolumeID, rec.Qgroup)
		p.mu.Unlock()
		if err != nil {
			return backend.Usage{}, err
		}
	}
	g, err := p.cli.qgroupOf(ctx, p.volumePath(id), want)
	if err != nil {
		return backend.Usage{}, err
	}
	u := backend.Usage{CapacityBytes: v.SizeBytes, UsedBytes: g.Referenced}
	u.AvailableBytes = max(0, u.CapacityBytes-u.UsedBytes)
	return u, nil
}

// classify maps btrfs failures to backend sentinels where the kernel's
// answer says what went wrong.
func classify(err error) error {
	msg := err.Error()
	switch {
	case containsAny(msg, "No space left on device", "Disk quota exceeded"):
		return fmt.Errorf("%w: %w", backend.ErrNoSpace, err)
	case containsAny(msg, "Read-only file system"):
		return fmt.Errorf("%w: %w", backend.ErrUnavailable, err)
	case containsAny(msg, "No such file or directory"):
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	return err
}
