package reliability

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

const crashVolumeBytes = 64 * backend.MiB

// crashOp is one mutating CSI call that a crash may interrupt anywhere.
type crashOp struct {
	name   string
	method string // Controller method, for the crash-before-reply case
	// setup runs in a healthy driver before the faulted one, to make what
	// the call needs (the volume to delete, to expand...).
	setup func(t *testing.T, w *world, c *csiclient.Client, name string)
	// call is the CSI call; it must be idempotent by CSI's rules.
	call func(ctx context.Context, w *world, c *csiclient.Client, name string) error
	// done updates the model once the call succeeded and checks what it
	// made (data of clones, sizes of expansions).
	done func(t *testing.T, w *world, name string)
	// minSteps, when set, says that the call's number of commands varies
	// by design (a group snapshot retries when its members land in two
	// transactions) and that it always runs at least minSteps.
	minSteps int
	// group: a GroupController call, which the tool-failure suite's
	// in-process server does not serve.
	group bool
}

// world is the test's model of what must exist, and the data that must
// survive every crash.
type world struct {
	pool      *btrfs.Pool
	config    string
	dir       string
	volumes   map[string]bool
	snapshots map[string]bool // group members included
	groups    map[string]bool
	// sums are the checksums of the data in volumes and snapshots that
	// must never change.
	sums map[string]string
	// srcID is a volume with data, snapID a snapshot of it.
	srcID, snapID string
	// groupSources are the volumes of the crash tests' group snapshots.
	groupSources []string
}

// groupMembers returns the member snapshot IDs of group snapshot gid,
// one for each of w.groupSources.
func (w *world) groupMembers(gid string) []string {
	var ids []string
	for _, src := range w.groupSources {
		ids = append(ids, backend.MemberSnapshotID(gid, src))
	}
	return ids
}

// addGroup puts group gid and its members into the model and checks that
// each member holds its source's data.
func (w *world) addGroup(t *testing.T, gid string) {
	t.Helper()
	w.groups[gid] = true
	for i, mid := range w.groupMembers(gid) {
		w.snapshots[mid] = true
		if got := harness.TreeSum(t, snapshotDir(w.pool, mid)); got != w.sums[w.groupSources[i]] {
			t.Errorf("member %s of group %s holds different data than its source %s", mid, gid, w.groupSources[i])
		}
	}
}

func (w *world) removeGroup(gid string) {
	delete(w.groups, gid)
	for _, mid := range w.groupMembers(gid) {
		delete(w.snapshots, mid)
	}
}

func (w *world) start(t *testing.T, faults []command.Fault, crashReply string) *harness.Child {
	return harness.Start(t, harness.Options{Dir: w.dir, Config: w.config, Faults: faults, CrashReply: crashReply, Verbosity: 2})
}

func mustCreate(t *testing.T, c *csiclient.Client, name string) string {
	t.Helper()
	v, err := c.CreateVolume(context.Background(), name, crashVolumeBytes)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return v.GetVolumeId()
}

