package btrfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// Defaults for a pool whose config leaves them unset.
const (
	DefaultOverprovision = 10.0
	DefaultFullPercent   = 90.0
	// layoutDir holds everything the driver owns, so a pool can live on a
	// btrfs filesystem that also holds other data.
	layoutDir = "csi-thin"
)

// Config describes one btrfs pool.
type Config struct {
	// PoolPath is where the btrfs filesystem is mounted.
	PoolPath string
	// LoopFile, when set, is a sparse file the driver creates (if
	// missing), attaches to a loop device, formats (only if blank) and
	// mounts at PoolPath: the embedded default pool.
	LoopFile      string
	LoopSizeBytes int64
	NodeName      string
	// Overprovision bounds the sum of volume sizes to this multiple of the
	// pool size: thin volumes may promise more than exists, up to here.
	Overprovision float64
	// FullPercent refuses new volumes and snapshots once this much of the
	// pool is physically used, so it never fills up silently.
	FullPercent float64
	QuotaMode   QuotaMode
	Runner      command.Runner
}

// Pool is a btrfs filesystem holding volumes as subvolumes. Its state is
// the subvolume layout plus one JSON record per object:
//
//	<pool>/csi-thin/volumes/<id>     subvolume of a volume
//	<pool>/csi-thin/snapshots/<id>   read-only subvolume of a snapshot
//	<pool>/csi-thin/staging/<id>     half-made objects (purged at start)
//	<pool>/csi-thin/receiving/<id>/  a stream being received (stream.go; purged at start)
//	<pool>/csi-thin/meta/<id>.json   the record; written last on create
//	<pool>/csi-thin/meta/<id>.json.deleting  a delete in progress
//	<pool>/csi-thin/reap/1_<n>       a deleted volume's qgroup to destroy
type Pool struct {
	cfg       Config
	cli       cli
	mountPath string
	base      string
	fsUUID    string
	quota     QuotaMode
	loopDev   string

	// mu serialises mutations: capacity checks and creation must not
	// interleave, and btrfs subvolume operations are milliseconds anyway.
	mu sync.Mutex
	// provisioned is the sum of volume sizes: counted from the records at
	// Open, then kept by every create, delete and expand (under mu).
	provisioned atomic.Int64

	// attention maps the objects that need an operator to why
	// (attention.go); attMu guards it, so readers need not wait for mu.
	attMu     sync.Mutex
	attention map[string]string
}

// Open prepares the pool (bootstrapping the loop file if configured),
// enables quotas and finishes any operation a crash interrupted. It never
// formats a device or file that already holds a filesystem.
func Open(ctx context.Context, cfg Config) (*Pool, error) {
	if cfg.PoolPath == "" {
		return nil, errors.New("btrfs pool: pool path is required")
	}
	if cfg.Runner == nil {
		cfg.Runner = &command.Host{}
	}
	if cfg.Overprovision <= 0 {
		cfg.Overprovision = DefaultOverprovision
	}
	if cfg.FullPercent <= 0 || cfg.FullPercent > 100 {
		cfg.FullPercent = DefaultFullPercent
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	path, err := filepath.Abs(cfg.PoolPath)
	if err != nil {
		return nil, fmt.Errorf("btrfs pool path %s: %w", cfg.PoolPath, err)
	}
	p := &Pool{cfg: cfg, cli: cli{run: cfg.Runner}, mountPath: path, base: filepath.Join(path, layoutDir), attention: map[string]string{}}
	if cfg.LoopFile != "" {
		if err := p.bootstrapLoop(ctx); err != nil {
			return nil, err
		}
	}
	if err := checkIsBtrfs(path); err != nil {
		return nil, err
	}
	if p.fsUUID, err = fsUUIDOf(path); err != nil {
		return nil, err
	}
	if p.quota, err = p.ensureQuota(ctx, cfg.QuotaMode); err != nil {
		return nil, fmt.Errorf("btrfs pool %s: %w", path, err)
	}
	for _, d := range []string{"volumes", "snapshots", "staging", "receiving", "meta", "reap"} {
		if err := os.MkdirAll(filepath.Join(p.base, d), 0o700); err != nil {
			return nil, fmt.Errorf("btrfs pool layout: %w", err)
		}
	}
	// Recovery fails only when the pool itself is unusable; an object it
	// cannot put right is reported and skipped (attention.go).
	if err := p.recover(ctx); err != nil {
		return nil, fmt.Errorf("btrfs pool %s: recovery: %w", path, err)
	}
	p.reapQgroups()
	provisioned, err := p.sumProvisioned()
	if err != nil {
		return nil, fmt.Errorf("btrfs pool %s: %w", path, err)
	}
	p.provisioned.Store(provisioned)
	klog.InfoS("btrfs pool ready", "path", path, "quota", p.quota, "node", cfg.NodeName, "loopDevice", p.loopDev, "needingAttention", len(p.attention))
	return p, nil
}

// QuotaMode reports the accounting mode in force.
func (p *Pool) QuotaMode() QuotaMode { return p.quota }

// MountPath is where the pool's filesystem is mounted.
func (p *Pool) MountPath() string { return p.mountPath }

// LoopDevice is the loop device of a loop-file pool, else "".
func (p *Pool) LoopDevice() string { return p.loopDev }

func checkIsBtrfs(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return fmt.Errorf("%s is not a mounted btrfs filesystem (fs type %#x)", path, st.Type)
	}
	return nil
}

