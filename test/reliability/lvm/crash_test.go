package lvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

const (
	volBytes  = 64 * backend.MiB
	dataBytes = 4 << 20
	tagOwned  = "csi-thin.io/owned"
	// A half-made LV carries a grow tag FROM:TO while its size is still
	// FROM (the lvextend that completes it has not run): see
	// pkg/lvmthin/tags.go.
	tagGrow = "csi-thin.io/grow="
)

type world struct {
	vg, config, dir string
	volumes         map[string]bool
	snapshots       map[string]bool
	sizes           map[string]int64  // LV → its size in bytes
	sums            map[string]string // LV → checksum of its first dataBytes
	srcID, snapID   string
}

// halfMade reports whether lv is an unfinished create, by the rule the
// driver applies, read independently from the raw tags.
func halfMade(lv lvRow) bool {
	for _, tg := range strings.Split(lv.Tags, ",") {
		if g, ok := strings.CutPrefix(tg, tagGrow); ok {
			if from, _, ok := strings.Cut(g, ":"); ok && from == lv.Size {
				return true
			}
		}
	}
	return false
}

func (w *world) start(t *testing.T, faults []command.Fault, crashReply string) *harness.Child {
	return harness.Start(t, harness.Options{Dir: w.dir, Config: w.config, Faults: faults, CrashReply: crashReply, Verbosity: 2})
}

// device activates an LV unless it is active (snapshots are created with
// activation skip, clones inactive) and returns its device node. An LV
// stays active across driver restarts, so each is activated once, not at
// every checksum: an lvchange is slow, as every LVM command is.
func (w *world) device(t *testing.T, lv string) string {
	dev := "/dev/" + w.vg + "/" + lv
	if fi, err := os.Stat(dev); err == nil && fi.Mode()&os.ModeDevice != 0 {
		return dev
	}
	lvm(t, "lvchange", "-ay", "-K", w.vg+"/"+lv)
	return dev
}

