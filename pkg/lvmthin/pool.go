package lvmthin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// Pool bootstrap. Every step first looks at what exists and reuses it, so
// start-up is idempotent and a restart in the middle of a bootstrap picks
// up where it stopped. Nothing here ever wipes a device that carries a
// signature: a blank device (or our fresh loop file) becomes a PV, an
// existing PV of our VG is reused, anything else is refused.

const (
	minMetadataBytes = 8 * backend.MiB
	// LVM's thin metadata cannot usefully exceed ~15.8 GiB.
	maxMetadataBytes = 15 * backend.GiB
	// Metadata is sized at 1/256 of the data: about 4x what LVM picks for
	// 64 KiB chunks, because snapshots and clones multiply mappings and a
	// full metadata device is far worse than a full data device.
	metadataRatio = 256
)

// ensurePool makes VG/ThinPool exist and be active, and returns every LV
// of the VG from the last lvs it ran. On the usual start (VG and pool
// exist) that lvs is the only LVM command: it carries the pool's state,
// the VG's extent size and the LVs start-up recovery looks at, so no vgs
// or second lvs is needed.
func (b *Backend) ensurePool(ctx context.Context) ([]LV, error) {
	devices := b.cfg.Devices
	if b.cfg.LoopFile != "" {
		dev, err := b.attachLoop(ctx)
		if err != nil {
			return nil, err
		}
		b.loopDevice = dev
		devices = []string{dev}
	}
	bootstrap := len(devices) > 0

	all, err := b.lvm.lvs(ctx, b.cfg.VG)
	switch {
	case err != nil && vgNotFound.MatchString(command.StderrOf(err)) && bootstrap:
		if err := b.createVG(ctx, devices); err != nil {
			return nil, err
		}
		all = nil
	case err != nil && vgNotFound.MatchString(command.StderrOf(err)):
		return nil, fmt.Errorf("volume group %s does not exist and no devices are configured to create it: %w", b.cfg.VG, backend.ErrUnavailable)
	case err != nil:
		return nil, fmt.Errorf("volume group %s: %w", b.cfg.VG, err)
	}

	pool := findLV(all, b.cfg.ThinPool)
	if pool == nil {
		if !bootstrap {
			return nil, fmt.Errorf("thin pool %s does not exist and no devices are configured to create it: %w", b.poolPath(), backend.ErrUnavailable)
		}
		vg, err := b.lvm.vg(ctx, b.cfg.VG)
		if err != nil {
			return nil, fmt.Errorf("volume group %s: %w", b.cfg.VG, err)
		}
		if err := b.createPool(ctx, vg); err != nil {
			return nil, err
		}
		if all, err = b.lvm.lvs(ctx, b.cfg.VG); err != nil {
			return nil, fmt.Errorf("thin pool %s after lvcreate: %w", b.poolPath(), err)
		}
		if pool = findLV(all, b.cfg.ThinPool); pool == nil {
			return nil, fmt.Errorf("thin pool %s is missing after lvcreate: %w", b.poolPath(), backend.ErrUnavailable)
		}
	}
	if !pool.Attr.IsThinPool() {
		return nil, fmt.Errorf("%s is not a thin pool: %w", b.poolPath(), backend.ErrInvalid)
	}
	if pool.VGExtentSize <= 0 {
		return nil, fmt.Errorf("lvs reported no extent size for volume group %s: %w", b.cfg.VG, backend.ErrUnavailable)
	}
	b.extentSize = pool.VGExtentSize
	if !pool.Attr.Active() {
		// A pool is inactive after a reboot or a fresh loop attach; its
		// fill levels are unknown until it is active.
		if err := b.activatePool(ctx); err != nil {
			return nil, err
		}
	}
	if pool.WhenFull != "error" {
		klog.InfoS("thin pool queues writes when full instead of failing them; consider `lvchange --errorwhenfull y`",
			"pool", b.poolPath(), "whenFull", pool.WhenFull)
	}
	return all, nil
}

// poolComponents are the suffixes LVM gives a thin pool's hidden LVs.
var poolComponents = []string{"_tmeta", "_tdata"}

