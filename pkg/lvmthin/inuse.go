package lvmthin

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// checkNotMounted refuses to delete a volume whose device is in use on
// this node, as the mount table shows it:
//   - a filesystem on it is mounted (a staged ext4/xfs volume and every
//     bind of it): the mount carries the device's major:minor;
//   - its device node is bind-mounted onto a file (a published raw block
//     volume): the mount is of devtmpfs (or a container's tmpfs /dev)
//     with the node's name as its root, and the mount point is the
//     device itself.
//
// lvremove refuses an LV that is open, but a bind-mounted device node
// does not open the device: without this check a published raw block
// volume would be removed under its pod. An inactive LV has no device
// and so no mounts.
func (b *Backend) checkNotMounted(id string) error {
	dev, ok := deviceNumber(devicePath(b.cfg.VG, id), mapperPath(b.cfg.VG, id))
	if !ok {
		return nil
	}
	mounts, err := backend.ReadMounts()
	if err != nil {
		return err
	}
	users := mountsOfDevice(mounts, dev, deviceAt)
	if len(users) == 0 {
		return nil
	}
	return &backend.MountedError{Volume: id, Node: b.cfg.NodeName, MountPoints: users}
}

// openError turns lvremove's refusal of an open LV into ErrInUse: the
// device is held by a process, a loop device (kubelet holds one on every
// published raw block volume) or a mount this process cannot see.
func (b *Backend) openError(id string, err error) error {
	if !errors.Is(err, backend.ErrBusy) {
		return err
	}
	return fmt.Errorf("volume %s is open on node %s (mounted, or held by a process or a loop device; "+
		"unpublish and unstage it first): %w (%v)", id, b.cfg.NodeName, backend.ErrInUse, err)
}

// deviceNumber is the device number of the first path that is a block
// device node.
func deviceNumber(paths ...string) (uint64, bool) {
	for _, p := range paths {
		if dev, ok := deviceAt(p); ok {
			return dev, true
		}
	}
	return 0, false
}

// deviceAt is the device number of the block device node at path.
func deviceAt(path string) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, false
	}
	return st.Rdev, true
}

// mountsOfDevice returns the mount points that use device dev: mounts of
// a filesystem on it, and binds of its device node (found by asking
// deviceAt what a bind of a /dev file is).
func mountsOfDevice(mounts []backend.Mount, dev uint64, deviceAt func(string) (uint64, bool)) []string {
	major, minor := int(unix.Major(dev)), int(unix.Minor(dev))
	var out []string
	for _, m := range mounts {
		switch {
		case m.Major == major && m.Minor == minor:
			out = append(out, m.MountPoint)
		case (m.FsType == "devtmpfs" || m.FsType == "tmpfs") && m.Root != "/":
			if d, ok := deviceAt(m.MountPoint); ok && d == dev {
				out = append(out, m.MountPoint)
			}
		}
	}
	return out
}
