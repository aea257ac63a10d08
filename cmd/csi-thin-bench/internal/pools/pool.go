// Package pools sets up and measures the storage a benchmark driver runs
// on: a fresh btrfs pool on a sparse loop file, or an LVM thin pool on a
// scratch disk. It also runs the bare backend commands the driver wraps,
// so the driver's overhead can be measured against them in the same run.
package pools

import (
	"context"
	"time"
)

// Usage is a pool's physical space in use.
type Usage struct {
	// PoolBytes is what the pool itself reports as used: btrfs "Used"
	// (data plus metadata, counting both DUP copies) or the thin pool's
	// mapped data blocks.
	PoolBytes int64
	// MetadataBytes is thin-pool metadata in use (LVM); 0 for btrfs,
	// whose metadata is inside PoolBytes.
	MetadataBytes int64
	// HostBytes is the space the pool's backing file takes on the host
	// (allocated blocks of the loop file); -1 when the pool is on a disk.
	HostBytes int64
}

// Pool is one benchmark pool.
type Pool interface {
	// Kind is the driver backend: "btrfs" or "lvmthin".
	Kind() string
	// Describe says what the pool is, for reports.
	Describe() string
	// DriverArgs are the csi-thin flags that serve this pool.
	DriverArgs() []string
	// Usage syncs and returns the physical space in use.
	Usage(ctx context.Context) (Usage, error)
	// BareSnapshot runs the one backend command a CSI clone of volumeID
	// wraps, returns how long it took, and removes what it made.
	BareSnapshot(ctx context.Context, volumeID string, n int) (time.Duration, error)
	// SetDiscard turns the pool-level discard on or off, where that is a
	// pool setting (btrfs: a remount); block backends return false and
	// take discard as a per-volume mount option instead.
	SetDiscard(ctx context.Context, on bool) (bool, error)
	// Trim runs fstrim where discard is a pool setting (btrfs) and
	// returns whether it did.
	Trim(ctx context.Context) (bool, error)
	// Teardown removes the pool and everything the run left behind;
	// the driver must be stopped first.
	Teardown(ctx context.Context) error
}