// activatePool activates the inactive thin pool. An lvm command that
// activates or deactivates the pool and is killed half-way (the node
// plugin SIGKILLed while a receive's last volume was deactivated, which
// takes the pool down with it) can leave one of the pool's components
// active on its own, even without a table, and LVM then refuses the pool
// ("prohibited while logical volume vg/pool_tmeta is active") on every
// start. So when the activation fails, the components are deactivated and
// it is tried once more: nothing but such a leftover uses a component of
// an inactive pool, and LVM refuses to deactivate one that is open (an
// operator's thin_check, for one).
func (b *Backend) activatePool(ctx context.Context) error {
	_, err := b.lvm.run(ctx, activateArgs(b.cfg.VG, b.cfg.ThinPool)...)
	if err == nil {
		return nil
	}
	for _, c := range poolComponents {
		if _, derr := b.lvm.run(ctx, deactivateArgs(b.cfg.VG, b.cfg.ThinPool+c)...); derr != nil {
			return fmt.Errorf("activate thin pool %s: %w (deactivating its component %s: %v)", b.poolPath(), err, c, derr)
		}
	}
	if _, err := b.lvm.run(ctx, activateArgs(b.cfg.VG, b.cfg.ThinPool)...); err != nil {
		return fmt.Errorf("activate thin pool %s (its components deactivated first): %w", b.poolPath(), err)
	}
	klog.InfoS("activated the thin pool after deactivating its components, left active by an interrupted activation",
		"pool", b.poolPath(), "firstError", err.Error())
	return nil
}

// findLV returns the LV called name in a report, or nil.
func findLV(lvs []LV, name string) *LV {
	for i := range lvs {
		if lvs[i].Name == name {
			return &lvs[i]
		}
	}
	return nil
}

// createVG makes the VG from devices, creating PVs on blank ones only.
func (b *Backend) createVG(ctx context.Context, devices []string) error {
	for _, dev := range devices {
		pv, err := b.lvm.pv(ctx, dev)
		switch {
		case err == nil && pv.VG == "":
			continue // an orphan PV: usable as it is
		case err == nil:
			return fmt.Errorf("device %s is a physical volume of volume group %s, not %s: %w", dev, pv.VG, b.cfg.VG, backend.ErrPrecondition)
		case !errors.Is(err, backend.ErrNotFound):
			return fmt.Errorf("inspect device %s: %w", dev, err)
		}
		if err := b.requireBlank(ctx, dev); err != nil {
			return err
		}
		klog.InfoS("creating LVM physical volume on a blank device", "device", dev)
		if _, err := b.lvm.run(ctx, pvcreateArgs(dev)...); err != nil {
			return fmt.Errorf("pvcreate %s: %w", dev, err)
		}
	}
	klog.InfoS("creating LVM volume group", "vg", b.cfg.VG, "devices", devices)
	if _, err := b.lvm.run(ctx, vgcreateArgs(b.cfg.VG, devices, []string{tagOwned})...); err != nil {
		return fmt.Errorf("vgcreate %s: %w", b.cfg.VG, err)
	}
	return nil
}

// requireBlank refuses a device with any signature (filesystem, partition
// table, RAID, LVM of another host): the one thing start-up must never do
// is destroy data on a misconfigured device list.
func (b *Backend) requireBlank(ctx context.Context, dev string) error {
	res, err := b.cfg.Runner.Run(ctx, "blkid", "--probe", "--output", "export", dev)
	if err == nil {
		sig := strings.Join(strings.Fields(string(res.Stdout)), " ")
		return fmt.Errorf("device %s carries a signature (%s); refusing to overwrite it: %w", dev, sig, backend.ErrPrecondition)
	}
	if command.ExitCodeOf(err) == 2 { // blkid: nothing detected
		return nil
	}
	return fmt.Errorf("probe device %s for signatures: %w", dev, err)
}

// createPool makes the thin pool from the VG's free space.
func (b *Backend) createPool(ctx context.Context, vg *VG) error {
	data, meta, err := poolSizes(vg.Free, vg.ExtentSize, b.cfg.MetadataSizeBytes)
	if err != nil {
		return fmt.Errorf("thin pool %s: %w", b.poolPath(), err)
	}
	klog.InfoS("creating thin pool", "pool", b.poolPath(), "dataBytes", data, "metadataBytes", meta, "chunkBytes", b.cfg.ChunkSizeBytes)
	args := createPoolArgs(b.cfg.VG, b.cfg.ThinPool, data, meta, b.cfg.ChunkSizeBytes, !b.cfg.SkipZeroing, []string{tagOwned})
	if _, err := b.lvm.run(ctx, args...); err != nil {
		return fmt.Errorf("create thin pool %s: %w", b.poolPath(), err)
	}
	if _, err := b.lvm.run(ctx, errorWhenFullArgs(b.cfg.VG, b.cfg.ThinPool)...); err != nil {
		return fmt.Errorf("set error-when-full on %s: %w", b.poolPath(), err)
	}
	return nil
}

