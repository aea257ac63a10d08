package lvm

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/lvmthin/lvmtest"
)

// TestBootstrapReusesLoopPool: a second start on the same loop file reuses
// the pool (no pvcreate over it) and sees the volume made by the first.
func TestBootstrapReusesLoopPool(t *testing.T) {
	t.Parallel()
	b, cfg, id := poolKeeping(t, "csithin_boot")
	c := ctx(t)
	attrs := lvm(t, "lvs", "--noheadings", "-o", "lv_attr,chunk_size,discards,lv_when_full,zero", "--units", "b", "--nosuffix", "csithin_boot/pool")
	for _, want := range []string{"65536", "passdown", "error"} {
		if !strings.Contains(attrs, want) {
			t.Errorf("pool settings %q lack %q", attrs, want)
		}
	}
	// lv_attr bit 8 of a thin pool: z = new chunks are zeroed (the default).
	if f := strings.Fields(attrs); len(f) == 0 || len(f[0]) < 8 || f[0][7] != 'z' {
		t.Errorf("pool attr %q: new chunks not zeroed", attrs)
	}
	b2, err := lvmthin.New(c, cfg)
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	if b2.LoopDevice() != b.LoopDevice() {
		t.Fatalf("second start attached %s, first %s", b2.LoopDevice(), b.LoopDevice())
	}
	v, err := b2.GetVolume(c, id)
	if err != nil || v.Name != "keep-me" {
		t.Fatalf("volume after second start = %+v, %v", v, err)
	}
}

// TestStartActivatesPoolLeftHalfActive: a pool that is inactive while one
// of its components is active on its own, which LVM refuses to activate
// (an lvm command killed half-way through the pool's activation leaves
// that; seen when a node plugin was SIGKILLed mid-copy and then failed
// every start), is activated by the next start, its volume there.
func TestStartActivatesPoolLeftHalfActive(t *testing.T) {
	t.Parallel()
	_, cfg, id := poolKeeping(t, "csithin_half")
	c := ctx(t)
	lvm(t, "vgchange", "--activate", "n", "csithin_half")
	lvm(t, "lvchange", "--yes", "--activate", "y", "csithin_half/pool_tmeta")
	res, err := runner.Run(c, "lvm", lvmtest.Args("lvchange", "--activate", "y", "csithin_half/pool")...)
	if err == nil || !strings.Contains(string(res.Stderr), "prohibited") {
		t.Fatalf("LVM activated the pool beside its active component (%v, %s): the state under test is not made", err, res.Stderr)
	}
	b2, err := lvmthin.New(c, cfg)
	if err != nil {
		t.Fatalf("start with the pool's metadata component active: %v", err)
	}
	if attr := strings.TrimSpace(lvm(t, "lvs", "--noheadings", "-o", "lv_attr", "csithin_half/pool")); len(attr) < 5 || attr[4] != 'a' {
		t.Errorf("pool attr %q after the start: not active", attr)
	}
	if v, err := b2.GetVolume(c, id); err != nil || v.Name != "keep-me" {
		t.Fatalf("volume after the start = %+v, %v", v, err)
	}
}

// poolKeeping makes a private loop-file pool in a new volume group vg
// holding one volume, "keep-me", for tests that start a second Backend on
// it; it returns the pool, its configuration and the volume's ID.
func poolKeeping(t *testing.T, vg string) (*lvmthin.Backend, lvmthin.Config, string) {
	t.Helper()
	var cfg lvmthin.Config
	b := loopPool(t, vg, 256*backend.MiB, func(c *lvmthin.Config) { cfg = *c })
	id := volID(t, "vol")
	if _, err := b.CreateVolume(ctx(t), backend.VolumeRequest{ID: id, Name: "keep-me", RequiredBytes: 16 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	return b, cfg, id
}

// TestBootstrapRefusesSignature: a configured device that holds a
// filesystem is never turned into a PV.
func TestBootstrapRefusesSignature(t *testing.T) {
	t.Parallel()
	requireLVM(t)
	file := filepath.Join(loopDir(t), "ext4.img")
	run(t, "truncate", "-s", "64M", file)
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", file))
	t.Cleanup(func() { run(t, "losetup", "--detach", dev) })
	formatExt4(t, dev)

	_, err := lvmthin.New(context.Background(), lvmthin.Config{VG: "csithin_sig", Devices: []string{dev}, LVMConfig: lvmtest.Config()})
	wantErr(t, err, backend.ErrPrecondition, "bootstrap on a device with ext4")
	if out := run(t, "blkid", "--probe", "--output", "export", dev); !strings.Contains(out, "TYPE=ext4") {
		t.Fatalf("the ext4 signature is gone: %s", out)
	}

	_, err = lvmthin.New(context.Background(), lvmthin.Config{VG: "csithin_absent", LVMConfig: lvmtest.Config()})
	wantErr(t, err, backend.ErrUnavailable, "start on a missing VG without devices")
}
