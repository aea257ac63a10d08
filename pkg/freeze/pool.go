package freeze

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Pool is a backend.Local whose CreateSnapshot and CreateGroupSnapshot
// (group.go) freeze the source volumes' filesystems while the backend
// takes the snapshot, when they are mounted in this process's mount
// namespace (the node plugin's, which has the kubelet's staging mounts).
// It is for block-device pools (LVM thin: ext4/xfs on a thin LV). A btrfs
// pool is never frozen: its snapshot is atomic and flushes the
// subvolume's dirty data first, and FIFREEZE would freeze the whole pool
// filesystem, snapshot included.
type Pool struct {
	backend.Local
	freezer *Freezer
	// snapshots: single snapshots are frozen too, not only groups.
	snapshots bool
	// frozenRefused: this kernel refused a snapshot of a frozen
	// filesystem (LVM's suspend fails busy on 6.1): from then on nothing
	// is frozen for a snapshot, since the kernel does not change under the
	// process.
	frozenRefused atomic.Bool
	// mountInfo lists the mounts (tests substitute it).
	mountInfo func() ([]mount.MountInfo, error)
}

// NewPool wraps b so its snapshots and group snapshots are taken frozen.
func NewPool(b backend.Local, f *Freezer) *Pool {
	return newPool(b, f, Options{Snapshots: true})
}

func newPool(b backend.Local, f *Freezer, o Options) *Pool {
	return &Pool{Local: b, freezer: f, snapshots: o.Snapshots, mountInfo: func() ([]mount.MountInfo, error) {
		return mount.ParseMountInfo("/proc/self/mountinfo")
	}}
}

// Options say what a wrapped pool freezes besides groups.
type Options struct {
	// Snapshots: freeze the source of a single snapshot too
	// (--snapshot-freeze; LVM's lvcreate freezes it by itself).
	Snapshots bool
}

// Wrap is NewPool for a node's pool: group snapshots of mounted members
// are taken frozen together, single snapshots as o says, and what the
// pool can do besides backend.Local stays visible through the wrapper. A
// pool that streams (backend.Streamer) still does once wrapped, since the
// node agent finds transfers and exports by asking the pool it holds for
// that interface, and freezing must not turn them off. (GroupSnapshotter
// is Pool's own.)
func Wrap(b backend.Local, f *Freezer, o Options) backend.Local {
	p := newPool(b, f, o)
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
	if req.SkipFreeze || !p.snapshots || p.frozenRefused.Load() {
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
	var snapErr error
	held, err := p.freezer.FrozenHeld(ctx, req.ID, paths, func(ctx context.Context) error {
		snap, snapErr = p.Local.CreateSnapshot(ctx, req)
		return snapErr
	})
	if len(paths) > 0 && errors.Is(snapErr, backend.ErrBusy) {
		// lvcreate's own suspend still freezes the origin: the snapshot
		// taken unfrozen is as clean.
		p.busyWhileFrozen(req.ID, held, snapErr)
		return p.Local.CreateSnapshot(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	if len(paths) > 0 {
		klog.V(2).InfoS("snapshot taken with the filesystem frozen", "snapshotID", req.ID, "volumeID", req.SourceVolumeID, "paths", paths)
	}
	return snap, nil
}

// busyWhileFrozen takes note of a snapshot that failed busy with its
// filesystems frozen, before it is taken again unfrozen. Only a busy
// answer while they were still held frozen is the kernel refusing frozen
// snapshots; after the freeze timeout thawed them, busy says nothing about
// the kernel, and freezing stays on.
func (p *Pool) busyWhileFrozen(id string, held bool, err error) {
	if !held {
		klog.InfoS("snapshot failed busy after the freeze timeout thawed its filesystems: taken again unfrozen", "snapshotID", id, "err", err)
		return
	}
	p.refuseFrozen(id, err)
}

// refuseFrozen records that this kernel refused a snapshot of a frozen
// filesystem, saying so in the log the first time.
func (p *Pool) refuseFrozen(id string, err error) {
	if !p.frozenRefused.Swap(true) {
		klog.InfoS("this kernel refuses a snapshot of a frozen filesystem: snapshots are taken unfrozen from now on (each clean by lvcreate's own suspend); group snapshots member by member, not one instant (docs/consistency.md)",
			"snapshotID", id, "err", err)
	}
}

// TakesFrozen reports whether snapshots are still taken frozen: false
// once this kernel refused one.
func (p *Pool) TakesFrozen() bool { return !p.frozenRefused.Load() }

// activeDevices is a pool that can name an active volume's device node
// without activating it (LVM thin's Target activates an inactive volume,
// a side effect a snapshot must not have). An inactive volume has no
// device, so nothing of it is mounted.
type activeDevices interface {
	ActiveDevice(id string) (string, bool)
}

// mountedAt returns one mount path per filesystem on the volume's device,
// none for a volume that is not a mounted block device.
func (p *Pool) mountedAt(ctx context.Context, id string) ([]string, error) {
	var path string
	if d, ok := p.Local.(activeDevices); ok {
		dev, active := d.ActiveDevice(id)
		if !active {
			return nil, nil
		}
		path = dev
	} else {
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
		path = target.Path
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // not active, so not mounted
		}
		return nil, fmt.Errorf("stat %s of volume %s: %w", path, id, err)
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
