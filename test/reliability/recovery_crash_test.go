package reliability

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// interruption is a mutating call SIGKILLed at a chosen step, and what
// that leaves for startup recovery.
type interruption struct {
	op    string // a crashOps() entry
	fault command.Fault
	// What the crash leaves, checked before recovery runs, so that a
	// change in how a call is built cannot quietly empty the test.
	staged, marker, writable bool
	// mutating is how many storage commands recovery needs to finish or
	// undo it: one per staged subvolume, leftover subvolume of a delete
	// and read-only flag to set.
	mutating int
}

// interruptions leave, between them, everything startup recovery acts
// on. One driver serialises its mutations, so a single crash leaves one
// of these; recovery handles each entry on its own and must cope with any
// mix, and the mix puts every kind of recovery step, in an order set by
// the IDs, into one run.
var interruptions = []interruption{
	// Each crash is placed by the command it falls before or after, not
	// by position, so that a call that runs one command less (as create
	// did when its tree-id lookup became an ioctl) still leaves the same.
	{op: "create", fault: after("btrfs qgroup limit"), staged: true, mutating: 1},
	{op: "clone", fault: after("btrfs subvolume snapshot"), staged: true, mutating: 1},
	{op: "restore", fault: before("btrfs qgroup limit"), staged: true, mutating: 1},
	{op: "snapshot", fault: after("btrfs subvolume snapshot"), staged: true, mutating: 1},
	{op: "snapshot", fault: before("btrfs property set"), writable: true, mutating: 1}, // committed, not yet read-only
	{op: "delete-volume", fault: before("btrfs subvolume delete"), marker: true, mutating: 1},
	{op: "delete-volume", fault: after("btrfs subvolume delete"), marker: true}, // subvolume already gone
	{op: "delete-snapshot", fault: before("btrfs subvolume delete"), marker: true, mutating: 1},
	{op: "expand", fault: after("btrfs qgroup limit")}, // record still at the old size
}

func before(cmd string) command.Fault {
	return command.Fault{Kind: command.FaultCrashBefore, Nth: 1, Match: cmd}
}

func after(cmd string) command.Fault {
	return command.Fault{Kind: command.FaultCrashAfter, Nth: 1, Match: cmd}
}

// recoveryCrash runs the points of TestCrashDuringRecovery.
type recoveryCrash struct {
	w    *world
	ops  map[string]crashOp
	dirs []string // one per interruption: each gets its own driver
	n    int
	// kills counts SIGKILLs during recovery; interrupts those that made
	// the half-made state.
	points, kills, interrupts, restarts int
}

// TestCrashDuringRecovery SIGKILLs the driver at every step of startup
// recovery while it cleans up after nine interrupted calls (staged
// subvolumes of a create, clone, restore and snapshot, a snapshot left
// writable, delete markers with and without their subvolume, an expand
// whose record lags its limit), restarts it, and checks that recovery
// finishes, that it left the pool consistent with nothing leaked and no
// data changed, and that every interrupted call then succeeds when
// retried. A last point kills the driver after every mutating step of
// recovery, restart after restart, to show that no kill loses progress.
func TestCrashDuringRecovery(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	r := &recoveryCrash{w: newWorld(t, pool), ops: map[string]crashOp{}}
	for _, op := range crashOps() {
		r.ops[op.name] = op
	}
	for range interruptions {
		r.dirs = append(r.dirs, t.TempDir())
	}
	c := r.w.start(t, nil, "")
	r.w.seed(t, c.Client)
	c.Stop(t)

	start := time.Now()
	harness.EveryCommandStep(t, "recovery", func(faults []command.Fault) bool { return r.point(t, faults, false) })
	before := r.kills
	r.point(t, []command.Fault{after("btrfs subvolume delete"), after("btrfs property set")}, true)
	want := 0
	for _, in := range interruptions {
		want += in.mutating
	}
	if got := r.kills - before; got != want {
		t.Errorf("killed after each mutating step, recovery needed %d restarts to finish, want %d (one per mutating step)", got, want)
	}

	st := settledPool(t, pool)
	if len(st.StaleQgroups) > 0 {
		t.Errorf("qgroups outlived their subvolumes: %v", st.StaleQgroups)
	}
	t.Logf("recovery crash: %d crash points, %d SIGKILLs during recovery (plus %d to interrupt calls), %d driver starts in %s; stale qgroups at end: %d",
		r.points, r.kills, r.interrupts, r.restarts, time.Since(start).Round(time.Millisecond), len(st.StaleQgroups))
}

