package lvmthin

import (
	"fmt"
	"regexp"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// Config says which pool to serve and how to bootstrap it.
//
// Pool source, in order: an existing VG/ThinPool is always reused; when it
// is missing it is created from Devices (whole block devices, which must be
// blank or already PVs of VG) or, with LoopFile set, from a sparse file
// attached to a loop device (the embedded default for demos and tests).
// Start-up never wipes a device that carries a signature.
type Config struct {
	VG       string
	ThinPool string // default "thinpool"

	Devices       []string
	LoopFile      string
	LoopSizeBytes int64 // size of a LoopFile created here

	NodeName string

	// Overprovision is the ratio of provisioned virtual size to pool size
	// the backend accepts (default 10).
	Overprovision float64
	// DataFullPercent and MetadataFullPercent are the fill levels at which
	// new volumes, snapshots and expansions are refused with ErrNoSpace,
	// so that the pool is never driven to 100% by provisioning (defaults
	// 90 and 80).
	DataFullPercent     float64
	MetadataFullPercent float64

	// ChunkSizeBytes is the thin pool chunk size for a pool created here
	// (default 64 KiB, a multiple of 64 KiB).
	ChunkSizeBytes int64
	// MetadataSizeBytes is the pool metadata size for a pool created here;
	// 0 sizes it from the data size (see poolSizes).
	MetadataSizeBytes int64
	// SkipZeroing creates the pool with --zero n: a new chunk is not
	// zeroed before a first write that covers only part of it. First
	// writes get faster, but a raw block volume can read stale chunks of
	// deleted volumes, and running the metadata out puts the pool in
	// dm-thin's Fail mode, where all I/O fails, instead of read-only
	// (docs/lvm-metadata.md). The default, zeroing, is LVM's own.
	SkipZeroing bool

	// DefaultVolumeBytes is the size of a volume when the request names
	// none (default 1 GiB).
	DefaultVolumeBytes int64
	// DeviceWait bounds the wait for /dev/<vg>/<lv> after activation
	// (default 10 s).
	DeviceWait time.Duration

	// ListMaxAge is how long creates, snapshots, expansions and deletes
	// trust the LV cache filled by the last lvs before listing again
	// (default 30 s; cache.go). The pool's fill levels are read fresh for
	// every call regardless.
	ListMaxAge time.Duration

	// Runner runs lvm, dmsetup, losetup and blkid (default: on this host).
	Runner command.Runner
	// LVMConfig is passed as `--config` to every LVM command, e.g.
	// "activation{udev_sync=0 udev_rules=0}" on a node without udev.
	LVMConfig string
}

const (
	defaultThinPool      = "thinpool"
	defaultOverprovision = 10
	defaultDataFull      = 90
	defaultMetadataFull  = 80
	defaultChunkSize     = 64 << 10
	defaultVolumeBytes   = backend.GiB
	defaultDeviceWait    = 10 * time.Second
	defaultListMaxAge    = 30 * time.Second
	minChunkSize         = 64 << 10
	maxChunkSize         = 1 << 30
	defaultLoopFileBytes = 10 * backend.GiB
)

// LVM names: letters, digits and "+_.-", not starting with "-".
var lvmName = regexp.MustCompile(`^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$`)

func (c Config) withDefaults() (Config, error) {
	if c.ThinPool == "" {
		c.ThinPool = defaultThinPool
	}
	if c.Overprovision == 0 {
		c.Overprovision = defaultOverprovision
	}
	if c.DataFullPercent == 0 {
		c.DataFullPercent = defaultDataFull
	}
	if c.MetadataFullPercent == 0 {
		c.MetadataFullPercent = defaultMetadataFull
	}
	if c.ChunkSizeBytes == 0 {
		c.ChunkSizeBytes = defaultChunkSize
	}
	if c.DefaultVolumeBytes == 0 {
		c.DefaultVolumeBytes = defaultVolumeBytes
	}
	if c.DeviceWait == 0 {
		c.DeviceWait = defaultDeviceWait
	}
	if c.ListMaxAge == 0 {
		c.ListMaxAge = defaultListMaxAge
	}
	if c.LoopFile != "" && c.LoopSizeBytes == 0 {
		c.LoopSizeBytes = defaultLoopFileBytes
	}
	if c.Runner == nil {
		c.Runner = &command.Host{}
	}
	return c, c.validate()
}

func (c Config) validate() error {
	switch {
	case !lvmName.MatchString(c.VG):
		return fmt.Errorf("lvmthin: volume group name %q: %w", c.VG, backend.ErrInvalid)
	case !lvmName.MatchString(c.ThinPool):
		return fmt.Errorf("lvmthin: thin pool name %q: %w", c.ThinPool, backend.ErrInvalid)
	case len(c.Devices) > 0 && c.LoopFile != "":
		return fmt.Errorf("lvmthin: Devices and LoopFile are exclusive: %w", backend.ErrInvalid)
	case c.Overprovision < 1:
		return fmt.Errorf("lvmthin: overprovision ratio %v below 1: %w", c.Overprovision, backend.ErrInvalid)
	case c.DataFullPercent <= 0 || c.DataFullPercent > 100:
		return fmt.Errorf("lvmthin: data full threshold %v%%: %w", c.DataFullPercent, backend.ErrInvalid)
	case c.MetadataFullPercent <= 0 || c.MetadataFullPercent > 100:
		return fmt.Errorf("lvmthin: metadata full threshold %v%%: %w", c.MetadataFullPercent, backend.ErrInvalid)
	case c.ChunkSizeBytes < minChunkSize || c.ChunkSizeBytes > maxChunkSize || c.ChunkSizeBytes%minChunkSize != 0:
		return fmt.Errorf("lvmthin: chunk size %d: want a multiple of 64 KiB up to 1 GiB: %w", c.ChunkSizeBytes, backend.ErrInvalid)
	case c.LoopSizeBytes < 0 || c.MetadataSizeBytes < 0 || c.DefaultVolumeBytes < 0:
		return fmt.Errorf("lvmthin: negative size in config: %w", backend.ErrInvalid)
	}
	for _, d := range c.Devices {
		if len(d) < 6 || d[:5] != "/dev/" {
			return fmt.Errorf("lvmthin: device %q: want a /dev/ path: %w", d, backend.ErrInvalid)
		}
	}
	return nil
}
