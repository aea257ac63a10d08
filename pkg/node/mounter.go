package node

import (
	"errors"
	"fmt"
	"os"
	"strings"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Mounter is everything the Node service does to the host's mount table
// and filesystems. NewMounter is the host's (mount-utils, mount(8), mkfs,
// resize2fs/xfs_growfs); the node RPCs' table tests use a fake, so that
// stage, publish and unpublish are tested without root.
type Mounter interface {
	// Mount mounts source at target; a bind mount with per-mount flags
	// takes two mount(8) calls (see finishBind).
	Mount(source, target, fsType string, opts []string) error
	// FormatAndMount formats device with fsType unless it already holds
	// a filesystem, then mounts it at target.
	FormatAndMount(device, target, fsType string, opts, formatOpts []string) error
	// IsMountPoint answers from the mount table; a missing path is not one.
	IsMountPoint(path string) (bool, error)
	// MountRefs lists the other mount points of the filesystem mounted at
	// path.
	MountRefs(path string) ([]string, error)
	// MountPoints is the mount table.
	MountPoints() ([]mount.MountPoint, error)
	// MountInfo is the mount table with each mount's root
	// (/proc/self/mountinfo): a device node bind-mounted onto a file
	// shows only there.
	MountInfo() ([]mount.MountInfo, error)
	// Remount runs `mount -o opts target`.
	Remount(target string, opts []string) error
	// Cleanup unmounts path if it is mounted and removes it; an absent
	// path is success.
	Cleanup(path string) error
	// Resize grows the filesystem on device, mounted at mountPath, to the
	// device's size.
	Resize(device, mountPath string) error
}

// NewMounter returns the Mounter of the host: mounts through m, commands
// (mkfs, mount -o remount, resize tools) through ex. NewMounter(nil, nil)
// is this host's mount table and commands.
func NewMounter(m mount.Interface, ex utilexec.Interface) Mounter {
	if m == nil {
		m = mount.New("")
	}
	if ex == nil {
		ex = utilexec.New()
	}
	return &hostMounter{sfm: &mount.SafeFormatAndMount{Interface: m, Exec: ex}, resizer: mount.NewResizeFs(ex)}
}

type hostMounter struct {
	sfm     *mount.SafeFormatAndMount
	resizer *mount.ResizeFs
}

func (h *hostMounter) Mount(source, target, fsType string, opts []string) error {
	return h.sfm.Mount(source, target, fsType, opts)
}

func (h *hostMounter) FormatAndMount(device, target, fsType string, opts, formatOpts []string) error {
	return h.sfm.FormatAndMountSensitiveWithFormatOptions(device, target, fsType, opts, nil, formatOpts)
}

// IsMountPoint answers from the mount table, not from device numbers: a
// btrfs subvolume has its own st_dev, so the cheap check would lie.
func (h *hostMounter) IsMountPoint(path string) (bool, error) {
	notMnt, err := mount.IsNotMountPoint(h.sfm, path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !notMnt, nil
}

func (h *hostMounter) MountRefs(path string) ([]string, error) { return h.sfm.GetMountRefs(path) }

func (h *hostMounter) MountPoints() ([]mount.MountPoint, error) { return h.sfm.List() }

func (h *hostMounter) MountInfo() ([]mount.MountInfo, error) {
	return mount.ParseMountInfo("/proc/self/mountinfo")
}

func (h *hostMounter) Remount(target string, opts []string) error {
	if out, err := h.sfm.Exec.Command("mount", "-o", strings.Join(opts, ","), target).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *hostMounter) Cleanup(path string) error { return mount.CleanupMountPoint(path, h.sfm, true) }

func (h *hostMounter) Resize(device, mountPath string) error {
	_, err := h.resizer.Resize(device, mountPath)
	return err
}
