package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// A tenant can create subvolumes inside its volume without any privilege
// (`btrfs subvolume create` needs only write access to the directory),
// and a subvolume has a qgroup of its own: a limit on the volume's 0/<id>
// would not count what is written in them. So a volume's limit sits on a
// level-1 qgroup, 1/<id>, whose member is the volume's 0/<id>:
//
//   - simple quotas (kernel ≥ 6.7): the kernel puts a subvolume created
//     inside a subvolume whose qgroup has one parent into that parent too
//     ("auto hierarchy"), at any depth, so every nested subvolume (and
//     snapshot a tenant makes of one) is charged to 1/<id> from its first
//     byte;
//   - full qgroups have no auto hierarchy: the driver adopts nested
//     subvolumes into 1/<id> when it sees them (adoptNested), and until
//     then they are not bounded (docs/reliability.md, "Hostile tenant").

// volumeQgroup names the level-1 qgroup that holds the limit of the
// volume whose subvolume has tree id subvolID.
func volumeQgroup(subvolID uint64) string { return fmt.Sprintf("1/%d", subvolID) }

func levelZeroQgroup(subvolID uint64) string { return fmt.Sprintf("0/%d", subvolID) }

// setUpVolumeQgroup makes the volume's level-1 qgroup, puts the subvolume
// in it and limits it to size bytes. Each step is idempotent.
func (p *Pool) setUpVolumeQgroup(ctx context.Context, subvolID uint64, size int64) (string, error) {
	qg := volumeQgroup(subvolID)
	if err := p.cli.createQgroup(ctx, qg, p.mountPath); err != nil {
		return "", fmt.Errorf("create qgroup %s: %w", qg, classify(err))
	}
	if err := p.cli.assignQgroup(ctx, levelZeroQgroup(subvolID), qg, p.mountPath); err != nil {
		return "", fmt.Errorf("assign %s to qgroup %s: %w", levelZeroQgroup(subvolID), qg, classify(err))
	}
	if err := p.cli.limitQgroup(ctx, qg, size, p.mountPath); err != nil {
		return "", fmt.Errorf("limit qgroup %s to %d bytes: %w", qg, size, classify(err))
	}
	return qg, nil
}

// migrateVolumeQgroup moves the limit of a volume made before volumes had
// a level-1 qgroup (its limit sits on 0/<id>) onto 1/<id>, adopting the
// subvolumes already nested in it, and records that. A crash anywhere
// leaves a record without a qgroup: the next Open redoes every step.
func (p *Pool) migrateVolumeQgroup(ctx context.Context, id string, rec *record) error {
	if rec.SubvolumeID == 0 {
		sid, err := SubvolumeIDOf(p.volumePath(id))
		if err != nil {
			return fmt.Errorf("subvolume id of %s: %w", id, err)
		}
		rec.SubvolumeID = sid
	}
	qg, err := p.setUpVolumeQgroup(ctx, rec.SubvolumeID, rec.Volume.SizeBytes)
	if err != nil {
		return err
	}
	if err := p.adoptNested(ctx, id, rec.SubvolumeID, qg); err != nil {
		return err
	}
	// The old limit would cap an expanded volume at its old size.
	if err := p.cli.limitQgroup(ctx, levelZeroQgroup(rec.SubvolumeID), 0, p.mountPath); err != nil {
		return fmt.Errorf("remove the limit of %s: %w", levelZeroQgroup(rec.SubvolumeID), classify(err))
	}
	rec.Qgroup = qg
	if err := p.writeRecord(id, rec); err != nil {
		return err
	}
	klog.InfoS("volume limit moved to its level-1 qgroup", "volumeID", id, "qgroup", qg, "sizeBytes", rec.Volume.SizeBytes)
	return nil
}

