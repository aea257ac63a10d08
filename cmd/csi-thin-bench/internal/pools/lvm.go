package pools

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/mounts"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// LVMDevice is an LVM thin pool the driver builds on a blank disk
// (--devices); in the test VM that is its scratch virtio disk.
type LVMDevice struct {
	dir, device, vg, pool string
	run                   command.Runner
}

// NewLVMDevice plans a pool on device (which must be blank: the driver
// refuses a disk with a signature) with mounts under dir.
func NewLVMDevice(dir, device, vg, pool string) *LVMDevice {
	return &LVMDevice{dir: dir, device: device, vg: vg, pool: pool, run: &command.Host{}}
}

func (l *LVMDevice) Kind() string { return "lvmthin" }

func (l *LVMDevice) Describe() string {
	return fmt.Sprintf("LVM thin pool %s/%s built by the driver on the blank disk %s", l.vg, l.pool, l.device)
}

// DriverArgs puts the freeze markers in the work dir: the default below
// /var/lib is read-only in the test VM, and the driver will not start
// without its freeze state dir.
func (l *LVMDevice) DriverArgs() []string {
	return []string{"--backend=lvmthin", "--vg=" + l.vg, "--thin-pool=" + l.pool, "--devices=" + l.device,
		"--freeze-state-dir=" + filepath.Join(l.dir, "freeze")}
}

// Usage reads the thin pool's mapped data and metadata blocks from
// dm-thin itself (`dmsetup status`): exact to the chunk, where lvs'
// data_percent has two decimals (1 MiB on a 10 GiB pool is 0.01%).
func (l *LVMDevice) Usage(ctx context.Context) (results.Usage, error) {
	unix.Sync()
	var lastErr error
	// With thin volumes active the pool's target is in <vg>-<pool>-tpool;
	// a pool with none active may show it under <vg>-<pool>.
	for _, name := range []string{lvmthin.DMName(l.vg, l.pool, "tpool"), lvmthin.DMName(l.vg, l.pool, "")} {
		status, err := l.run.Run(ctx, "dmsetup", "status", name)
		if err != nil {
			lastErr = err
			continue
		}
		table, err := l.run.Run(ctx, "dmsetup", "table", name)
		if err != nil {
			lastErr = err
			continue
		}
		u, err := parseThinPool(string(status.Stdout), string(table.Stdout))
		if err != nil {
			lastErr = err
			continue
		}
		return u, nil
	}
	return results.Usage{}, fmt.Errorf("thin pool usage of %s/%s: %w", l.vg, l.pool, lastErr)
}

// parseThinPool reads the pool's status (lvmthin.ParseThinPoolStatus)
// and its table, for the data block size:
//
//	table:  <start> <len> thin-pool <metaDev> <dataDev> <dataBlockSectors> <lowWater> ...
//
// Metadata blocks are 4 KiB.
func parseThinPool(status, table string) (results.Usage, error) {
	st, err := lvmthin.ParseThinPoolStatus([]byte(status))
	if err != nil {
		return results.Usage{}, err
	}
	tb := strings.Fields(table)
	if len(tb) < 6 || tb[2] != "thin-pool" {
		return results.Usage{}, fmt.Errorf("thin-pool table %q: not a thin-pool target", table)
	}
	sectors, err := strconv.ParseInt(tb[5], 10, 64)
	if err != nil {
		return results.Usage{}, fmt.Errorf("thin-pool table %q: %w", table, err)
	}
	return results.Usage{PoolBytes: st.UsedDataBlocks * sectors * 512, MetadataBytes: st.UsedMetadataBlocks * 4096}, nil
}

func (l *LVMDevice) BareCommand() string { return "lvcreate --snapshot" }

// BareSnapshot times `lvcreate --snapshot` of the volume's LV (a thin
// snapshot: no size given), then removes it. LV names are volume IDs.
func (l *LVMDevice) BareSnapshot(ctx context.Context, volumeID string, n int) (time.Duration, error) {
	name := fmt.Sprintf("bare-%d", n)
	start := time.Now()
	if _, err := l.run.Run(ctx, "lvcreate", "--snapshot", "--name", name, l.vg+"/"+volumeID); err != nil {
		return 0, fmt.Errorf("bare snapshot: %w", err)
	}
	took := time.Since(start)
	if _, err := l.run.Run(ctx, "lvremove", "--yes", l.vg+"/"+name); err != nil {
		return 0, fmt.Errorf("remove bare snapshot: %w", err)
	}
	return took, nil
}

// DiscardPending: dm-thin frees chunks synchronously on discard.
func (l *LVMDevice) DiscardPending(context.Context) (int64, error) { return 0, nil }

// SetDiscard: on LVM, discard is the volume's ext4 mount option.
func (l *LVMDevice) SetDiscard(context.Context, bool) (bool, error) { return false, nil }

// Trim: fstrim runs on each volume's mount, not on the pool.
func (l *LVMDevice) Trim(context.Context) (bool, error) { return false, nil }

// Teardown unmounts what is left, removes the volume group and wipes the
// disk's PV label, so the next run finds it blank again.
func (l *LVMDevice) Teardown(ctx context.Context) error {
	var errs []error
	if err := mounts.UnmountUnder(l.dir); err != nil {
		errs = append(errs, err)
	}
	if _, err := l.run.Run(ctx, "vgs", l.vg); err == nil {
		if _, err := l.run.Run(ctx, "vgremove", "--yes", "--force", l.vg); err != nil {
			errs = append(errs, fmt.Errorf("remove volume group: %w", err))
		}
	}
	if _, err := l.run.Run(ctx, "pvs", l.device); err == nil {
		if _, err := l.run.Run(ctx, "pvremove", "--yes", l.device); err != nil {
			errs = append(errs, fmt.Errorf("wipe PV label: %w", err))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove work dir: %w", err))
		}
	}
	return errors.Join(errs...)
}