func (w *world) writeData(t *testing.T, lv, seed string) {
	buf := make([]byte, dataBytes)
	block := sha256.Sum256([]byte(seed))
	for i := 0; i < len(buf); i += len(block) {
		block = sha256.Sum256(block[:])
		copy(buf[i:], block[:])
	}
	f, err := os.OpenFile(w.device(t, lv), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	w.sums[lv] = w.sum(t, lv)
}

func (w *world) sum(t *testing.T, lv string) string {
	f, err := os.Open(w.device(t, lv))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, dataBytes); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type crashOp struct {
	name, method string
	setup        func(t *testing.T, w *world, c *csiclient.Client, name string)
	call         func(ctx context.Context, w *world, c *csiclient.Client, name string) error
	done         func(t *testing.T, w *world, name string)
}

func crashOps() []crashOp {
	created := func(t *testing.T, w *world, name string) {
		id := backend.VolumeIDFor(name)
		w.volumes[id], w.sizes[id] = true, volBytes
	}
	copyOf := func(src func(w *world) string, size int64) func(t *testing.T, w *world, name string) {
		return func(t *testing.T, w *world, name string) {
			id := backend.VolumeIDFor(name)
			w.volumes[id], w.sizes[id] = true, size
			if w.sum(t, id) != w.sums[src(w)] {
				t.Errorf("%s holds different data than its source", id)
			}
		}
	}
	makeVolume := func(t *testing.T, w *world, c *csiclient.Client, name string) {
		v, err := c.CreateVolume(context.Background(), name, volBytes)
		if err != nil {
			t.Fatal(err)
		}
		w.volumes[v.GetVolumeId()], w.sizes[v.GetVolumeId()] = true, volBytes
	}
	return []crashOp{
		{name: "create", method: "CreateVolume", done: created,
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CreateVolume(ctx, name, volBytes)
				return err
			}},
		// A clone at its source's size is one lvcreate, like a new volume.
		{name: "clone-same-size", method: "CreateVolume", done: copyOf(func(w *world) string { return w.srcID }, volBytes),
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CloneVolume(ctx, name, w.srcID, volBytes)
				return err
			}},
		// Clones and restores grown past their source take two steps: an
		// lvcreate that records the growth, and the lvextend that
		// completes it.
		{name: "clone", method: "CreateVolume", done: copyOf(func(w *world) string { return w.srcID }, 2*volBytes),
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CloneVolume(ctx, name, w.srcID, 2*volBytes)
				return err
			}},
		{name: "restore", method: "CreateVolume", done: copyOf(func(w *world) string { return w.snapID }, 2*volBytes),
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.RestoreSnapshot(ctx, name, w.snapID, 2*volBytes)
				return err
			}},
		{name: "snapshot", method: "CreateSnapshot",
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CreateSnapshot(ctx, name, w.srcID)
				return err
			},
			done: func(t *testing.T, w *world, name string) {
				id := backend.SnapshotIDFor(name)
				w.snapshots[id], w.sizes[id] = true, volBytes
				if w.sum(t, id) != w.sums[w.srcID] {
					t.Errorf("snapshot %s holds different data than its source", id)
				}
			}},
		{name: "delete-volume", method: "DeleteVolume", setup: makeVolume,
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				return c.DeleteVolume(ctx, backend.VolumeIDFor(name))
			},
			done: func(t *testing.T, w *world, name string) { w.forget(backend.VolumeIDFor(name)) }},
		{name: "delete-snapshot", method: "DeleteSnapshot",
			setup: func(t *testing.T, w *world, c *csiclient.Client, name string) {
				s, err := c.CreateSnapshot(context.Background(), name, w.srcID)
				if err != nil {
					t.Fatal(err)
				}
				w.snapshots[s.GetSnapshotId()], w.sizes[s.GetSnapshotId()] = true, volBytes
			},
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				return c.DeleteSnapshot(ctx, backend.SnapshotIDFor(name))
			},
			done: func(t *testing.T, w *world, name string) { w.forget(backend.SnapshotIDFor(name)) }},
		{name: "expand", method: "ControllerExpandVolume", setup: makeVolume,
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
					VolumeId: backend.VolumeIDFor(name), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * volBytes}})
				return err
			},
			// checkWorld compares every LV's size with the model.
			done: func(t *testing.T, w *world, name string) { w.sizes[backend.VolumeIDFor(name)] = 2 * volBytes }},
	}
}

func (w *world) forget(id string) {
	delete(w.volumes, id)
	delete(w.snapshots, id)
	delete(w.sizes, id)
}

// TestCrashAtEveryStepLVM is TestCrashAtEveryStep of the btrfs suite on a
// dm-thin pool: SIGKILL before and after every lvm command of every
// mutating call and before each reply, restart, retry twice, and check
// the LVs (by name and tag), their sizes and the data in them.
func TestCrashAtEveryStepLVM(t *testing.T) {
	_, cfg := newPool(t, "csithin_crash", 2*backend.GiB, nil)
	w := &world{vg: cfg.VG, config: childConfig(t, cfg), dir: t.TempDir(),
		volumes: map[string]bool{}, snapshots: map[string]bool{}, sizes: map[string]int64{}, sums: map[string]string{}}
	c := w.start(t, nil, "")
	for _, name := range []string{"canary", "source"} {
		v, err := c.CreateVolume(context.Background(), name, volBytes)
		if err != nil {
			t.Fatal(err)
		}
		w.volumes[v.GetVolumeId()], w.sizes[v.GetVolumeId()] = true, volBytes
		w.writeData(t, v.GetVolumeId(), name)
	}
	w.srcID = backend.VolumeIDFor("source")
	s, err := c.CreateSnapshot(context.Background(), "source-snap", w.srcID)
	if err != nil {
		t.Fatal(err)
	}
	w.snapID = s.GetSnapshotId()
	w.snapshots[w.snapID], w.sizes[w.snapID] = true, volBytes
	w.sums[w.snapID] = w.sum(t, w.snapID)
	c.Stop(t)

	start := time.Now()
	points, crashes := 0, 0
	for _, op := range crashOps() {
		t.Run(op.name, func(t *testing.T) {
			opStart := time.Now()
			p, k := runCrashOp(t, w, op)
			points += p
			crashes += k
			t.Logf("%s: %d crash points, %d SIGKILLs survived, %s", op.name, p, k, time.Since(opStart).Round(time.Second))
		})
	}
	t.Logf("lvm crash suite: %d crash points, %d SIGKILLs in %s", points, crashes, time.Since(start).Round(time.Second))
}