// adoptNested puts every subvolume nested in the volume into its qgroup
// qg. Simple quotas do this by themselves for subvolumes made once the
// volume is in qg; this covers full qgroups and subvolumes made before.
func (p *Pool) adoptNested(ctx context.Context, id string, subvolID uint64, qg string) error {
	nested, err := p.nestedSubvolumes(ctx, p.volumePath(id), subvolID)
	if err != nil {
		return err
	}
	for _, n := range nested {
		if err := p.cli.assignQgroup(ctx, levelZeroQgroup(n), qg, p.mountPath); err != nil {
			return fmt.Errorf("assign nested subvolume %d of %s to %s: %w", n, id, qg, classify(err))
		}
		klog.V(2).InfoS("nested subvolume charged to its volume", "volumeID", id, "subvolumeID", n, "qgroup", qg)
	}
	return nil
}

// nestedSubvolumes returns the tree ids of every subvolume below the
// subvolume subvolID at path, deepest first (the order they can be
// deleted in). The tree comes from the kernel's parent links, never from
// walking directories a tenant controls. A volume without nested
// subvolumes costs one ioctl and runs no command.
func (p *Pool) nestedSubvolumes(ctx context.Context, path string, subvolID uint64) ([]uint64, error) {
	has, err := hasChildSubvolumes(path)
	if err != nil || !has {
		return nil, err
	}
	list, err := p.cli.listSubvolumes(ctx, p.mountPath)
	if err != nil {
		return nil, fmt.Errorf("list subvolumes: %w", classify(err))
	}
	return below(list, subvolID), nil
}

// below returns the subvolumes under root in post-order: children
// before their parent.
func below(list []subvolumeEntry, root uint64) []uint64 {
	children := map[uint64][]uint64{}
	for _, e := range list {
		if e.ID != e.Parent {
			children[e.Parent] = append(children[e.Parent], e.ID)
		}
	}
	var out []uint64
	seen := map[uint64]bool{root: true}
	var walk func(uint64)
	walk = func(id uint64) {
		for _, c := range children[id] {
			if seen[c] {
				continue
			}
			seen[c] = true
			walk(c)
			out = append(out, c)
		}
	}
	walk(root)
	return out
}

// deleteTree deletes the subvolume at path and every subvolume nested in
// it, deepest first, by tree id. A tenant still writing could nest a new
// one between the listing and the last delete; the loop lists again.
func (p *Pool) deleteTree(ctx context.Context, id, path string) error {
	subvolID, err := SubvolumeIDOf(path)
	if err != nil {
		return err
	}
	for range 3 {
		nested, err := p.nestedSubvolumes(ctx, path, subvolID)
		if err != nil {
			return err
		}
		if len(nested) == 0 {
			break
		}
		for _, n := range nested {
			if err := p.cli.deleteSubvolumeByID(ctx, n, p.mountPath); err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
				return fmt.Errorf("delete subvolume %d nested in %s: %w", n, id, classify(err))
			}
			klog.V(2).InfoS("deleted nested subvolume", "volumeID", id, "subvolumeID", n)
		}
	}
	if err := p.cli.deleteSubvolume(ctx, path); err != nil {
		return classify(err)
	}
	return nil
}

// BTRFS_IOC_GET_SUBVOL_ROOTREF is _IOWR(0x94, 61, struct
// btrfs_ioctl_get_subvol_rootref_args{u64 min_treeid; {u64 treeid; u64
// dirid} rootref[255]; u8 num_items; u8 align[7]}).
const btrfsIoctlGetSubvolRootref = 0xD000943D

type subvolRootrefArgs struct {
	MinTreeID uint64
	Rootref   [255][2]uint64
	NumItems  uint8
	_         [7]uint8
}

// hasChildSubvolumes reports whether the subvolume whose root is at path
// has subvolumes directly below it (any depth follows from that).
func hasChildSubvolumes(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("open %s for child subvolumes: %w", path, err)
	}
	defer f.Close()
	var args subvolRootrefArgs
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), btrfsIoctlGetSubvolRootref, uintptr(unsafe.Pointer(&args)))
	switch errno {
	case 0:
		return args.NumItems > 0, nil
	case unix.EOVERFLOW: // more than one buffer of children
		return true, nil
	}
	return false, fmt.Errorf("BTRFS_IOC_GET_SUBVOL_ROOTREF on %s: %w", path, errno)
}

