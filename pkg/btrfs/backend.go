package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

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
	// The tool's messages, or the errno of an ioctl (ioctl.go).
	msg := err.Error()
	switch {
	case containsAny(msg, "No space left on device", "Disk quota exceeded") || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%w: %w", backend.ErrNoSpace, err)
	case containsAny(msg, "Read-only file system") || errors.Is(err, unix.EROFS):
		return fmt.Errorf("%w: %w", backend.ErrUnavailable, err)
	case containsAny(msg, "No such file or directory") || errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	return err
}
