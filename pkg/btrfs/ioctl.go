package btrfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BTRFS_IOC_INO_LOOKUP is _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args
// {u64 treeid; u64 objectid; char name[4080]}).
const (
	btrfsIoctlInoLookup    = 0xD0009412
	btrfsFirstFreeObjectID = 256 // the inode number of every subvolume's root
)

type inoLookupArgs struct {
	TreeID   uint64
	ObjectID uint64
	Name     [4080]byte
}

// SubvolumeIDOf returns the tree ID of the subvolume whose root is at path,
// which names its level-0 qgroup (0/<id>). Exported for the integration
// tests (test/btrfs), which check it against btrfs-progs. It asks the kernel directly
// instead of running `btrfs inspect-internal rootid`: a read with no side
// effect, so it needs no crash point, and it saves a process start on every
// create (about a tenth of a clone's time). With objectid 256 the kernel
// answers before its CAP_SYS_ADMIN check.
func SubvolumeIDOf(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open %s for subvolume id: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	// Any directory inside a subvolume would answer with that subvolume's
	// ID; only a subvolume's own root has inode 256.
	if st.Ino != btrfsFirstFreeObjectID {
		return 0, fmt.Errorf("%s is not the root of a btrfs subvolume (inode %d)", path, st.Ino)
	}
	args := inoLookupArgs{ObjectID: btrfsFirstFreeObjectID}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), btrfsIoctlInoLookup, uintptr(unsafe.Pointer(&args))); errno != 0 {
		return 0, fmt.Errorf("BTRFS_IOC_INO_LOOKUP on %s (not btrfs?): %w", path, errno)
	}
	// Tree IDs below 5 (BTRFS_FS_TREE_OBJECTID) are not subvolumes and
	// would name the wrong qgroup.
	if args.TreeID < 5 {
		return 0, fmt.Errorf("%s: tree id %d is not a subvolume", path, args.TreeID)
	}
	return args.TreeID, nil
}

// The operations of a create (subvolume, its quota group, the group's
// limit) are ioctls rather than runs of the btrfs tool: each process start
// costs this driver more than the kernel's work (several ms on a loaded
// node, four of them per volume). cli.go still names each one as the
// command that would do the same, so that every storage step passes the
// command.Runner seam (command.Step) for fault injection and crash tests.
const (
	// BTRFS_IOC_SUBVOL_CREATE_V2 is _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2).
	btrfsIoctlSubvolCreateV2 = 0x50009418
	// BTRFS_IOC_SUBVOL_GETFLAGS is _IOR(0x94, 25, __u64).
	btrfsIoctlSubvolGetFlags = 0x80089419
	// BTRFS_IOC_SUBVOL_SETFLAGS is _IOW(0x94, 26, __u64).
	btrfsIoctlSubvolSetFlags = 0x4008941A
	// BTRFS_IOC_QGROUP_ASSIGN is _IOW(0x94, 41, struct btrfs_ioctl_qgroup_assign_args), 24 bytes.
	btrfsIoctlQgroupAssign = 0x40189429
	// BTRFS_IOC_QGROUP_CREATE is _IOW(0x94, 42, struct btrfs_ioctl_qgroup_create_args), 16 bytes.
	btrfsIoctlQgroupCreate = 0x4010942A
	// BTRFS_IOC_QGROUP_LIMIT is _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args), 48 bytes.
	btrfsIoctlQgroupLimit = 0x8030942B
	// BTRFS_IOC_QUOTA_RESCAN is _IOW(0x94, 44, struct btrfs_ioctl_quota_rescan_args), 64 bytes.
	btrfsIoctlQuotaRescan = 0x4040942C

	btrfsSubvolRdonly      = 1 << 1
	btrfsQgroupLimitMaxRfr = 1 << 0
	// btrfsQgroupLimitClear as a limit removes it (the kernel's CLEAR_VALUE).
	btrfsQgroupLimitClear = ^uint64(0)
)

type qgroupAssignArgs struct{ Assign, Src, Dst uint64 }

type qgroupCreateArgs struct{ Create, QgroupID uint64 }

type qgroupLimitArgs struct {
	QgroupID                                  uint64
	Flags, MaxRfer, MaxExcl, RsvRfer, RsvExcl uint64
}

type quotaRescanArgs struct {
	Flags, Progress uint64
	Reserved        [6]uint64
}