// A volume's level-1 qgroup can go only once the cleaner has dropped its
// member subvolumes, which is after DeleteVolume returns. So a delete
// leaves a file naming it in reap/ (before its delete marker goes), and
// reapQgroups destroys those that have emptied, after every delete and at
// Open. The file says the qgroup is ours: a shared filesystem may hold
// level-1 qgroups of its own, which are never touched.

func (p *Pool) reapDir() string { return filepath.Join(p.base, "reap") }

// scheduleReap records qgroup qg ("1/<id>") for destruction.
func (p *Pool) scheduleReap(qg string) error {
	name := strings.ReplaceAll(qg, "/", "_")
	f, err := os.OpenFile(filepath.Join(p.reapDir(), name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("schedule qgroup %s for removal: %w", qg, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("schedule qgroup %s for removal: %w", qg, err)
	}
	return syncDir(p.reapDir())
}

// reapQgroups destroys the scheduled qgroups that are empty by now and
// forgets those that are gone. It uses the ioctl, not a command: an empty
// qgroup's destruction is idempotent and has nothing for a crash to cut.
func (p *Pool) reapQgroups() {
	entries, err := os.ReadDir(p.reapDir())
	if err != nil {
		klog.ErrorS(err, "list qgroups scheduled for removal")
		return
	}
	for _, e := range entries {
		level, id, ok := parseReapName(e.Name())
		if !ok {
			continue
		}
		err := destroyQgroupIoctl(p.mountPath, level, id)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
		case errors.Is(err, unix.EBUSY):
			continue // members not dropped by the cleaner yet
		default:
			klog.V(2).InfoS("qgroup not destroyed yet", "qgroup", e.Name(), "err", err)
			continue
		}
		if err := os.Remove(filepath.Join(p.reapDir(), e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "forget destroyed qgroup", "qgroup", e.Name())
		}
	}
}

// PendingQgroups lists the qgroups scheduled for removal whose members
// the cleaner has not dropped yet (tests and operators). It commits the
// filesystem first: what the cleaner freed leaves a qgroup's usage only
// with the next transaction commit (simple quotas), and until then the
// kernel refuses to destroy the qgroup (EBUSY), so without the commit a
// qgroup the cleaner is done with would be listed as pending.
func (p *Pool) PendingQgroups() []string {
	if f, err := os.Open(p.mountPath); err == nil {
		if err := unix.Syncfs(int(f.Fd())); err != nil {
			klog.V(2).InfoS("commit before reaping qgroups", "path", p.mountPath, "err", err)
		}
		f.Close()
	}
	p.reapQgroups()
	entries, _ := os.ReadDir(p.reapDir())
	var out []string
	for _, e := range entries {
		out = append(out, strings.ReplaceAll(e.Name(), "_", "/"))
	}
	return out
}

func parseReapName(name string) (uint64, uint64, bool) {
	l, i, ok := strings.Cut(name, "_")
	if !ok {
		return 0, 0, false
	}
	level, err1 := strconv.ParseUint(l, 10, 16)
	id, err2 := strconv.ParseUint(i, 10, 48)
	if err1 != nil || err2 != nil || level == 0 {
		return 0, 0, false
	}
	return level, id, true
}

// destroyQgroupIoctl destroys qgroup level/id (BTRFS_IOC_QGROUP_CREATE
// with create 0).
func destroyQgroupIoctl(mountPath string, level, id uint64) error {
	args := qgroupCreateArgs{Create: 0, QgroupID: level<<48 | id}
	_, err := fsIoctl(mountPath, btrfsIoctlQgroupCreate, unsafe.Pointer(&args))
	return err
}
