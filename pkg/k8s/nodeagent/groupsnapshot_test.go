package nodeagent

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// groupPool adds group snapshots to fakePool: every member in one call,
// which is what the reconciler must use (never one CreateSnapshot per
// member). oneInstant is what its groups report.
type groupPool struct {
	*fakePool
	oneInstant bool
}

func (p groupPool) CreateGroupSnapshot(_ context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("CreateGroupSnapshot", req.ID); err != nil {
		return nil, err
	}
	g := &backend.GroupSnapshot{ID: req.ID, Name: req.Name, ReadyToUse: true, CreatedAt: time.Unix(1700000000, 0), OneInstant: p.oneInstant}
	for _, src := range req.SourceVolumeIDs {
		v, ok := p.vols[src]
		if !ok {
			return nil, backend.ErrNotFound
		}
		s := &backend.Snapshot{ID: backend.MemberSnapshotID(req.ID, src), SourceVolumeID: src, SizeBytes: v.SizeBytes, Node: p.node,
			ReadyToUse: true, GroupID: req.ID, GroupSize: len(req.SourceVolumeIDs)}
		p.snaps[s.ID] = s
		g.Snapshots = append(g.Snapshots, s)
	}
	return g, nil
}

func (p groupPool) DeleteGroupSnapshot(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("DeleteGroupSnapshot", id); err != nil {
		return err
	}
	for sid, s := range p.snaps {
		if s.GroupID == id {
			delete(p.snaps, sid)
		}
	}
	return nil
}

func (p groupPool) GetGroupSnapshot(context.Context, string) (*backend.GroupSnapshot, error) {
	return nil, backend.ErrUnsupported
}

// reconcileGroup runs a GroupSnapshotReconciler over pool once for group
// gid and returns it with the group as stored afterwards.
func reconcileGroup(e *env, pool groupPool, gid string) (*GroupSnapshotReconciler, *thinv1.ThinGroupSnapshot) {
	e.t.Helper()
	gr := &GroupSnapshotReconciler{Client: e.c, APIReader: e.c, Pool: pool, Groups: pool, Recorder: e.rec}
	key := types.NamespacedName{Name: gid}
	if _, err := gr.Reconcile(e.ctx, ctrl.Request{NamespacedName: key}); err != nil {
		e.t.Fatal(err)
	}
	g := &thinv1.ThinGroupSnapshot{}
	if err := e.c.Get(e.ctx, key, g); err != nil {
		e.t.Fatal(err)
	}
	return gr, g
}

