package btrfs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// The tests build the states a crash leaves by hand, on the on-disk
// layout that recovery reads (documented on btrfs.Pool):
//
//	<pool>/csi-thin/{volumes,snapshots,staging}/<id>
//	<pool>/csi-thin/meta/<id>.json (.json.deleting once a delete is committed)

func layoutPath(p *btrfs.Pool, elem ...string) string {
	return filepath.Join(append([]string{p.MountPath(), "csi-thin"}, elem...)...)
}

func snapshotDir(p *btrfs.Pool, id string) string { return layoutPath(p, "snapshots", id) }
func stagingDir(p *btrfs.Pool, id string) string  { return layoutPath(p, "staging", id) }
func metaPath(p *btrfs.Pool, id string) string    { return layoutPath(p, "meta", id+".json") }
func markerPath(p *btrfs.Pool, id string) string  { return layoutPath(p, "meta", id+".json.deleting") }

// markDeleting leaves what a crash right after a delete's commit point
// leaves: the record renamed to the delete marker, nothing removed yet.
func markDeleting(t *testing.T, p *btrfs.Pool, id string) {
	t.Helper()
	if err := os.Rename(metaPath(p, id), markerPath(p, id)); err != nil {
		t.Fatal(err)
	}
}

// record is the part of a volume's record the tests read and change.
type record struct {
	SubvolumeID uint64 `json:"subvolumeID"`
	Qgroup      string `json:"qgroup"`
}

func readRecord(t *testing.T, p *btrfs.Pool, id string) record {
	t.Helper()
	b, err := os.ReadFile(metaPath(p, id))
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return r
}

// dropQgroupFromRecord makes id's record look like one written before
// level-1 qgroups existed (no qgroup field), keeping every other field.
func dropQgroupFromRecord(t *testing.T, p *btrfs.Pool, id string) {
	t.Helper()
	b, err := os.ReadFile(metaPath(p, id))
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	if _, ok := fields["qgroup"]; !ok {
		t.Fatalf("record of %s has no qgroup to drop: %s", id, b)
	}
	delete(fields, "qgroup")
	if b, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(metaPath(p, id), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func volumeQgroup(subvolID uint64) string    { return fmt.Sprintf("1/%d", subvolID) }
func levelZeroQgroup(subvolID uint64) string { return fmt.Sprintf("0/%d", subvolID) }

// openRecorded opens a real loop-file pool whose commands are recorded,
// and which the test may arm with faults.
func openRecorded(t *testing.T, size int64, mode btrfs.QuotaMode) (*btrfs.Pool, *command.FaultRunner) {
	t.Helper()
	rec := &command.FaultRunner{Next: &command.Host{}}
	return btrfstest.NewPool(t, size, btrfs.Config{Runner: rec, QuotaMode: mode}), rec
}

// restart opens the pool again, as the driver does when it starts:
// recovery runs on what the last process left. p stays open (its test's
// cleanup tears the pool down).
func restart(t *testing.T, p *btrfs.Pool, runner command.Runner) *btrfs.Pool {
	t.Helper()
	again, err := btrfs.Open(context.Background(), btrfs.Config{PoolPath: p.MountPath(), NodeName: p.NodeName(), Runner: runner})
	if err != nil {
		t.Fatalf("reopen %s: %v", p.MountPath(), err)
	}
	return again
}

func btrfsCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("btrfs", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs %v: %v: %s", args, err, out)
	}
	return string(out)
}

// objectsNeedingAttention reads the pool's gauge from the pools'
// collectors (cmd/csi-thin serves them: TestBtrfsMetricsServed).
func objectsNeedingAttention(t *testing.T, p *btrfs.Pool) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(btrfs.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "csi_thin_btrfs_objects_needing_attention" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pool" && l.GetValue() == p.MountPath() {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("csi_thin_btrfs_objects_needing_attention{pool=%q} is not registered", p.MountPath())
	return 0
}