func crashOps() []crashOp {
	addVolume := func(t *testing.T, w *world, name string) string {
		id := backend.VolumeIDFor(name)
		w.volumes[id] = true
		return id
	}
	return []crashOp{
		{name: "create", method: "CreateVolume",
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CreateVolume(ctx, name, crashVolumeBytes)
				return err
			},
			done: func(t *testing.T, w *world, name string) { addVolume(t, w, name) },
		},
		{name: "clone", method: "CreateVolume",
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CloneVolume(ctx, name, w.srcID, crashVolumeBytes)
				return err
			},
			done: func(t *testing.T, w *world, name string) {
				id := addVolume(t, w, name)
				if got := harness.TreeSum(t, volumeDir(w.pool, id)); got != w.sums[w.srcID] {
					t.Errorf("clone %s holds different data than its source", id)
				}
			},
		},
		{name: "restore", method: "CreateVolume",
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.RestoreSnapshot(ctx, name, w.snapID, crashVolumeBytes)
				return err
			},
			done: func(t *testing.T, w *world, name string) {
				id := addVolume(t, w, name)
				if got := harness.TreeSum(t, volumeDir(w.pool, id)); got != w.sums[w.snapID] {
					t.Errorf("restore %s holds different data than its snapshot", id)
				}
			},
		},
		{name: "snapshot", method: "CreateSnapshot",
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.CreateSnapshot(ctx, name, w.srcID)
				return err
			},
			done: func(t *testing.T, w *world, name string) {
				id := backend.SnapshotIDFor(name)
				w.snapshots[id] = true
				if got := harness.TreeSum(t, snapshotDir(w.pool, id)); got != w.sums[w.srcID] {
					t.Errorf("snapshot %s holds different data than its source", id)
				}
			},
		},
		{name: "delete-volume", method: "DeleteVolume",
			setup: func(t *testing.T, w *world, c *csiclient.Client, name string) {
				w.volumes[mustCreate(t, c, name)] = true
			},
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				return c.DeleteVolume(ctx, backend.VolumeIDFor(name))
			},
			done: func(t *testing.T, w *world, name string) { delete(w.volumes, backend.VolumeIDFor(name)) },
		},
		{name: "delete-snapshot", method: "DeleteSnapshot",
			setup: func(t *testing.T, w *world, c *csiclient.Client, name string) {
				s, err := c.CreateSnapshot(context.Background(), name, w.srcID)
				if err != nil {
					t.Fatalf("snapshot %s: %v", name, err)
				}
				w.snapshots[s.GetSnapshotId()] = true
			},
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				return c.DeleteSnapshot(ctx, backend.SnapshotIDFor(name))
			},
			done: func(t *testing.T, w *world, name string) { delete(w.snapshots, backend.SnapshotIDFor(name)) },
		},
		// Each member's snapshot, the barrier's, the barrier's delete
		// and each member's read-only flag: 6 commands for 2 members.
		{name: "group-snapshot", method: "CreateVolumeGroupSnapshot", minSteps: 6, group: true,
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := createGroupSnapshot(ctx, c, name, w.groupSources)
				return err
			},
			done: func(t *testing.T, w *world, name string) { w.addGroup(t, backend.GroupSnapshotIDFor(name)) },
		},
		{name: "delete-group-snapshot", method: "DeleteVolumeGroupSnapshot", group: true,
			setup: func(t *testing.T, w *world, c *csiclient.Client, name string) {
				g, err := createGroupSnapshot(context.Background(), c, name, w.groupSources)
				if err != nil {
					t.Fatalf("group snapshot %s: %v", name, err)
				}
				w.addGroup(t, g.GetGroupSnapshotId())
			},
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				gid := backend.GroupSnapshotIDFor(name)
				return c.DeleteGroupSnapshot(ctx, gid, w.groupMembers(gid))
			},
			done: func(t *testing.T, w *world, name string) { w.removeGroup(backend.GroupSnapshotIDFor(name)) },
		},
		{name: "expand", method: "ControllerExpandVolume",
			setup: func(t *testing.T, w *world, c *csiclient.Client, name string) {
				w.volumes[mustCreate(t, c, name)] = true
			},
			call: func(ctx context.Context, w *world, c *csiclient.Client, name string) error {
				_, err := c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
					VolumeId:      backend.VolumeIDFor(name),
					CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * crashVolumeBytes},
				})
				return err
			},
			done: func(t *testing.T, w *world, name string) {
				id := backend.VolumeIDFor(name)
				if got := readRecord(t, w.pool, id).Volume.SizeBytes; got != 2*crashVolumeBytes {
					t.Errorf("expanded volume %s records %d bytes, want %d", id, got, 2*crashVolumeBytes)
				}
			},
		},
	}
}

// crashStats are the figures docs/reliability.md reports.
type crashStats struct {
	points, crashes, restarts int
}