func TestGroupSnapshotLifecycle(t *testing.T) {
	vol2 := backend.VolumeIDFor("two")
	gid := backend.GroupSnapshotIDFor("group")
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB), newVolume(vol2, "n1", 2*backend.GiB), &thinv1.ThinGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: gid, Generation: 1},
		Spec:       thinv1.ThinGroupSnapshotSpec{Node: "n1", Name: "group", SourceVolumeIDs: []string{vol1, vol2}},
	})
	e.reconcileVolume(vol1)
	e.reconcileVolume(vol2)
	pool := groupPool{fakePool: e.pool, oneInstant: true}
	gr, g := reconcileGroup(e, pool, gid)
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: gid}}
	if g.Status.Phase != thinv1.PhaseReady || !g.Status.ReadyToUse || len(g.Status.Members) != 2 || g.Status.CreationTime.Unix() != 1700000000 || !g.Status.OneInstant {
		t.Fatalf("status %+v", g.Status)
	}
	e.event("Created 2 snapshots taken at one instant on n1")

	// The member ThinSnapshots (the controller makes them once the group
	// is Ready) find their members; none is taken alone.
	for _, m := range g.Status.Members {
		ts := &thinv1.ThinSnapshot{ObjectMeta: metav1.ObjectMeta{Name: m.SnapshotID, Generation: 1},
			Spec: thinv1.ThinSnapshotSpec{Node: "n1", SourceVolumeID: m.SourceVolumeID, GroupID: gid}}
		if err := e.c.Create(e.ctx, ts); err != nil {
			t.Fatal(err)
		}
		if _, err := e.sr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: ts.Name}}); err != nil {
			t.Fatal(err)
		}
		if err := e.c.Get(e.ctx, client.ObjectKeyFromObject(ts), ts); err != nil {
			t.Fatal(err)
		}
		if ts.Status.Phase != thinv1.PhaseReady || ts.Status.SizeBytes != m.SizeBytes {
			t.Errorf("member %s: status %+v", ts.Name, ts.Status)
		}
	}
	// A member whose group was never taken is Failed, not taken alone.
	stray := &thinv1.ThinSnapshot{ObjectMeta: metav1.ObjectMeta{Name: backend.MemberSnapshotID(backend.GroupSnapshotIDFor("other"), vol1), Generation: 1},
		Spec: thinv1.ThinSnapshotSpec{Node: "n1", SourceVolumeID: vol1, GroupID: backend.GroupSnapshotIDFor("other")}}
	if err := e.c.Create(e.ctx, stray); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: stray.Name}}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Get(e.ctx, client.ObjectKeyFromObject(stray), stray); err != nil {
		t.Fatal(err)
	}
	if stray.Status.Phase != thinv1.PhaseFailed || stray.Status.Code != "NotFound" {
		t.Errorf("member of a group never taken: %+v, want Failed NotFound", stray.Status)
	}
	for _, c := range e.pool.calls {
		if c == "CreateSnapshot "+stray.Name || c == "CreateSnapshot "+g.Status.Members[0].SnapshotID {
			t.Errorf("the node took a group member alone: %v", e.pool.calls)
		}
	}

	// Reconciling a Ready group again takes nothing.
	calls := len(e.pool.calls)
	if _, err := gr.Reconcile(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	if len(e.pool.calls) != calls {
		t.Errorf("a Ready group was taken again: %v", e.pool.calls[calls:])
	}
	if err := e.c.Delete(e.ctx, g); err != nil {
		t.Fatal(err)
	}
	if _, err := gr.Reconcile(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Get(e.ctx, req.NamespacedName, g); !apierrors.IsNotFound(err) {
		t.Errorf("ThinGroupSnapshot still there: %v", err)
	}
	for id, s := range e.pool.snaps {
		if s.GroupID == gid {
			t.Errorf("member %s left in the pool", id)
		}
	}
}

// A group whose members were taken one after another (LVM on a kernel
// that refuses frozen snapshots, or freezing turned off) says so in its
// status and its Event: never "one instant".
func TestGroupSnapshotTakenInTurnSaysSo(t *testing.T) {
	vol2 := backend.VolumeIDFor("two")
	gid := backend.GroupSnapshotIDFor("in-turn")
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB), newVolume(vol2, "n1", backend.GiB), &thinv1.ThinGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: gid, Generation: 1},
		Spec:       thinv1.ThinGroupSnapshotSpec{Node: "n1", SourceVolumeIDs: []string{vol1, vol2}},
	})
	e.reconcileVolume(vol1)
	e.reconcileVolume(vol2)
	pool := groupPool{fakePool: e.pool}
	_, g := reconcileGroup(e, pool, gid)
	if g.Status.Phase != thinv1.PhaseReady || g.Status.OneInstant {
		t.Errorf("status %+v, want Ready and not OneInstant", g.Status)
	}
	e.event("Created 2 snapshots taken one after another on n1")
}

// A group the pool refuses is Failed with the pool's code and an Event.
func TestGroupSnapshotFailureRecordsCode(t *testing.T) {
	gid := backend.GroupSnapshotIDFor("missing")
	e := newEnv(t, &thinv1.ThinGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: gid, Generation: 1},
		Spec:       thinv1.ThinGroupSnapshotSpec{Node: "n1", SourceVolumeIDs: []string{vol1}},
	})
	pool := groupPool{fakePool: e.pool}
	_, g := reconcileGroup(e, pool, gid)
	if g.Status.Phase != thinv1.PhaseFailed || g.Status.Code != "NotFound" {
		t.Errorf("status %+v, want Failed NotFound", g.Status)
	}
	e.event("CreateFailed")
}