func init() {
	if unsafe.Sizeof(qgroupAssignArgs{}) != 24 || unsafe.Sizeof(qgroupCreateArgs{}) != 16 ||
		unsafe.Sizeof(qgroupLimitArgs{}) != 48 || unsafe.Sizeof(quotaRescanArgs{}) != 64 {
		panic("btrfs qgroup ioctl argument sizes do not match the kernel's")
	}
}

// ioctl issues req on the directory at path (a final symlink is not
// followed: the paths are the driver's own, under the pool) with argument
// arg and returns the kernel's non-negative answer.
func ioctl(path string, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	f, err := openDir(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return ioctlFile(f, req, arg)
}

// fsIoctl issues req, which acts on the whole filesystem (its quota
// groups), on the pool's mount path as configured (a symlink there is the
// operator's and is followed, as the btrfs tool did).
func fsIoctl(mountPath string, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	f, err := os.OpenFile(mountPath, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return ioctlFile(f, req, arg)
}

func ioctlFile(f *os.File, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// parseQgroupID reads "level/id" into the kernel's form, level<<48 | id.
func parseQgroupID(s string) (uint64, error) {
	l, n, ok := strings.Cut(s, "/")
	level, err1 := strconv.ParseUint(l, 10, 16)
	id, err2 := strconv.ParseUint(n, 10, 48)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("qgroup id %q: want level/id", s)
	}
	return level<<48 | id, nil
}

// ioctlCreateSubvolume makes an empty subvolume at path.
func ioctlCreateSubvolume(path string) error {
	var args volArgsV2
	name := filepath.Base(path)
	if len(name) >= len(args.Name) {
		return fmt.Errorf("subvolume name %q too long", name)
	}
	copy(args.Name[:], name)
	_, err := ioctl(filepath.Dir(path), btrfsIoctlSubvolCreateV2, unsafe.Pointer(&args))
	return err
}

// ioctlMakeReadOnly sets the read-only flag of the subvolume at path.
func ioctlMakeReadOnly(path string) error {
	var flags uint64
	if _, err := ioctl(path, btrfsIoctlSubvolGetFlags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("subvolume flags: %w", err)
	}
	if flags&btrfsSubvolRdonly != 0 {
		return nil
	}
	flags |= btrfsSubvolRdonly
	_, err := ioctl(path, btrfsIoctlSubvolSetFlags, unsafe.Pointer(&flags))
	return err
}

// ioctlCreateQgroup makes qgroup id of the filesystem at mountPath.
func ioctlCreateQgroup(mountPath, id string) error {
	qid, err := parseQgroupID(id)
	if err != nil {
		return err
	}
	args := qgroupCreateArgs{Create: 1, QgroupID: qid}
	_, err = fsIoctl(mountPath, btrfsIoctlQgroupCreate, unsafe.Pointer(&args))
	return err
}

// ioctlAssignQgroup makes child a member of parent. The kernel answers 1
// when it could not carry the child's usage over and marked the numbers
// inconsistent; as `btrfs qgroup assign` does, a rescan then rebuilds them
// (one already running will).
func ioctlAssignQgroup(mountPath, child, parent string) error {
	src, err := parseQgroupID(child)
	if err != nil {
		return err
	}
	dst, err := parseQgroupID(parent)
	if err != nil {
		return err
	}
	args := qgroupAssignArgs{Assign: 1, Src: src, Dst: dst}
	r, err := fsIoctl(mountPath, btrfsIoctlQgroupAssign, unsafe.Pointer(&args))
	if err != nil || r == 0 {
		return err
	}
	var rescan quotaRescanArgs
	if _, err := fsIoctl(mountPath, btrfsIoctlQuotaRescan, unsafe.Pointer(&rescan)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("quota rescan after assigning %s to %s: %w", child, parent, err)
	}
	return nil
}

// ioctlLimitQgroup sets the referenced-bytes limit of qgroup id; bytes 0
// removes it.
func ioctlLimitQgroup(mountPath, id string, bytes int64) error {
	qid, err := parseQgroupID(id)
	if err != nil {
		return err
	}
	args := qgroupLimitArgs{QgroupID: qid, Flags: btrfsQgroupLimitMaxRfr, MaxRfer: btrfsQgroupLimitClear}
	if bytes > 0 {
		args.MaxRfer = uint64(bytes)
	}
	_, err = fsIoctl(mountPath, btrfsIoctlQgroupLimit, unsafe.Pointer(&args))
	return err
}