// TestCrashAtEveryStep SIGKILLs the driver before and after each storage
// command of each mutating call (and once after the call succeeded but
// before the reply), restarts it on the same pool, retries the call and
// checks that it succeeds, that exactly the expected objects exist, that
// no data changed and that nothing leaked.
func TestCrashAtEveryStep(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	w := newWorld(t, pool)

	c := w.start(t, nil, "")
	w.seed(t, c.Client)
	c.Stop(t)

	var total crashStats
	start := time.Now()
	for _, op := range crashOps() {
		t.Run(op.name, func(t *testing.T) {
			s := runCrashOp(t, w, op)
			total.points += s.points
			total.crashes += s.crashes
			total.restarts += s.restarts
			t.Logf("%s: %d crash points, %d SIGKILLs survived", op.name, s.points, s.crashes)
		})
	}
	st := settledPool(t, pool)
	if len(st.StaleQgroups) > 0 {
		t.Errorf("qgroups outlived their subvolumes: %v", st.StaleQgroups)
	}
	t.Logf("crash suite: %d crash points, %d SIGKILLs, %d driver restarts in %s; stale qgroups at end: %d",
		total.points, total.crashes, total.restarts, time.Since(start).Round(time.Millisecond), len(st.StaleQgroups))
}

// seed makes the data every fault must leave intact: a canary nobody
// touches, and the source volume (and a snapshot of it) of clones,
// restores and snapshots.
func (w *world) seed(t *testing.T, c *csiclient.Client) {
	t.Helper()
	for _, name := range []string{"canary", "source"} {
		id := mustCreate(t, c, name)
		w.volumes[id] = true
		w.sums[id] = harness.WriteData(t, volumeDir(w.pool, id), name, 4, 1<<20)
	}
	w.srcID = backend.VolumeIDFor("source")
	w.groupSources = []string{backend.VolumeIDFor("canary"), w.srcID}
	snap, err := c.CreateSnapshot(context.Background(), "source-snap", w.srcID)
	if err != nil {
		t.Fatalf("snapshot source: %v", err)
	}
	w.snapID = snap.GetSnapshotId()
	w.snapshots[w.snapID] = true
	w.sums[w.snapID] = harness.TreeSum(t, snapshotDir(w.pool, w.snapID))
}