// A group marked Lost while its node was away is Ready again when the
// node comes back holding it, says StorageMissing when it had been taken
// and is not there, and is taken now when it never was (Resumed, then
// Ready with its members).
func TestLostGroupSnapshotRecovers(t *testing.T) {
	held, gone, never := backend.GroupSnapshotIDFor("held"), backend.GroupSnapshotIDFor("gone"), backend.GroupSnapshotIDFor("never")
	lost := func(id string, taken bool) *thinv1.ThinGroupSnapshot {
		g := &thinv1.ThinGroupSnapshot{ObjectMeta: metav1.ObjectMeta{Name: id, Generation: 1, Finalizers: []string{"csi-thin.io/node-cleanup"}},
			Spec:   thinv1.ThinGroupSnapshotSpec{Node: "n1", SourceVolumeIDs: []string{vol1}},
			Status: thinv1.ThinGroupSnapshotStatus{Phase: thinv1.PhaseLost}}
		if taken {
			at := metav1.Now()
			g.Status.CreationTime = &at
			g.Status.Members = []thinv1.GroupMember{{SnapshotID: backend.SnapshotIDFor(id + "-m"), SourceVolumeID: vol1}}
		}
		return g
	}
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB), lost(held, true), lost(gone, true), lost(never, false))
	e.reconcileVolume(vol1)
	pool := lookupGroupPool{groupPool{fakePool: e.pool}, map[string]bool{held: true}}
	gr := &GroupSnapshotReconciler{Client: e.c, APIReader: e.c, Pool: pool, Groups: pool, Recorder: e.rec}
	reconcile := func(id string) *thinv1.ThinGroupSnapshot {
		t.Helper()
		if _, err := gr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: id}}); err != nil {
			t.Fatal(err)
		}
		g := &thinv1.ThinGroupSnapshot{}
		if err := e.c.Get(e.ctx, client.ObjectKey{Name: id}, g); err != nil {
			t.Fatal(err)
		}
		return g
	}
	for _, tc := range []struct {
		id, reason string
		phase      thinv1.Phase
	}{
		{held, thinv1.ReasonRecovered, thinv1.PhaseReady},
		{gone, thinv1.ReasonStorageMissing, thinv1.PhaseLost},
		{never, thinv1.ReasonResumed, thinv1.PhasePending},
	} {
		g := reconcile(tc.id)
		c := apimeta.FindStatusCondition(g.Status.Conditions, thinv1.ConditionReady)
		if c == nil || c.Reason != tc.reason || g.Status.Phase != tc.phase {
			t.Errorf("%s: phase %s, condition %+v; want phase %s, reason %s", tc.id, g.Status.Phase, c, tc.phase, tc.reason)
		}
	}
	var taken []string
	for _, call := range e.pool.calls {
		if strings.HasPrefix(call, "CreateGroupSnapshot") {
			taken = append(taken, call)
		}
	}
	if len(taken) != 0 {
		t.Errorf("a lost group was taken while it was being recovered: %v", taken)
	}

	// The never-taken group's next reconcile (its status write requeues
	// it) takes it: Ready, with its member.
	g := reconcile(never)
	if g.Status.Phase != thinv1.PhaseReady || len(g.Status.Members) != 1 || g.Status.CreationTime == nil {
		t.Errorf("never-taken group after its node is back: phase %s, members %v; want Ready with 1 member", g.Status.Phase, g.Status.Members)
	}
	for _, id := range []string{held, gone} {
		if g := reconcile(id); id == gone && g.Status.Phase != thinv1.PhaseLost {
			t.Errorf("taken group not on its node: phase %s after another reconcile, want Lost", g.Status.Phase)
		}
	}
	taken = taken[:0]
	for _, call := range e.pool.calls {
		if strings.HasPrefix(call, "CreateGroupSnapshot") {
			taken = append(taken, call)
		}
	}
	if len(taken) != 1 || !strings.Contains(taken[0], never) {
		t.Errorf("groups taken: %v, want only the never-taken %s, once", taken, never)
	}
}

// lookupGroupPool answers GetGroupSnapshot for the groups it holds.
type lookupGroupPool struct {
	groupPool
	holds map[string]bool
}

func (p lookupGroupPool) GetGroupSnapshot(_ context.Context, id string) (*backend.GroupSnapshot, error) {
	if !p.holds[id] {
		return nil, backend.ErrNotFound
	}
	return &backend.GroupSnapshot{ID: id, ReadyToUse: true}, nil
}