// runCrashOp keeps one healthy child between crash points (it verifies
// one point and sets up the next): in the TCG VM a driver start costs
// seconds.
func runCrashOp(t *testing.T, w *world, op crashOp) (points, crashes int) {
	n := 0
	clean := w.start(t, nil, "")
	defer func() { clean.Stop(t) }()
	point := func(faults []command.Fault, crashReply string) bool {
		n++
		name := fmt.Sprintf("%s-%d", op.name, n)
		label := command.FormatFaults(faults) + crashReply
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if op.setup != nil {
			op.setup(t, w, clean.Client, name)
		}
		clean.Stop(t)
		crashed := false
		c := w.start(t, faults, crashReply)
		if err := op.call(ctx, w, c.Client, name); err == nil {
			c.Stop(t)
		} else if !c.WaitKilled(t) {
			t.Fatalf("%s at %s: failed without a crash: %v\n%s", op.name, label, err, c.LogTail())
		} else {
			crashed = true
			crashes++
		}
		clean = w.start(t, nil, "")
		for _, lv := range listLVs(t, w.vg) {
			if halfMade(lv) {
				t.Errorf("[%s] after restart, before retry: half-made LV %s (%s bytes, tags %s) left", label, lv.Name, lv.Size, lv.Tags)
			}
		}
		clean.RetryTwice(t, op.name+" after crash at "+label, func(c *csiclient.Client) error { return op.call(ctx, w, c, name) })
		op.done(t, w, name)
		checkWorld(t, w, clean.Client, label)
		points++
		return crashed
	}
	harness.EveryCommandStep(t, op.name, func(faults []command.Fault) bool { return point(faults, "") })
	if !point(nil, op.method) {
		t.Fatalf("%s: the crash before the reply did not fire", op.name)
	}
	return points, crashes
}

func checkWorld(t *testing.T, w *world, c *csiclient.Client, label string) {
	t.Helper()
	want := harness.Sorted(append(harness.SortedKeys(w.volumes), harness.SortedKeys(w.snapshots)...))
	var owned []string
	for _, lv := range listLVs(t, w.vg) {
		if halfMade(lv) {
			t.Errorf("[%s] half-made LV %s after retry", label, lv.Name)
		}
		// The pool carries the ownership tag too; volumes and snapshots
		// are the LVs named by an ID.
		if strings.Contains(lv.Tags, tagOwned) && (backend.IsVolumeID(lv.Name) || backend.IsSnapshotID(lv.Name)) {
			owned = append(owned, lv.Name)
			if want := strconv.FormatInt(w.sizes[lv.Name], 10); lv.Size != want {
				t.Errorf("[%s] %s is %s bytes, want %s", label, lv.Name, lv.Size, want)
			}
		}
	}
	if got := harness.Sorted(owned); !reflect.DeepEqual(got, want) {
		t.Errorf("[%s] LVs %v, want %v", label, got, want)
	}
	vols, err := c.Controller.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, e := range vols.GetEntries() {
		listed = append(listed, e.GetVolume().GetVolumeId())
	}
	if got := harness.Sorted(listed); !reflect.DeepEqual(got, harness.SortedKeys(w.volumes)) {
		t.Errorf("[%s] CSI lists %v, want %v", label, got, harness.SortedKeys(w.volumes))
	}
	for lv, sum := range w.sums {
		if w.sum(t, lv) != sum {
			t.Errorf("[%s] data of %s changed", label, lv)
		}
	}
}