// point makes the half-made state, starts drivers whose recovery meets
// the faults (once, or until one finishes if relentless), then restarts
// cleanly, checks and retries. It reports whether recovery was killed.
func (r *recoveryCrash) point(t *testing.T, faults []command.Fault, relentless bool) bool {
	t.Helper()
	w := r.w
	r.n++
	label := "recovery " + command.FormatFaults(faults)
	if relentless {
		label += " (every restart)"
	}
	names := r.interrupt(t, label)

	killed := 0
	for {
		c, dead := harness.StartMayCrash(t, harness.Options{Dir: w.dir, Config: w.config, RecoveryFaults: faults, Verbosity: 2})
		r.restarts++
		if !dead {
			c.Stop(t)
			break
		}
		killed++
		if !relentless {
			break
		}
		if killed > 100 {
			t.Fatalf("[%s] recovery still unfinished after %d restarts", label, killed)
		}
	}
	r.kills += killed

	c := w.start(t, nil, "")
	r.restarts++
	checkRecoveredAll(t, w, label, names)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, in := range interruptions {
		op := r.ops[in.op]
		c.RetryTwice(t, label+": "+in.op+" "+names[i]+" after recovery", func(cl *csiclient.Client) error { return op.call(ctx, w, cl, names[i]) })
		op.done(t, w, names[i])
	}
	checkWorld(t, w, c.Client, label)
	r.forget(t, c.Client, names)
	c.Stop(t)
	r.points++
	return killed > 0
}

// interrupt makes what the interruptions need with a healthy driver, then
// starts one driver per interruption, all before the first crash so that
// no recovery runs in between, and kills each in its call. It returns the
// CSI names used.
func (r *recoveryCrash) interrupt(t *testing.T, label string) []string {
	t.Helper()
	w := r.w
	names := make([]string, len(interruptions))
	c := w.start(t, nil, "")
	r.restarts++
	for i, in := range interruptions {
		names[i] = fmt.Sprintf("rec%d-%d-%s", r.n, i, in.op)
		if op := r.ops[in.op]; op.setup != nil {
			op.setup(t, w, c.Client, names[i])
		}
	}
	c.Stop(t)
	opts := make([]harness.Options, len(interruptions))
	for i, in := range interruptions {
		opts[i] = harness.Options{Dir: r.dirs[i], Config: w.config, Faults: []command.Fault{in.fault}, Verbosity: 2}
	}
	children := harness.StartAll(t, opts)
	r.restarts += len(children)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, in := range interruptions {
		err := r.ops[in.op].call(ctx, w, children[i].Client, names[i])
		if err == nil || !children[i].WaitKilled(t) {
			t.Fatalf("[%s] %s at %s did not crash (err %v)\n%s", label, in.op, command.FormatFaults([]command.Fault{in.fault}), err, children[i].LogTail())
		}
		r.interrupts++
	}
	var staged, markers, writable int
	for _, in := range interruptions {
		staged += b2i(in.staged)
		markers += b2i(in.marker)
		writable += b2i(in.writable)
	}
	st := inspectPool(t, w.pool)
	if len(st.Staging) != staged || len(st.Leftovers) != markers || len(st.WritableSnapshots) != writable {
		t.Fatalf("[%s] the interrupted calls left %d staged, %d markers, %d writable snapshots; want %d, %d, %d",
			label, len(st.Staging), len(st.Leftovers), len(st.WritableSnapshots), staged, markers, writable)
	}
	return names
}

