package lvmthin

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Target implements backend.Local: the volume's block device, activated
// if needed. Without udev (containers, the test VM) LVM creates the nodes
// itself, but they can still lag the lvchange a little: poll briefly.
func (b *Backend) Target(ctx context.Context, id string) (backend.Target, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return backend.Target{}, err
	}
	lv, _, pool, err := b.lookupWithPool(ctx, id, kindVolume)
	if err != nil {
		return backend.Target{}, err
	}
	if !lv.Attr.Active() {
		if p := b.poolProblem(pool); p != "" && pool.Attr.Active() {
			return backend.Target{}, fmt.Errorf("activate volume %s: %s: %w", id, p, backend.ErrUnavailable)
		}
		if _, err := b.lvm.run(ctx, activateArgs(b.cfg.VG, id)...); err != nil {
			return backend.Target{}, fmt.Errorf("activate volume %s: %w", id, err)
		}
		klog.V(2).InfoS("thin volume activated", "volumeID", id)
	}
	path, err := b.waitForDevice(ctx, id)
	if err != nil {
		return backend.Target{}, err
	}
	return backend.Target{Path: path, IsDevice: true}, nil
}

// ActiveDevice returns the device node of volume id when the volume is
// active, without activating it (Target does): a caller that only asks
// whether the volume is mounted must not change its state, and an
// inactive volume has no device and so no mount.
func (b *Backend) ActiveDevice(id string) (string, bool) {
	if backend.CheckVolumeID(id) != nil {
		return "", false
	}
	for _, p := range []string{devicePath(b.cfg.VG, id), mapperPath(b.cfg.VG, id)} {
		if _, ok := deviceAt(p); ok {
			return p, true
		}
	}
	return "", false
}

func (b *Backend) waitForDevice(ctx context.Context, id string) (string, error) {
	deadline := time.Now().Add(b.cfg.DeviceWait)
	candidates := []string{devicePath(b.cfg.VG, id), mapperPath(b.cfg.VG, id)}
	for {
		for _, p := range candidates {
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeDevice != 0 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("volume %s is active but neither %v appeared within %s: %w",
				id, candidates, b.cfg.DeviceWait, backend.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for device of volume %s: %w", id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Usage implements backend.Local: the node statfs's the filesystem on the
// volume, which knows better than the pool what is used.
func (b *Backend) Usage(context.Context, string) (backend.Usage, error) {
	return backend.Usage{}, backend.ErrUnsupported
}