// createGroupSnapshot asks as the snapshotter does: Aborted (a btrfs group
// whose members kept landing in different transactions on a busy host)
// is asked again after a pause.
func createGroupSnapshot(ctx context.Context, c *csiclient.Client, name string, sources []string) (*csi.VolumeGroupSnapshot, error) {
	for tries := 1; ; tries++ {
		g, err := c.CreateGroupSnapshot(ctx, name, sources)
		if status.Code(err) != codes.Aborted || tries == 5 {
			return g, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func newWorld(t *testing.T, pool *btrfs.Pool) *world {
	return &world{pool: pool, config: childConfigOf(t, pool), dir: t.TempDir(),
		volumes: map[string]bool{}, snapshots: map[string]bool{}, groups: map[string]bool{}, sums: map[string]string{}}
}

func runCrashOp(t *testing.T, w *world, op crashOp) crashStats {
	var s crashStats
	n := 0
	point := func(faults []command.Fault, crashReply string) (crashed bool) {
		n++
		name := fmt.Sprintf("%s-%d", op.name, n)
		label := command.FormatFaults(faults) + crashReply
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if op.setup != nil {
			c := w.start(t, nil, "")
			op.setup(t, w, c.Client, name)
			c.Stop(t)
			s.restarts++
		}
		c := w.start(t, faults, crashReply)
		s.restarts++
		if err := op.call(ctx, w, c.Client, name); err == nil {
			c.Stop(t)
		} else if !c.WaitKilled(t) {
			t.Fatalf("%s at %s: call failed without a crash: %v\n%s", op.name, label, err, c.LogTail())
		} else {
			crashed = true
			s.crashes++
		}
		// Restart on the same pool and retry, twice: the first retry
		// completes the operation, the second proves it idempotent.
		c = w.start(t, nil, "")
		s.restarts++
		checkRecovered(t, w, label, name)
		c.RetryTwice(t, op.name+" after crash at "+label, func(cl *csiclient.Client) error { return op.call(ctx, w, cl, name) })
		op.done(t, w, name)
		checkWorld(t, w, c.Client, label)
		c.Stop(t)
		s.points++
		return crashed
	}
	if op.minSteps > 0 {
		harness.EveryCommandStepVarying(t, op.name, op.minSteps, func(faults []command.Fault) bool { return point(faults, "") })
	} else {
		harness.EveryCommandStep(t, op.name, func(faults []command.Fault) bool { return point(faults, "") })
	}
	if !point(nil, op.method) {
		t.Fatalf("%s: the crash before the reply did not fire", op.name)
	}
	return s
}

// checkRecovered runs after the restart and before any retry: startup
// recovery alone must have removed every half-made object and finished
// every committed delete, and left everything else alone. Whether the
// interrupted call's own object exists yet depends on where it died.
func checkRecovered(t *testing.T, w *world, label, name string) {
	t.Helper()
	checkRecoveredAll(t, w, label, []string{name})
}

// checkWorld compares the driver's view (CSI List calls), the pool's
// real layout and the data against the model.
func checkWorld(t *testing.T, w *world, c *csiclient.Client, label string) {
	t.Helper()
	ctx := context.Background()
	wantVols, wantSnaps := harness.SortedKeys(w.volumes), harness.SortedKeys(w.snapshots)

	vols, err := c.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatalf("[%s] list volumes: %v", label, err)
	}
	var gotVols []string
	for _, e := range vols.GetEntries() {
		gotVols = append(gotVols, e.GetVolume().GetVolumeId())
	}
	snaps, err := c.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatalf("[%s] list snapshots: %v", label, err)
	}
	var gotSnaps []string
	for _, e := range snaps.GetEntries() {
		gotSnaps = append(gotSnaps, e.GetSnapshot().GetSnapshotId())
	}
	sort.Strings(gotVols)
	sort.Strings(gotSnaps)
	if !reflect.DeepEqual(gotVols, wantVols) {
		t.Errorf("[%s] CSI lists volumes %v, want %v", label, gotVols, wantVols)
	}
	if !reflect.DeepEqual(gotSnaps, wantSnaps) {
		t.Errorf("[%s] CSI lists snapshots %v, want %v", label, gotSnaps, wantSnaps)
	}

	st := inspectPool(t, w.pool)
	if !reflect.DeepEqual(st.Volumes, wantVols) {
		t.Errorf("[%s] volume subvolumes %v, want %v", label, st.Volumes, wantVols)
	}
	if !reflect.DeepEqual(st.Snapshots, wantSnaps) {
		t.Errorf("[%s] snapshot subvolumes %v, want %v", label, st.Snapshots, wantSnaps)
	}
	if wantGroups := harness.SortedKeys(w.groups); !slices.Equal(st.Groups, wantGroups) {
		t.Errorf("[%s] group snapshot records %v, want %v", label, st.Groups, wantGroups)
	}
	if want := append(append([]string{}, wantSnaps...), wantVols...); !reflect.DeepEqual(st.Records, harness.Sorted(want)) {
		t.Errorf("[%s] records %v, want %v", label, st.Records, harness.Sorted(want))
	}
	for what, l := range map[string][]string{"staged": st.Staging, "leftover meta": st.Leftovers, "stray": st.Other, "writable snapshot": st.WritableSnapshots} {
		if len(l) > 0 {
			t.Errorf("[%s] %s entries left: %v", label, what, l)
		}
	}
	if st.PoolMounts != 1 || st.LoopDevices != 1 {
		t.Errorf("[%s] pool device has %d mounts and %d loop devices, want 1 and 1", label, st.PoolMounts, st.LoopDevices)
	}
	for _, id := range wantVols {
		if got, want := st.QgroupLimits[id], readRecord(t, w.pool, id).Volume.SizeBytes; got != want {
			t.Errorf("[%s] volume %s: qgroup limit %d, record says %d", label, id, got, want)
		}
	}
	for id, sum := range w.sums {
		dir := volumeDir(w.pool, id)
		if backend.IsSnapshotID(id) {
			dir = snapshotDir(w.pool, id)
		}
		if got := harness.TreeSum(t, dir); got != sum {
			t.Errorf("[%s] data of %s changed", label, id)
		}
	}
}