// bootstrapLoop makes the embedded default pool: each step checks before
// it acts, so a restart (or a second start) reuses what is there.
func (p *Pool) bootstrapLoop(ctx context.Context) error {
	file := p.cfg.LoopFile
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("loop file dir: %w", err)
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if p.cfg.LoopSizeBytes <= 0 {
			return fmt.Errorf("loop file %s does not exist and no size was given", file)
		}
		f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("create loop file: %w", err)
		}
		err = f.Truncate(p.cfg.LoopSizeBytes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("size loop file: %w", err)
		}
		klog.InfoS("created sparse pool file", "file", file, "sizeBytes", p.cfg.LoopSizeBytes)
	}
	dev, err := p.attachLoop(ctx, file)
	if err != nil {
		return err
	}
	p.loopDev = dev
	fsType, err := p.blkidType(ctx, dev)
	if err != nil {
		return err
	}
	switch fsType {
	case "btrfs":
	case "":
		if _, err := p.cfg.Runner.Run(ctx, "mkfs.btrfs", "-q", "-L", "csi-thin", dev); err != nil {
			return fmt.Errorf("format pool %s: %w", dev, err)
		}
		klog.InfoS("formatted pool", "device", dev)
	default:
		return fmt.Errorf("loop file %s holds a %s filesystem, not btrfs: refusing to touch it", file, fsType)
	}
	if err := os.MkdirAll(p.mountPath, 0o700); err != nil {
		return fmt.Errorf("pool mount point: %w", err)
	}
	mounted, err := isMountedFrom(p.mountPath, dev)
	if err != nil {
		return err
	}
	if !mounted {
		if err := mount.New("").Mount(dev, p.mountPath, "btrfs", nil); err != nil {
			return fmt.Errorf("mount pool %s at %s: %w", dev, p.mountPath, err)
		}
		klog.InfoS("mounted pool", "device", dev, "path", p.mountPath)
	}
	return nil
}

type losetupReport struct {
	LoopDevices []struct {
		Name     string `json:"name"`
		BackFile string `json:"back-file"`
	} `json:"loopdevices"`
}

// attachLoop returns the loop device backing file, attaching one if none is.
func (p *Pool) attachLoop(ctx context.Context, file string) (string, error) {
	res, err := p.cfg.Runner.Run(ctx, "losetup", "--json", "--list", "-j", file)
	if err != nil {
		return "", fmt.Errorf("find loop device of %s: %w", file, err)
	}
	if len(strings.TrimSpace(string(res.Stdout))) > 0 {
		var rep losetupReport
		if err := json.Unmarshal(res.Stdout, &rep); err != nil {
			return "", fmt.Errorf("parse losetup report: %w", err)
		}
		if len(rep.LoopDevices) > 0 {
			return rep.LoopDevices[0].Name, nil
		}
	}
	res, err = p.cfg.Runner.Run(ctx, "losetup", "--find", "--show", file)
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", file, err)
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

// blkidType returns the filesystem type on dev, "" when blank.
func (p *Pool) blkidType(ctx context.Context, dev string) (string, error) {
	res, err := p.cfg.Runner.Run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev)
	if err != nil {
		if command.ExitCodeOf(err) == 2 { // blkid: nothing found
			return "", nil
		}
		return "", fmt.Errorf("probe %s: %w", dev, err)
	}
	return strings.TrimSpace(string(res.Stdout)), nil
}

func isMountedFrom(path, dev string) (bool, error) {
	mps, err := mount.New("").List()
	if err != nil {
		return false, fmt.Errorf("list mounts: %w", err)
	}
	for _, mp := range mps {
		if mp.Path == path {
			if mp.Device != dev {
				return false, fmt.Errorf("%s is already a mount point of %s, not of the pool device %s", path, mp.Device, dev)
			}
			return true, nil
		}
	}
	return false, nil
}

// Teardown unmounts a loop-file pool and detaches its device; with
// removeFile it also deletes the file. For the demo and tests: a driver
// never tears its pool down by itself.
func (p *Pool) Teardown(ctx context.Context, removeFile bool) error {
	if p.cfg.LoopFile == "" {
		return errors.New("teardown: not a loop-file pool")
	}
	if err := mount.CleanupMountPoint(p.mountPath, mount.New(""), false); err != nil {
		return fmt.Errorf("unmount pool: %w", err)
	}
	if p.loopDev != "" {
		if _, err := p.cfg.Runner.Run(ctx, "losetup", "-d", p.loopDev); err != nil {
			return fmt.Errorf("detach %s: %w", p.loopDev, err)
		}
	}
	if removeFile {
		if err := os.Remove(p.cfg.LoopFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove pool file: %w", err)
		}
	}
	return nil
}

// AllocatedBytes is the pool's logical data plus metadata in use, after
// committing the current transaction so that recent writes are counted:
// the figure to compare before and after a snapshot or clone.
func (p *Pool) AllocatedBytes(ctx context.Context) (int64, error) {
	if _, err := p.cli.btrfs(ctx, "filesystem", "sync", p.mountPath); err != nil {
		return 0, err
	}
	u, err := p.cli.usage(ctx, p.mountPath)
	if err != nil {
		return 0, err
	}
	return u.Data + u.Metadata + u.System, nil
}

// VolumePath is where a volume's subvolume lives (tests and benchmarks
// write through it directly).
func (p *Pool) VolumePath(id string) string { return p.volumePath(id) }