// forget deletes what the retried calls made, so that the next point's
// recovery has the same work and the model stays small.
func (r *recoveryCrash) forget(t *testing.T, c *csiclient.Client, names []string) {
	t.Helper()
	ctx := context.Background()
	for _, name := range names {
		if id := backend.SnapshotIDFor(name); r.w.snapshots[id] {
			if err := c.DeleteSnapshot(ctx, id); err != nil {
				t.Fatalf("clean up %s: %v", name, err)
			}
			delete(r.w.snapshots, id)
		}
		if id := backend.VolumeIDFor(name); r.w.volumes[id] {
			if err := c.DeleteVolume(ctx, id); err != nil {
				t.Fatalf("clean up %s: %v", name, err)
			}
			delete(r.w.volumes, id)
		}
	}
}

// checkRecoveredAll is checkRecovered for several interrupted calls: after
// the restart, before any retry, recovery alone must have removed every
// half-made object, finished every committed delete and left everything
// else alone.
func checkRecoveredAll(t *testing.T, w *world, label string, names []string) {
	t.Helper()
	st := inspectPool(t, w.pool)
	for what, l := range map[string][]string{"staged": st.Staging, "leftover meta": st.Leftovers, "stray": st.Other, "writable snapshot": st.WritableSnapshots} {
		if len(l) > 0 {
			t.Errorf("[%s] after restart, before retry: %s entries left: %v", label, what, l)
		}
	}
	onDisk := harness.Sorted(append(append([]string{}, st.Volumes...), st.Snapshots...))
	if !reflect.DeepEqual(onDisk, st.Records) {
		t.Errorf("[%s] after restart: subvolumes %v do not match records %v", label, onDisk, st.Records)
	}
	target := map[string]bool{}
	for _, name := range names {
		target[backend.VolumeIDFor(name)] = true
		target[backend.SnapshotIDFor(name)] = true
		gid := backend.GroupSnapshotIDFor(name)
		target[gid] = true
		for _, mid := range w.groupMembers(gid) {
			target[mid] = true
		}
	}
	var want, got []string
	for _, id := range append(harness.SortedKeys(w.volumes), harness.SortedKeys(w.snapshots)...) {
		if !target[id] {
			want = append(want, id)
		}
	}
	for _, id := range st.Records {
		if !target[id] {
			got = append(got, id)
		}
	}
	if !reflect.DeepEqual(harness.Sorted(got), harness.Sorted(want)) {
		t.Errorf("[%s] after restart: objects %v, want %v (besides the interrupted calls' own)", label, got, harness.Sorted(want))
	}
	// A group's record is written after its members, so a group recovery
	// kept has every member (the check above), and one it removed has none.
	var wantGroups, gotGroups []string
	for _, id := range harness.SortedKeys(w.groups) {
		if !target[id] {
			wantGroups = append(wantGroups, id)
		}
	}
	for _, id := range st.Groups {
		if !target[id] {
			gotGroups = append(gotGroups, id)
		}
	}
	if !slices.Equal(gotGroups, wantGroups) {
		t.Errorf("[%s] after restart: group snapshots %v, want %v (besides the interrupted calls' own)", label, gotGroups, wantGroups)
	}
	for _, name := range names {
		gid := backend.GroupSnapshotIDFor(name)
		members := 0
		for _, mid := range w.groupMembers(gid) {
			if slices.Contains(st.Records, mid) {
				members++
			}
		}
		if kept := slices.Contains(st.Groups, gid); (kept && members != len(w.groupSources)) || (!kept && members != 0) {
			t.Errorf("[%s] after restart: group %s kept=%v with %d of its %d members: recovery keeps a group whole or removes it whole", label, gid, kept, members, len(w.groupSources))
		}
	}
}

// settledPool waits for btrfs' cleaner to drop every deleted subvolume,
// then inspects the pool: only then may a qgroup of a deleted subvolume
// be called stale.
func settledPool(t testing.TB, pool *btrfs.Pool) poolState {
	t.Helper()
	if _, err := host.Run(context.Background(), "btrfs", "subvolume", "sync", pool.MountPath()); err != nil {
		t.Fatalf("wait for the cleaner: %v", err)
	}
	// The cleaner has dropped every deleted subvolume: each deleted
	// volume's level-1 qgroup must go now, not wait for the next delete.
	if p := pool.PendingQgroups(); len(p) > 0 {
		t.Errorf("level-1 qgroups of deleted volumes still there after the cleaner finished: %v", p)
	}
	return inspectPool(t, pool)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