// poolSizes splits free VG space into pool data and metadata. LVM also
// keeps a spare metadata LV of the metadata size (for repair), so the data
// gets free - 2*metadata, less one extent of slack for rounding.
func poolSizes(free, extent, metadata int64) (data, meta int64, err error) {
	if extent <= 0 {
		return 0, 0, fmt.Errorf("extent size %d: %w", extent, backend.ErrInvalid)
	}
	meta = metadata
	if meta == 0 {
		meta = min(max(free/metadataRatio, minMetadataBytes), maxMetadataBytes)
	}
	if meta, err = backend.RoundUp(meta, extent); err != nil {
		return 0, 0, err
	}
	data = (free - 2*meta - extent) / extent * extent
	if data < 16*backend.MiB {
		return 0, 0, fmt.Errorf("only %d bytes free in the volume group: %w", free, backend.ErrNoSpace)
	}
	return data, meta, nil
}

// attachLoop creates the sparse loop file if needed and returns the loop
// device it is attached to, attaching it if it is not.
func (b *Backend) attachLoop(ctx context.Context) (string, error) {
	file := b.cfg.LoopFile
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return "", fmt.Errorf("loop file directory: %w", err)
		}
		f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return "", fmt.Errorf("create loop file: %w", err)
		}
		err = f.Truncate(b.cfg.LoopSizeBytes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("size loop file %s: %w", file, err)
		}
		klog.InfoS("created sparse loop file for the thin pool", "file", file, "sizeBytes", b.cfg.LoopSizeBytes)
	} else if err != nil {
		return "", fmt.Errorf("loop file %s: %w", file, err)
	}
	if dev, err := b.loopDeviceOf(ctx, file); err != nil || dev != "" {
		return dev, err
	}
	res, err := b.cfg.Runner.Run(ctx, "losetup", "--find", "--show", file)
	if err != nil {
		return "", fmt.Errorf("attach loop file %s: %w", file, err)
	}
	dev := strings.TrimSpace(string(res.Stdout))
	klog.InfoS("attached loop file", "file", file, "device", dev)
	return dev, nil
}

// loopDeviceOf returns the loop device file is attached to, or "".
func (b *Backend) loopDeviceOf(ctx context.Context, file string) (string, error) {
	res, err := b.cfg.Runner.Run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return "", fmt.Errorf("find loop device of %s: %w", file, err)
	}
	fields := strings.Fields(string(res.Stdout))
	if len(fields) == 0 {
		return "", nil
	}
	return fields[0], nil
}

// Teardown destroys a loop-file pool and everything in it: the VG, the PV,
// the loop device and the file. It exists for tests and demos and refuses
// to run on a pool that is not backed by this backend's loop file.
func (b *Backend) Teardown(ctx context.Context) error {
	if b.cfg.LoopFile == "" || b.loopDevice == "" {
		return fmt.Errorf("teardown of %s: only loop-file pools may be torn down: %w", b.poolPath(), backend.ErrPrecondition)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	klog.InfoS("tearing down loop-file thin pool", "vg", b.cfg.VG, "device", b.loopDevice, "file", b.cfg.LoopFile)
	if _, err := b.lvm.run(ctx, vgremoveArgs(b.cfg.VG)...); err != nil && !errors.Is(err, backend.ErrUnavailable) {
		return fmt.Errorf("remove volume group %s: %w", b.cfg.VG, err)
	}
	if _, err := b.lvm.run(ctx, pvremoveArgs(b.loopDevice)...); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("remove physical volume %s: %w", b.loopDevice, err)
	}
	if _, err := b.cfg.Runner.Run(ctx, "losetup", "--detach", b.loopDevice); err != nil {
		return fmt.Errorf("detach %s: %w", b.loopDevice, err)
	}
	if err := os.Remove(b.cfg.LoopFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove loop file: %w", err)
	}
	return nil
}

// Close releases nothing today (the pool stays attached for the next
// start); it exists so callers can treat every backend alike.
func (b *Backend) Close() error { return nil }
