package pools

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/mounts"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// BtrfsLoop is the driver's embedded default pool: a sparse file that the
// driver itself attaches, formats and mounts (--loop-file).
type BtrfsLoop struct {
	dir, file, mnt string
	size           int64
	run            command.Runner
}

// NewBtrfsLoop plans a pool of sizeBytes in dir; the driver creates it.
func NewBtrfsLoop(dir string, sizeBytes int64) *BtrfsLoop {
	return &BtrfsLoop{dir: dir, file: filepath.Join(dir, "pool.img"), mnt: filepath.Join(dir, "pool"), size: sizeBytes, run: &command.Host{}}
}

func (b *BtrfsLoop) Kind() string { return "btrfs" }

// MountPath is where the driver mounts the pool.
func (b *BtrfsLoop) MountPath() string { return b.mnt }

func (b *BtrfsLoop) Describe() string {
	return fmt.Sprintf("btrfs on a sparse loop file of %s (%s)", HumanBytes(b.size), b.file)
}

func (b *BtrfsLoop) DriverArgs() []string {
	return []string{"--backend=btrfs", "--pool-path=" + b.mnt, "--loop-file=" + b.file, "--loop-size=" + strconv.FormatInt(b.size, 10)}
}

// volumePath is where the btrfs backend keeps a volume's subvolume
// (pkg/btrfs layout); only the bare-command baseline needs it.
func (b *BtrfsLoop) volumePath(id string) string {
	return filepath.Join(b.mnt, "csi-thin", "volumes", id)
}

// Usage commits the filesystem, waits for deleted subvolumes to be
// cleaned (btrfs frees their extents in the background) and commits
// again, then reads the pool's "Used" and the loop file's allocation.
// The first commit matters: it wakes the cleaner, which otherwise waits
// for the next periodic commit (30 s).
func (b *BtrfsLoop) Usage(ctx context.Context) (results.Usage, error) {
	for _, args := range [][]string{
		{"filesystem", "sync", b.mnt},
		{"subvolume", "sync", b.mnt},
		{"filesystem", "sync", b.mnt},
	} {
		if _, err := b.run.Run(ctx, "btrfs", args...); err != nil {
			return results.Usage{}, fmt.Errorf("settle pool: %w", err)
		}
	}
	res, err := b.run.Run(ctx, "btrfs", "filesystem", "usage", "-b", b.mnt)
	if err != nil {
		return results.Usage{}, fmt.Errorf("pool usage: %w", err)
	}
	used, err := parseBtrfsUsed(res.Stdout)
	if err != nil {
		return results.Usage{}, err
	}
	host, err := allocatedBytes(b.file)
	if err != nil {
		return results.Usage{}, err
	}
	return results.Usage{PoolBytes: used, HostBytes: host, HasHost: true}, nil
}

// parseBtrfsUsed reads the "Used:" line of the Overall section of
// `btrfs filesystem usage -b`.
func parseBtrfsUsed(out []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "Used:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse btrfs Used %q: %w", rest, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("btrfs filesystem usage: no Used line")
}

// allocatedBytes is the space a (sparse) file really takes on its host
// filesystem.
func allocatedBytes(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

// BareSnapshot times `btrfs subvolume snapshot` of the volume's subvolume,
// the command behind a CSI clone, then deletes the copy.
func (b *BtrfsLoop) BareSnapshot(ctx context.Context, volumeID string, n int) (time.Duration, error) {
	dir := filepath.Join(b.mnt, "bench-bare")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("bare snapshot dir: %w", err)
	}
	dst := filepath.Join(dir, fmt.Sprintf("snap-%d", n))
	start := time.Now()
	if _, err := b.run.Run(ctx, "btrfs", "subvolume", "snapshot", b.volumePath(volumeID), dst); err != nil {
		return 0, fmt.Errorf("bare snapshot: %w", err)
	}
	took := time.Since(start)
	if _, err := b.run.Run(ctx, "btrfs", "subvolume", "delete", dst); err != nil {
		return 0, fmt.Errorf("delete bare snapshot: %w", err)
	}
	return took, nil
}

func (b *BtrfsLoop) BareCommand() string { return "btrfs subvolume snapshot" }

// DiscardPending reads the filesystem's async-discard queue from sysfs
// (/sys/fs/btrfs/<fsid>/discard/discardable_bytes), found through the
// pool's loop device.
func (b *BtrfsLoop) DiscardPending(ctx context.Context) (int64, error) {
	dir, err := b.sysfsDir(ctx)
	if err != nil {
		return 0, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "discard", "discardable_bytes"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // kernel without async discard
	}
	if err != nil {
		return 0, fmt.Errorf("read discard queue: %w", err)
	}
	return strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
}

// sysfsDir finds /sys/fs/btrfs/<fsid> of the pool by its loop device.
func (b *BtrfsLoop) sysfsDir(ctx context.Context) (string, error) {
	res, err := b.run.Run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", b.file)
	if err != nil {
		return "", fmt.Errorf("find pool loop device: %w", err)
	}
	devs := strings.Fields(string(res.Stdout))
	if len(devs) == 0 {
		return "", fmt.Errorf("pool file %s has no loop device", b.file)
	}
	matches, _ := filepath.Glob(filepath.Join("/sys/fs/btrfs", "*", "devices", filepath.Base(devs[0])))
	if len(matches) == 0 {
		return "", fmt.Errorf("no /sys/fs/btrfs entry for %s", devs[0])
	}
	return filepath.Dir(filepath.Dir(matches[0])), nil
}

// SetDiscard remounts the pool with discard=async (the kernel's default
// for btrfs on devices that support discard) or nodiscard.
func (b *BtrfsLoop) SetDiscard(ctx context.Context, on bool) (bool, error) {
	opt := "nodiscard"
	if on {
		opt = "discard=async"
	}
	if err := unix.Mount("", b.mnt, "", unix.MS_REMOUNT, opt); err != nil {
		return false, fmt.Errorf("remount %s %s: %w", b.mnt, opt, err)
	}
	return true, nil
}

// Trim runs fstrim on the pool, which punches the freed ranges out of the
// loop file.
func (b *BtrfsLoop) Trim(ctx context.Context) (bool, error) {
	if _, err := b.run.Run(ctx, "fstrim", b.mnt); err != nil {
		return false, fmt.Errorf("fstrim pool: %w", err)
	}
	return true, nil
}

// Teardown unmounts everything under the work dir (the pool last, being
// the shallowest), detaches the pool's loop device and removes the dir.
func (b *BtrfsLoop) Teardown(ctx context.Context) error {
	var errs []error
	if err := mounts.UnmountUnder(b.dir); err != nil {
		errs = append(errs, err)
	}
	if err := detachLoops(ctx, b.run, b.file); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(b.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove work dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// detachLoops detaches every loop device backed by file.
func detachLoops(ctx context.Context, run command.Runner, file string) error {
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	res, err := run.Run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return fmt.Errorf("find loop devices of %s: %w", file, err)
	}
	var errs []error
	for _, dev := range strings.Fields(string(res.Stdout)) {
		if _, err := run.Run(ctx, "losetup", "--detach", dev); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", dev, err))
		}
	}
	return errors.Join(errs...)
}
