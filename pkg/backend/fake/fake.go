// Package fake is an in-memory backend.Local for unit tests of the CSI
// servers and the Kubernetes layer. It keeps the contract (idempotency,
// sentinel errors, sizes) but stores nothing: claims about storage must be
// proven on the real backends.
package fake

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Backend is an in-memory pool.
type Backend struct {
	mu        sync.Mutex
	Node      string
	Total     int64
	volumes   map[string]*backend.Volume
	snapshots map[string]*backend.Snapshot
	// mounts stands for the node's mount table: volume ID -> a mount.
	mounts map[string]string
	// Creates counts volumes really created (not idempotent replays).
	Creates int
	// snapshotErr fails new snapshots of a volume (FailSnapshotsOf).
	snapshotErr map[string]error
}

var _ backend.Local = (*Backend)(nil)

// New returns an empty pool of total bytes on node.
func New(node string, total int64) *Backend {
	return &Backend{Node: node, Total: total, volumes: map[string]*backend.Volume{}, snapshots: map[string]*backend.Snapshot{}}
}

func (b *Backend) Kind() string     { return "fake" }
func (b *Backend) NodeName() string { return b.Node }
func (b *Backend) Health(context.Context) backend.Health {
	return backend.Health{Healthy: true, Message: "ok"}
}

func (b *Backend) provisioned() int64 {
	var n int64
	for _, v := range b.volumes {
		n += v.SizeBytes
	}
	return n
}

// SetMounted records (path != "") or clears a mount of volume id, as the
// real backends find one in the node's mount table.
func (b *Backend) SetMounted(id, path string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mounts == nil {
		b.mounts = map[string]string{}
	}
	if path == "" {
		delete(b.mounts, id)
		return
	}
	b.mounts[id] = path
}

// Capacity implements backend.Backend.
func (b *Backend) Capacity(context.Context, string) (backend.Capacity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.provisioned()
	return backend.Capacity{TotalBytes: b.Total, ProvisionedBytes: p, AvailableBytes: max(0, b.Total-p), MaximumVolumeBytes: b.Total}, nil
}

// CreateVolume implements backend.Backend.
func (b *Backend) CreateVolume(_ context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !backend.IsVolumeID(req.ID) {
		return nil, fmt.Errorf("id %q: %w", req.ID, backend.ErrInvalid)
	}
	if err := backend.CheckPlacement(req, b.Node); err != nil {
		return nil, err
	}
	var minimum int64
	switch req.Source.Kind {
	case backend.SourceSnapshot:
		s, ok := b.snapshots[req.Source.ID]
		if !ok {
			return nil, fmt.Errorf("snapshot %s: %w", req.Source.ID, backend.ErrNotFound)
		}
		minimum = s.SizeBytes
	case backend.SourceVolume:
		v, ok := b.volumes[req.Source.ID]
		if !ok {
			return nil, fmt.Errorf("volume %s: %w", req.Source.ID, backend.ErrNotFound)
		}
		minimum = v.SizeBytes
	}
	size, err := backend.ResolveSize(req.RequiredBytes, req.LimitBytes, backend.GiB, minimum, backend.MiB)
	if err != nil {
		return nil, err
	}
	access := req.AccessType
	if access == "" {
		access = backend.AccessMount
	}
	if v, ok := b.volumes[req.ID]; ok {
		if v.Source != req.Source || v.AccessType != access || !backend.Fits(v.SizeBytes, req.RequiredBytes, req.LimitBytes) {
			return nil, fmt.Errorf("volume %s: %w", req.ID, backend.ErrExists)
		}
		c := *v
		return &c, nil
	}
	if size > b.Total-b.provisioned() {
		return nil, fmt.Errorf("%d bytes: %w", size, backend.ErrNoSpace)
	}
	v := &backend.Volume{ID: req.ID, Name: req.Name, SizeBytes: size, Source: req.Source, AccessType: access,
		FsType: req.FsType, Parameters: req.Parameters, Node: b.Node, CreatedAt: time.Now()}
	b.volumes[req.ID] = v
	b.Creates++
	c := *v
	return &c, nil
}

// DeleteVolume implements backend.Backend.
func (b *Backend) DeleteVolume(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if path, ok := b.mounts[id]; ok {
		return fmt.Errorf("volume %s is mounted at %s: %w", id, path, backend.ErrInUse)
	}
	delete(b.volumes, id)
	return nil
}

// GetVolume implements backend.Backend.
func (b *Backend) GetVolume(_ context.Context, id string) (*backend.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.volumes[id]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", id, backend.ErrNotFound)
	}
	c := *v
	return &c, nil
}

// ListVolumes implements backend.Backend.
func (b *Backend) ListVolumes(context.Context) ([]*backend.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*backend.Volume, 0, len(b.volumes))
	for _, v := range b.volumes {
		c := *v
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ExpandVolume implements backend.Backend.
func (b *Backend) ExpandVolume(_ context.Context, id string, size int64) (*backend.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.volumes[id]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", id, backend.ErrNotFound)
	}
	if size > v.SizeBytes {
		v.SizeBytes = size
	}
	c := *v
	return &c, nil
}

// CreateSnapshot implements backend.Backend.
func (b *Backend) CreateSnapshot(_ context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.snapshots[req.ID]; ok {
		if s.SourceVolumeID != req.SourceVolumeID {
			return nil, fmt.Errorf("snapshot %s: %w", req.ID, backend.ErrExists)
		}
		c := *s
		return &c, nil
	}
	v, ok := b.volumes[req.SourceVolumeID]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", req.SourceVolumeID, backend.ErrNotFound)
	}
	if err := b.snapshotErr[v.ID]; err != nil {
		return nil, fmt.Errorf("snapshot of %s: %w", v.ID, err)
	}
	s := &backend.Snapshot{ID: req.ID, Name: req.Name, SourceVolumeID: v.ID, SizeBytes: v.SizeBytes, Node: b.Node, CreatedAt: time.Now(), ReadyToUse: true,
		GroupID: req.GroupID, GroupSize: req.GroupSize}
	b.snapshots[req.ID] = s
	c := *s
	return &c, nil
}

// DeleteSnapshot implements backend.Backend.
func (b *Backend) DeleteSnapshot(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.snapshots, id)
	return nil
}

// GetSnapshot implements backend.Backend.
func (b *Backend) GetSnapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.snapshots[id]
	if !ok {
		return nil, fmt.Errorf("snapshot %q: %w", id, backend.ErrNotFound)
	}
	c := *s
	return &c, nil
}

// ListSnapshots implements backend.Backend.
func (b *Backend) ListSnapshots(context.Context) ([]*backend.Snapshot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*backend.Snapshot, 0, len(b.snapshots))
	for _, s := range b.snapshots {
		c := *s
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Target implements backend.Local.
func (b *Backend) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := b.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	return backend.Target{Path: "/fake/" + id}, nil
}

// Usage implements backend.Local.
func (b *Backend) Usage(context.Context, string) (backend.Usage, error) {
	return backend.Usage{}, backend.ErrUnsupported
}
