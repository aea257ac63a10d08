// Package pools sets up and measures the storage a benchmark driver runs
// on: a fresh btrfs pool on a sparse loop file, or an LVM thin pool on a
// scratch disk. It also runs the bare backend commands the driver wraps,
// so the driver's overhead can be measured against them in the same run.
package pools

import (
	"context"
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// Pool is one benchmark pool.
type Pool interface {
	// Kind is the driver backend: "btrfs" or "lvmthin".
	Kind() string
	// Describe says what the pool is, for reports.
	Describe() string
	// DriverArgs are the csi-thin flags that serve this pool.
	DriverArgs() []string
	// Usage syncs and returns the physical space in use: the pool's own
	// figure (btrfs "Used", data plus both DUP metadata copies; or the thin
	// pool's mapped data) and, for a loop file, its host allocation.
	Usage(ctx context.Context) (results.Usage, error)
	// BareSnapshot runs the one backend command a CSI clone of volumeID
	// wraps, returns how long it took, and removes what it made.
	BareSnapshot(ctx context.Context, volumeID string, n int) (time.Duration, error)
	// BareCommand names that command, for the report.
	BareCommand() string
	// DiscardPending is how many freed bytes still wait for an
	// asynchronous discard (btrfs discard=async queues them); 0 if none
	// or unknown.
	DiscardPending(ctx context.Context) (int64, error)
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
