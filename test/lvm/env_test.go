// Package lvm holds the integration tests of the LVM thin backend on a
// real dm-thin pool. They need root and a kernel with dm-thin-pool; on a
// host without it they run inside the VM of test/vm (test/vm/run-lvm-suite.sh).
// In CI (CI=true) a missing prerequisite fails; elsewhere it skips.
package lvm

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/lvmthin/lvmtest"
)

const (
	sharedVG   = "csithin_it"
	sharedPool = "pool"
	// sharedLoopBytes sizes the shared pool's loop file when no test
	// device is given (CSI_THIN_TEST_DEVICE), i.e. on a native host.
	sharedLoopBytes = 5 * backend.GiB
)

var (
	missingPrereq string // why the suite cannot run here, or ""
	runner        = &command.Host{Timeout: 5 * time.Minute}

	sharedOnce    sync.Once
	sharedCfg     lvmthin.Config
	sharedBackend *lvmthin.Backend
	sharedErr     error
	sharedDir     string
)

// Tests that assert on the shared pool's data% (clone cost, discard) or
// start a second Backend on it run sequentially; the others call
// t.Parallel and run after them, overlapping their I/O under emulation.
func TestMain(m *testing.M) {
	klog.InitFlags(nil) // -v=4 logs every LVM command with its duration
	flag.Parse()
	if os.Getenv(sanityChildEnv) == "" {
		// The sanity child test only runs in the processes TestSanity starts.
		skip := "^TestSanityChild$"
		if s := flag.Lookup("test.skip").Value.String(); s != "" {
			skip = s + "|" + skip
		}
		_ = flag.Set("test.skip", skip)
	}
	missingPrereq = checkPrereqs()
	if missingPrereq != "" {
		fmt.Fprintf(os.Stderr, "test/lvm: %s\n", missingPrereq)
	}
	if os.Getenv(sanityChildEnv) == "" {
		startSanity()
	}
	code := m.Run()
	if sharedBackend != nil && sharedBackend.LoopDevice() != "" {
		if err := sharedBackend.Teardown(context.Background()); err != nil {
			fmt.Fprintf(os.Stderr, "test/lvm: teardown of the shared pool: %v\n", err)
			code = 1
		}
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

func checkPrereqs() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	for _, tool := range []string{"lvm", "dmsetup", "losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs", "thin_check", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s is not installed", tool)
		}
	}
	out, err := exec.Command("dmsetup", "targets").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("thin-pool")) {
		// The module may just not be loaded yet.
		_ = exec.Command("modprobe", "dm-thin-pool").Run()
		out, err = exec.Command("dmsetup", "targets").CombinedOutput()
	}
	if err != nil || !bytes.Contains(out, []byte("thin-pool")) {
		return "the kernel has no dm-thin-pool target (run the suite in the VM: test/vm/run-lvm-suite.sh)"
	}
	return ""
}

// requireLVM skips (or, in CI, fails) a test that cannot run here.
func requireLVM(t *testing.T) {
	t.Helper()
	if missingPrereq == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing in CI: %s", missingPrereq)
	}
	t.Skipf("skipping: %s", missingPrereq)
}

// shared returns the pool most tests share: on CSI_THIN_TEST_DEVICE (the
// VM's blank disk) or on a sparse loop file.
func shared(t *testing.T) *lvmthin.Backend {
	t.Helper()
	requireLVM(t)
	sharedOnce.Do(func() {
		cfg := lvmthin.Config{VG: sharedVG, ThinPool: sharedPool, NodeName: "it-node", LVMConfig: lvmtest.Config()}
		if dev := os.Getenv("CSI_THIN_TEST_DEVICE"); dev != "" {
			cfg.Devices = []string{dev}
		} else {
			sharedDir, sharedErr = os.MkdirTemp("", "csi-thin-lvm-it-")
			if sharedErr != nil {
				return
			}
			cfg.LoopFile = filepath.Join(sharedDir, "pool.img")
			cfg.LoopSizeBytes = sharedLoopBytes
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		sharedCfg = cfg
		sharedBackend, sharedErr = lvmthin.New(ctx, cfg)
	})
	if sharedErr != nil {
		t.Fatalf("shared pool: %v", sharedErr)
	}
	return sharedBackend
}

// loopPool makes a private loop-file pool for tests that fill or break
// it, torn down at the end of the test.
func loopPool(t *testing.T, vg string, size int64, mutate func(*lvmthin.Config)) *lvmthin.Backend {
	t.Helper()
	requireLVM(t)
	dir := loopDir(t)
	cfg := lvmthin.Config{
		VG: vg, ThinPool: "pool", NodeName: "it-node", LoopFile: filepath.Join(dir, vg+".img"),
		LoopSizeBytes: size, LVMConfig: lvmtest.Config(),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := lvmthin.New(ctx(t), cfg)
	if err != nil {
		t.Fatalf("loop pool %s: %v", vg, err)
	}
	t.Cleanup(func() {
		if err := b.Teardown(context.Background()); err != nil {
			t.Errorf("teardown %s: %v", vg, err)
		}
	})
	return b
}

// loopDir is where private loop files go: /run in the VM (tmpfs: the work
// dir is 9p and slow, and these pools are small), else a temp dir.
func loopDir(t *testing.T) string {
	if os.Getenv("CSI_THIN_VM") != "" {
		dir, err := os.MkdirTemp("/run", "csi-thin-loop-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return t.TempDir()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return c
}

// run runs a command and fails the test with its stderr.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	res, err := runner.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(res.Stdout)
}

// lvm runs an LVM command with the same --config as the backends.
func lvm(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "lvm", lvmtest.Args(args...)...)
}

func wantErr(t *testing.T, err, sentinel error, what string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got error %v, want %v", what, err, sentinel)
	}
}

func volID(t *testing.T, suffix string) string {
	return backend.VolumeIDFor(t.Name() + "/" + suffix)
}

func snapID(t *testing.T, suffix string) string {
	return backend.SnapshotIDFor(t.Name() + "/" + suffix)
}

// poolPercent reads the pool's data% straight from lvs (not through the
// backend), so that the assertions do not trust the code under test.
func poolPercent(t *testing.T, vg, pool string) float64 {
	t.Helper()
	out := lvm(t, "lvs", "--noheadings", "--nosuffix", "-o", "data_percent", vg+"/"+pool)
	var f float64
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "%g", &f); err != nil {
		t.Fatalf("parse data_percent %q: %v", out, err)
	}
	return f
}

// target returns the device of a volume.
func target(t *testing.T, b *lvmthin.Backend, id string) string {
	t.Helper()
	tg, err := b.Target(ctx(t), id)
	if err != nil {
		t.Fatalf("target %s: %v", id, err)
	}
	if !tg.IsDevice {
		t.Fatalf("target %s = %+v, want a device", id, tg)
	}
	return tg.Path
}
