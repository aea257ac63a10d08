package pools

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/mounts"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/pkg/exec"
)

// LVMDevice is an LVM thin pool the driver builds on a blank disk
// (--devices); in the test VM that is its scratch virtio disk.
type LVMDevice struct {
	dir, device, vg, pool string
	run                   exec.Runner
}

// NewLVMDevice plans a pool on device (which must be blank: the driver
// refuses a disk with a signature) with mounts under dir.
func NewLVMDevice(dir, device, vg, pool string) *LVMDevice {
	return &LVMDevice{dir: dir, device: device, vg: vg, pool: pool, run: &exec.Host{}}
}

func (l *LVMDevice) Kind() string { return "lvmthin" }

func (l *LVMDevice) Describe() string {
	return fmt.Sprintf("LVM thin pool %s/%s built by the driver on the blank disk %s", l.vg, l.pool, l.device)
}

func (l *LVMDevice) DriverArgs() []string {
	return []string{"--backend=lvmthin", "--vg=" + l.vg, "--thin-pool=" + l.pool, "--devices=" + l.device}
}

// dmName is device-mapper's name for vg/lv: each "-" inside a name is
// doubled and the two are joined by a single "-".
func dmName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// Usage reads the thin pool's mapped data and metadata blocks from
// dm-thin itself (`dmsetup status`): exact to the chunk, where lvs'
// data_percent has two decimals (1 MiB on a 10 GiB pool is 0.01%).
func (l *LVMDevice) Usage(ctx context.Context) (results.Usage, error) {
	unix.Sync()
	var lastErr error
	// With thin volumes active the pool's target is in <vg>-<pool>-tpool;
	// a pool with none active may show it under <vg>-<pool>.
	for _, name := range []string{dmName(l.vg, l.pool) + "-tpool", dmName(l.vg, l.pool)} {
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

// parseThinPool reads
//
//	status: <start> <len> thin-pool <transaction> <usedMeta>/<totalMeta> <usedData>/<totalData> ...
//	table:  <start> <len> thin-pool <metaDev> <dataDev> <dataBlockSectors> <lowWater> ...
//
// Metadata blocks are 4 KiB; data blocks are the pool's chunk size.
func parseThinPool(status, table string) (results.Usage, error) {
	st, tb := strings.Fields(status), strings.Fields(table)
	if len(st) < 6 || st[2] != "thin-pool" || len(tb) < 6 || tb[2] != "thin-pool" {
		return results.Usage{}, fmt.Errorf("not a thin-pool target: %q / %q", status, table)
	}
	usedMeta, _, ok1 := strings.Cut(st[4], "/")
	usedData, _, ok2 := strings.Cut(st[5], "/")
	if !ok1 || !ok2 {
		return results.Usage{}, fmt.Errorf("thin-pool status %q: no used/total blocks", status)
	}
	meta, err1 := strconv.ParseInt(usedMeta, 10, 64)
	data, err2 := strconv.ParseInt(usedData, 10, 64)
	sectors, err3 := strconv.ParseInt(tb[5], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return results.Usage{}, fmt.Errorf("thin-pool status %q table %q: %w", status, table, err)
	}
	return results.Usage{PoolBytes: data * sectors * 512, MetadataBytes: meta * 4096}, nil
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
