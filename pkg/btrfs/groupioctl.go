package btrfs

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The group snapshot's subvolumes are made by ioctl rather than by the
// btrfs tool: landing them in one transaction (groupsnapshot.go) depends on
// their timing to a fraction of a millisecond, which a process start per
// snapshot would swamp.
const (
	// BTRFS_IOC_SNAP_CREATE_V2 is _IOW(0x94, 23, struct
	// btrfs_ioctl_vol_args_v2), 4096 bytes.
	btrfsIoctlSnapCreateV2 = 0x50009417
	// BTRFS_IOC_GET_SUBVOL_INFO is _IOR(0x94, 60, struct
	// btrfs_ioctl_get_subvol_info_args), 504 bytes.
	btrfsIoctlGetSubvolInfo = 0x81F8943C
)

type volArgsV2 struct {
	Fd      int64
	TransID uint64
	Flags   uint64
	Unused  [4]uint64
	Name    [4040]byte
}

type ioctlTimespec struct {
	Sec  uint64
	Nsec uint32
	_    uint32
}

type subvolInfoArgs struct {
	TreeID                                 uint64
	Name                                   [256]byte
	ParentID, DirID, Generation, Flags     uint64
	UUID, ParentUUID, ReceivedUUID         [16]byte
	CTransID, OTransID, STransID, RTransID uint64
	CTime, OTime, STime, RTime             ioctlTimespec
	Reserved                               [8]uint64
}

func init() {
	// The kernel checks the sizes encoded in the ioctl numbers.
	if unsafe.Sizeof(volArgsV2{}) != 4096 || unsafe.Sizeof(subvolInfoArgs{}) != 504 {
		panic("btrfs ioctl argument sizes do not match the kernel's")
	}
}

// openDir opens a directory without following a final symlink.
func openDir(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
}

// ioctlSnapshot makes a writable snapshot of the subvolume at src at dst.
func ioctlSnapshot(src, dst string) error {
	s, err := openDir(src)
	if err != nil {
		return err
	}
	defer s.Close()
	dir, err := openDir(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer dir.Close()
	var args volArgsV2
	args.Fd = int64(s.Fd())
	copy(args.Name[:], filepath.Base(dst))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), btrfsIoctlSnapCreateV2, uintptr(unsafe.Pointer(&args))); errno != 0 {
		return fmt.Errorf("snapshot %s to %s: %w", src, dst, errno)
	}
	return nil
}

// creationTransID returns the transaction (generation) in which the
// subvolume at path was created: its root item's otransid.
func creationTransID(path string) (uint64, error) {
	f, err := openDir(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var args subvolInfoArgs
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), btrfsIoctlGetSubvolInfo, uintptr(unsafe.Pointer(&args))); errno != 0 {
		return 0, fmt.Errorf("subvolume info of %s: %w", path, errno)
	}
	return args.OTransID, nil
}
