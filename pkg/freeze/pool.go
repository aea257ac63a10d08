package freeze

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Pool is a backend.Local whose CreateSnapshot freezes the source volume's
// filesystem while the backend takes the snapshot, when that filesystem is
// mounted in this process's mount namespace (the node plugin's, which has
// the kubelet's staging mounts). It is for block-device pools (LVM thin:
// ext4/xfs on a thin LV). A btrfs pool is never frozen: its snapshot is
// atomic and flushes the subvolume's dirty data first, and FIFREEZE would
// freeze the whole pool filesystem, snapshot included.
type Pool struct {
	backend.Local
	freezer *Freezer
	// mountInfo lists the mounts (tests substitute it).
	mountInfo func() ([]mount.MountInfo, error)
}

// NewPool wraps b so its snapshots are taken frozen.
func NewPool(b backend.Local, f *Freezer) *Pool {
	return &Pool{Local: b, freezer: f, mountInfo: func() ([]mount.MountInfo, error) {
		return mount.ParseMountInfo("/proc/self/mountinfo")
	}}
}

// Wrap is NewPool for a node's pool: what the pool can do besides
// backend.Local stays visible through the wrapper. A pool that streams
// (backend.Streamer) still does once wrapped, since the node agent finds
// transfers and exports by asking the pool it holds for that interface,
// and freezing must not turn them off. (GroupSnapshotter is Pool's own.)
func Wrap(b backend.Local, f *Freezer) backend.Local {
	p := NewPool(b, f)
	if s, ok := b.(backend.Streamer); ok {
		return &streamingPool{Pool: p, Streamer: s}
	}
	return p
}

type streamingPool struct {
	*Pool
	backend.Streamer
}

// CreateSnapshot implements backend.Backend.
func (p *Pool) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if req.SkipFreeze {
		return p.Local.CreateSnapshot(ctx, req)
	}
	if _, err := p.Local.GetSnapshot(ctx, req.ID); err == nil {
		return p.Local.CreateSnapshot(ctx, req) // a replay: the snapshot exists, nothing to freeze for
	}
	paths, err := p.mountedAt(ctx, req.SourceVolumeID)
	if err != nil {
		return nil, err
	}
	var snap *backend.Snapshot
	err = p.freezer.Frozen(ctx, req.ID, paths, func(ctx context.Context) error {
		var err error
		snap, err = p.Local.CreateSnapshot(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(paths) > 0 {
		klog.V(2).InfoS("snapshot taken with the filesystem frozen", "snapshotID", req.ID, "volumeID", req.SourceVolumeID, "paths", paths)
	}
	return snap, nil
}

// mountedAt returns one mount path per filesystem on the volume's device,
// none for a volume that is not a mounted block device.
func (p *Pool) mountedAt(ctx context.Context, id string) ([]string, error) {
	target, err := p.Local.Target(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil // the backend answers for a missing source
	}
	if err != nil {
		return nil, err
	}
	if !target.IsDevice {
		return nil, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(target.Path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // not active, so not mounted
		}
		return nil, fmt.Errorf("stat %s of volume %s: %w", target.Path, id, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, nil
	}
	infos, err := p.mountInfo()
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	major, minor := int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
	for _, mi := range infos {
		// The device's own filesystem, mounted (a raw block volume's bind
		// mount of the device node shows /dev's numbers instead).
		if mi.Major == major && mi.Minor == minor {
			return []string{mi.MountPoint}, nil
		}
	}
	return nil, nil
}
