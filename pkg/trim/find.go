package trim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// MountTable lists the mounts of this process's mount namespace (the node
// plugin's, which holds the kubelet's staging and publish mounts); tests
// substitute a fixture.
type MountTable func() ([]mount.MountInfo, error)

func ownMounts() ([]mount.MountInfo, error) { return mount.ParseMountInfo("/proc/self/mountinfo") }

// discardsOnline says whether a filesystem discards freed blocks itself:
// ext4 and xfs "discard", btrfs "discard" or "discard=async" (the
// kernel's default for btrfs on a device that can discard, since 6.2).
// The option is the superblock's, the same on every mount of it.
func discardsOnline(mi mount.MountInfo) bool {
	for _, o := range mi.SuperOptions {
		if o == "discard" || strings.HasPrefix(o, "discard=") {
			return true
		}
	}
	return false
}

// Pool lists the filesystem mounted at path, a btrfs pool, unless it
// discards online. A trim through any path of a btrfs filesystem trims
// all of it, every volume's freed space and the space of deleted volumes.
func Pool(path string, mounts MountTable) func(context.Context) ([]Target, error) {
	if mounts == nil {
		mounts = ownMounts
	}
	path = filepath.Clean(path)
	return func(context.Context) ([]Target, error) {
		infos, err := mounts()
		if err != nil {
			return nil, fmt.Errorf("list mounts: %w", err)
		}
		// The last mount at the path is the one in effect.
		for i := len(infos) - 1; i >= 0; i-- {
			if infos[i].MountPoint != path {
				continue
			}
			if discardsOnline(infos[i]) {
				return nil, nil
			}
			return []Target{{Path: path}}, nil
		}
		return nil, fmt.Errorf("pool %s is not a mount point", path)
	}
}

// Volumes is what BlockVolumes needs of a pool (backend.Local has it).
type Volumes interface {
	ListVolumes(ctx context.Context) ([]*backend.Volume, error)
	Target(ctx context.Context, id string) (backend.Target, error)
}

// BlockVolumes lists the filesystems of the pool's block-device volumes
// (LVM thin) that are mounted without online discard: a StorageClass with
// the mount option nodiscard. Each is trimmed through its first mount, the
// staging mount (the kubelet stages before it publishes).
func BlockVolumes(pool Volumes, mounts MountTable) func(context.Context) ([]Target, error) {
	if mounts == nil {
		mounts = ownMounts
	}
	return func(ctx context.Context) ([]Target, error) {
		vols, err := pool.ListVolumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("list volumes: %w", err)
		}
		infos, err := mounts()
		if err != nil {
			return nil, fmt.Errorf("list mounts: %w", err)
		}
		var out []Target
		for _, v := range vols {
			if v.AccessType == backend.AccessBlock {
				continue // raw block: the tenant's to discard (BLKDISCARD)
			}
			t, err := pool.Target(ctx, v.ID)
			if errors.Is(err, backend.ErrNotFound) {
				continue // deleted since the list
			}
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.ID, err)
			}
			if !t.IsDevice {
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(t.Path, &st); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // not active, so not mounted
				}
				return nil, fmt.Errorf("stat %s of volume %s: %w", t.Path, v.ID, err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFBLK {
				continue
			}
			major, minor := int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
			for _, mi := range infos {
				// The device's own filesystem (a raw block publish, a bind
				// of the device node, shows devtmpfs's numbers instead).
				if mi.Major != major || mi.Minor != minor {
					continue
				}
				if !discardsOnline(mi) {
					out = append(out, Target{VolumeID: v.ID, Path: mi.MountPoint})
				}
				break
			}
		}
		return out, nil
	}
}
