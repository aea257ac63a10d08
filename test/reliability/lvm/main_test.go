// Package lvm is the LVM thin half of the reliability suite: SIGKILL at
// every step of every mutating Controller call and of the Node calls
// (activation, mkfs, mounts, filesystem growth), and a pool run out of
// space, on a real dm-thin pool. It needs root and a kernel with dm-thin-pool, so on
// a host without it, it runs in the VM of test/vm:
//
//	CGO_ENABLED=0 go test -c -o /var/tmp/rel-lvm.test ./test/reliability/lvm/
//	test/vm/run.sh /var/tmp/rel-lvm.test -test.v -test.timeout 30m
//
// In CI (CI=true) a missing prerequisite fails; elsewhere it skips.
package lvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/lvmthin/lvmtest"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

func TestMain(m *testing.M) {
	harness.MaybeServe(openChild)
	os.Exit(m.Run())
}

// openChild opens the test's pool in a driver child; the VG and its loop
// device outlive each child, as they outlive a driver restart on a node.
func openChild(ctx context.Context, config string, runner command.Runner) (backend.Local, error) {
	var cfg lvmthin.Config
	if err := json.Unmarshal([]byte(config), &cfg); err != nil {
		return nil, fmt.Errorf("child config %q: %w", config, err)
	}
	cfg.Runner = runner
	return lvmthin.New(ctx, cfg)
}

func requireDMThin(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "lvm", "dmsetup", "losetup", "blkid")
	out, _ := exec.Command("dmsetup", "targets").CombinedOutput()
	if !bytes.Contains(out, []byte("thin-pool")) {
		exec.Command("modprobe", "dm-thin-pool").Run()
		out, _ = exec.Command("dmsetup", "targets").CombinedOutput()
	}
	if !bytes.Contains(out, []byte("thin-pool")) {
		testenv.Missing(t, "the kernel has no dm-thin-pool target (run this package in test/vm: see the package doc)")
	}
}

// newPool makes a loop-file pool in its own VG for one test (on tmpfs in
// the VM, where the work dir is slow 9p) and tears it down after.
func newPool(t *testing.T, vg string, size int64, mutate func(*lvmthin.Config)) (*lvmthin.Backend, lvmthin.Config) {
	t.Helper()
	requireDMThin(t)
	dir := t.TempDir()
	if os.Getenv("CSI_THIN_VM") != "" {
		d, err := os.MkdirTemp("/run", "csi-thin-rel-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	cfg := lvmthin.Config{VG: vg, ThinPool: "pool", NodeName: "rel-node", LoopFile: filepath.Join(dir, vg+".img"),
		LoopSizeBytes: size, LVMConfig: lvmtest.Config()}
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := lvmthin.New(ctx, cfg)
	if err != nil {
		t.Fatalf("pool %s: %v", vg, err)
	}
	t.Cleanup(func() {
		if err := b.Teardown(context.Background()); err != nil {
			t.Errorf("teardown %s: %v", vg, err)
		}
	})
	return b, cfg
}

var host = &command.Host{Timeout: 2 * time.Minute}

// lvm runs one LVM command the way the driver does (same --config).
func lvm(t *testing.T, args ...string) []byte {
	t.Helper()
	res, err := host.Run(context.Background(), "lvm", lvmtest.Args(args...)...)
	if err != nil {
		t.Fatalf("lvm %v: %v", args, err)
	}
	return res.Stdout
}

// lvRow is the part of an lvs row these tests read.
type lvRow struct {
	Name     string `json:"lv_name"`
	Tags     string `json:"lv_tags"`
	Size     string `json:"lv_size"`
	Attr     string `json:"lv_attr"`
	WhenFull string `json:"lv_when_full"`
	Data     string `json:"data_percent"`
	Meta     string `json:"metadata_percent"`
}

func listLVs(t *testing.T, vg string) []lvRow {
	t.Helper()
	out := lvm(t, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,lv_tags,lv_size,lv_attr,lv_when_full,data_percent,metadata_percent", vg)
	var rep struct {
		Report []struct {
			LV []lvRow `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("parse lvs: %v: %s", err, out)
	}
	if len(rep.Report) == 0 {
		return nil
	}
	return rep.Report[0].LV
}

func childConfig(t *testing.T, cfg lvmthin.Config) string {
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
