package nodeagent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// fakePool is an in-memory backend.Local whose next errors a test scripts.
type fakePool struct {
	mu      sync.Mutex
	node    string
	vols    map[string]*backend.Volume
	snaps   map[string]*backend.Snapshot
	failOn  map[string]error // method name -> error
	calls   []string
	healthy bool
}

func newFakePool(node string) *fakePool {
	return &fakePool{node: node, vols: map[string]*backend.Volume{}, snaps: map[string]*backend.Snapshot{}, failOn: map[string]error{}, healthy: true}
}

func (p *fakePool) record(method, id string) error {
	p.calls = append(p.calls, method+" "+id)
	return p.failOn[method]
}

func (p *fakePool) Kind() string     { return "fake" }
func (p *fakePool) NodeName() string { return p.node }
func (p *fakePool) Health(context.Context) backend.Health {
	return backend.Health{Healthy: p.healthy, Message: "fake"}
}
func (p *fakePool) Capacity(context.Context, string) (backend.Capacity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var prov int64
	for _, v := range p.vols {
		prov += v.SizeBytes
	}
	return backend.Capacity{TotalBytes: 10 * backend.GiB, UsedBytes: backend.GiB, ProvisionedBytes: prov,
		AvailableBytes: 10*backend.GiB - prov, MaximumVolumeBytes: 10 * backend.GiB, DataPercent: 10.004, MetadataPercent: 1.5}, nil
}
func (p *fakePool) CreateVolume(_ context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("CreateVolume", req.ID); err != nil {
		return nil, err
	}
	size, _ := backend.RoundUp(req.RequiredBytes, backend.MiB)
	v := &backend.Volume{ID: req.ID, SizeBytes: size, Node: p.node, Source: req.Source}
	p.vols[req.ID] = v
	return v, nil
}
func (p *fakePool) DeleteVolume(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("DeleteVolume", id); err != nil {
		return err
	}
	delete(p.vols, id)
	return nil
}
func (p *fakePool) GetVolume(_ context.Context, id string) (*backend.Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.vols[id]; ok {
		return v, nil
	}
	return nil, backend.ErrNotFound
}
func (p *fakePool) ListVolumes(context.Context) ([]*backend.Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*backend.Volume
	for _, v := range p.vols {
		out = append(out, v)
	}
	return out, nil
}
func (p *fakePool) ExpandVolume(_ context.Context, id string, size int64) (*backend.Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("ExpandVolume", id); err != nil {
		return nil, err
	}
	v, ok := p.vols[id]
	if !ok {
		return nil, backend.ErrNotFound
	}
	v.SizeBytes = max(v.SizeBytes, size)
	return v, nil
}
func (p *fakePool) CreateSnapshot(_ context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("CreateSnapshot", req.ID); err != nil {
		return nil, err
	}
	v, ok := p.vols[req.SourceVolumeID]
	if !ok {
		return nil, fmt.Errorf("source %s: %w", req.SourceVolumeID, backend.ErrNotFound)
	}
	s := &backend.Snapshot{ID: req.ID, SourceVolumeID: v.ID, SizeBytes: v.SizeBytes, Node: p.node, ReadyToUse: true, CreatedAt: time.Unix(1700000000, 0)}
	p.snaps[req.ID] = s
	return s, nil
}
func (p *fakePool) DeleteSnapshot(_ context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.record("DeleteSnapshot", id); err != nil {
		return err
	}
	delete(p.snaps, id)
	return nil
}
func (p *fakePool) GetSnapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.snaps[id]; ok {
		return s, nil
	}
	return nil, backend.ErrNotFound
}
func (p *fakePool) ListSnapshots(context.Context) ([]*backend.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []*backend.Snapshot{}
	for _, s := range p.snaps {
		out = append(out, s)
	}
	return out, nil
}
func (p *fakePool) Target(context.Context, string) (backend.Target, error) {
	return backend.Target{}, backend.ErrUnsupported
}
func (p *fakePool) Usage(context.Context, string) (backend.Usage, error) {
	return backend.Usage{}, backend.ErrUnsupported
}

var _ backend.Local = (*fakePool)(nil)

type env struct {
	t       *testing.T
	ctx     context.Context
	c       client.Client
	pool    *fakePool
	rec     *events.FakeRecorder
	vr      *VolumeReconciler
	sr      *SnapshotReconciler
	changes int
}

func newEnv(t *testing.T, objs ...client.Object) *env {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: context.Background(), pool: newFakePool("n1"), rec: events.NewFakeRecorder(100)}
	e.c = fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinGroupSnapshot{}, &thinv1.ThinNode{}).Build()
	changed := func() { e.changes++ }
	e.vr = &VolumeReconciler{Client: e.c, APIReader: e.c, Pool: e.pool, Recorder: e.rec, Changed: changed}
	e.sr = &SnapshotReconciler{Client: e.c, APIReader: e.c, Pool: e.pool, Recorder: e.rec, Changed: changed}
	return e
}

func (e *env) reconcileVolume(name string) ctrl.Result {
	e.t.Helper()
	res, err := e.vr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: name}})
	if err != nil {
		e.t.Fatalf("reconcile %s: %v", name, err)
	}
	return res
}

func (e *env) volume(name string) *thinv1.ThinVolume {
	e.t.Helper()
	tv := &thinv1.ThinVolume{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: name}, tv); err != nil {
		e.t.Fatalf("get %s: %v", name, err)
	}
	return tv
}

func (e *env) event(substr string) {
	e.t.Helper()
	for {
		select {
		case ev := <-e.rec.Events:
			if strings.Contains(ev, substr) {
				return
			}
		default:
			e.t.Errorf("no event containing %q", substr)
			return
		}
	}
}

var (
	vol1  = backend.VolumeIDFor("one")
	snap1 = backend.SnapshotIDFor("one")
)

func newVolume(name, node string, size int64) *thinv1.ThinVolume {
	return &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), Generation: 1},
		Spec:       thinv1.ThinVolumeSpec{Node: node, RequiredBytes: size, AccessType: thinv1.AccessMount},
	}
}

func TestVolumeCreate(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB+1))
	e.reconcileVolume(vol1)
	tv := e.volume(vol1)
	if tv.Status.Phase != thinv1.PhaseReady || tv.Status.SizeBytes != backend.GiB+backend.MiB || tv.Status.Code != "OK" {
		t.Errorf("status %+v", tv.Status)
	}
	if len(tv.Finalizers) != 1 || tv.Finalizers[0] != wellknown.FinalizerNodeCleanup {
		t.Errorf("finalizers %v", tv.Finalizers)
	}
	if c := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Ready condition %+v", c)
	}
	e.event("Created")
	if e.changes != 1 {
		t.Errorf("pool changes reported %d, want 1", e.changes)
	}
	// A second pass (e.g. after an agent restart) does not create again.
	e.reconcileVolume(vol1)
	if n := len(e.pool.calls); n != 1 {
		t.Errorf("backend calls %v", e.pool.calls)
	}
}

func TestVolumeCreateFailureRecordsCode(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	e.pool.failOn["CreateVolume"] = fmt.Errorf("pool 96%% full: %w", backend.ErrNoSpace)
	e.reconcileVolume(vol1)
	tv := e.volume(vol1)
	if tv.Status.Phase != thinv1.PhaseFailed || tv.Status.Code != "ResourceExhausted" || !strings.Contains(tv.Status.Message, "96% full") {
		t.Errorf("status %+v", tv.Status)
	}
	e.event("CreateFailed")
	// Failed stays failed: the controller deletes it, the agent does not retry.
	e.reconcileVolume(vol1)
	if n := len(e.pool.calls); n != 1 {
		t.Errorf("backend calls %v", e.pool.calls)
	}
}

func TestVolumeOfOtherNodeIsIgnored(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n2", backend.GiB))
	e.reconcileVolume(vol1)
	if len(e.pool.calls) != 0 || len(e.volume(vol1).Finalizers) != 0 {
		t.Errorf("touched another node's volume: %v", e.pool.calls)
	}
	if onNode("n1").Create(eventFor(newVolume(vol1, "n2", 1))) {
		t.Error("predicate lets another node's volume through")
	}
}

func TestVolumeExpand(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	e.reconcileVolume(vol1)
	tv := e.volume(vol1)
	tv.Spec.RequiredBytes = 3 * backend.GiB
	tv.Generation = 2 // the fake client does not bump generations
	if err := e.c.Update(e.ctx, tv); err != nil {
		t.Fatal(err)
	}
	e.reconcileVolume(vol1)
	tv = e.volume(vol1)
	if tv.Status.SizeBytes != 3*backend.GiB || tv.Status.ObservedGeneration != 2 || tv.Status.Code != "OK" {
		t.Errorf("status %+v", tv.Status)
	}
	e.event("Expanded")

	// A refused expansion keeps the volume Ready, records the code and
	// comes back later.
	e.pool.failOn["ExpandVolume"] = fmt.Errorf("too big: %w", backend.ErrOutOfRange)
	tv.Spec.RequiredBytes = 100 * backend.GiB
	tv.Generation = 3
	if err := e.c.Update(e.ctx, tv); err != nil {
		t.Fatal(err)
	}
	res := e.reconcileVolume(vol1)
	tv = e.volume(vol1)
	if tv.Status.Phase != thinv1.PhaseReady || tv.Status.Code != "OutOfRange" || tv.Status.ObservedGeneration != 3 || res.RequeueAfter == 0 {
		t.Errorf("status %+v, result %+v", tv.Status, res)
	}
}

func TestVolumeDelete(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	e.reconcileVolume(vol1)
	if err := e.c.Delete(e.ctx, e.volume(vol1)); err != nil {
		t.Fatal(err)
	}
	// The storage cannot go yet: the resource stays, with the reason.
	e.pool.failOn["DeleteVolume"] = fmt.Errorf("device busy: %w", backend.ErrBusy)
	if _, err := e.vr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: vol1}}); err == nil {
		t.Fatal("want an error (retry with backoff)")
	}
	tv := e.volume(vol1)
	c := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionReady)
	if tv.Status.Code != "Aborted" || c == nil || c.Reason != thinv1.ReasonDeleteFailed {
		t.Errorf("status %+v", tv.Status)
	}
	delete(e.pool.failOn, "DeleteVolume")
	e.reconcileVolume(vol1)
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: vol1}, &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
		t.Errorf("ThinVolume still there: %v", err)
	}
	if _, ok := e.pool.vols[vol1]; ok {
		t.Error("volume left in the pool")
	}
}

func TestSnapshotLifecycle(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB), &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: snap1},
		Spec:       thinv1.ThinSnapshotSpec{Node: "n1", SourceVolumeID: vol1},
	})
	e.reconcileVolume(vol1)
	req := ctrl.Request{NamespacedName: types.NamespacedName{Name: snap1}}
	if _, err := e.sr.Reconcile(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	ts := &thinv1.ThinSnapshot{}
	if err := e.c.Get(e.ctx, req.NamespacedName, ts); err != nil {
		t.Fatal(err)
	}
	if ts.Status.Phase != thinv1.PhaseReady || !ts.Status.ReadyToUse || ts.Status.SizeBytes != backend.GiB ||
		ts.Status.CreationTime == nil || ts.Status.CreationTime.Unix() != 1700000000 {
		t.Errorf("status %+v", ts.Status)
	}
	if err := e.c.Delete(e.ctx, ts); err != nil {
		t.Fatal(err)
	}
	if _, err := e.sr.Reconcile(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Get(e.ctx, req.NamespacedName, ts); !apierrors.IsNotFound(err) {
		t.Errorf("ThinSnapshot still there: %v", err)
	}
	if len(e.pool.snaps) != 0 {
		t.Error("snapshot left in the pool")
	}
}

// TestLostSnapshotRecovers: as TestLostVolumeRecovers, for snapshots. A
// snapshot never taken is taken once its node is back; a member of a group
// never is (alone it would not be of the group's instant), nor one taken
// whose storage is gone.
func TestLostSnapshotRecovers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		taken      bool
		group      string
		wantPhase  thinv1.Phase
		wantReason string
	}{
		{"never taken", false, "", thinv1.PhaseReady, thinv1.ReasonCreated},
		{"taken, storage gone", true, "", thinv1.PhaseLost, thinv1.ReasonStorageMissing},
		{"member never taken", false, "group-1", thinv1.PhaseLost, thinv1.ReasonStorageMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := &thinv1.ThinSnapshot{
				ObjectMeta: metav1.ObjectMeta{Name: snap1, Generation: 1, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
				Spec:       thinv1.ThinSnapshotSpec{Node: "n1", SourceVolumeID: vol1, GroupID: tc.group},
				Status:     thinv1.ThinSnapshotStatus{Phase: thinv1.PhaseLost},
			}
			if tc.taken {
				ts.Status.CreationTime = &metav1.Time{Time: time.Unix(1700000000, 0)}
			}
			e := newEnv(t, newVolume(vol1, "n1", backend.GiB), ts)
			e.reconcileVolume(vol1)
			req := ctrl.Request{NamespacedName: types.NamespacedName{Name: snap1}}
			for range 2 { // recover, then (resumed) take
				if _, err := e.sr.Reconcile(e.ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			got := &thinv1.ThinSnapshot{}
			if err := e.c.Get(e.ctx, req.NamespacedName, got); err != nil {
				t.Fatal(err)
			}
			c := apimeta.FindStatusCondition(got.Status.Conditions, thinv1.ConditionReady)
			if got.Status.Phase != tc.wantPhase || c == nil || c.Reason != tc.wantReason {
				t.Errorf("status %+v; want phase %s, reason %s", got.Status, tc.wantPhase, tc.wantReason)
			}
			if _, taken := e.pool.snaps[snap1]; taken != (tc.wantPhase == thinv1.PhaseReady) {
				t.Errorf("snapshot in the pool: %v; want it only when Ready", taken)
			}
		})
	}
}

func TestNodeStatus(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-1"}}
	e := newEnv(t, node)
	e.pool.vols[vol1] = &backend.Volume{ID: vol1, SizeBytes: 2 * backend.GiB}
	var observed []thinv1.ThinNodeStatus
	ns := NewNodeStatus(e.c, e.c, e.pool, time.Minute, func(s thinv1.ThinNodeStatus) { observed = append(observed, s) })
	for range 2 { // create, then update
		if err := ns.Update(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	tn := &thinv1.ThinNode{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: "n1"}, tn); err != nil {
		t.Fatal(err)
	}
	s := tn.Status
	if s.Backend != "fake" || !s.Healthy || s.TotalBytes != 10*backend.GiB || s.ProvisionedBytes != 2*backend.GiB ||
		s.AvailableBytes != 8*backend.GiB || s.DataPercent != 10 || s.Overprovision != 0.2 || s.Volumes != 1 || s.UpdateTime == nil {
		t.Errorf("status %+v", s)
	}
	if len(tn.OwnerReferences) != 1 || tn.OwnerReferences[0].UID != "uid-1" {
		t.Errorf("owner %v", tn.OwnerReferences)
	}
	if len(observed) != 2 {
		t.Errorf("observed %d", len(observed))
	}
}

// TestStaleCacheDoesNotCreateTwice: right after the agent wrote Ready, its
// cache may still hold the Pending version (the one with the finalizer);
// the API server's answer wins.
func TestStaleCacheDoesNotCreateTwice(t *testing.T) {
	for _, routerSetFinalizer := range []bool{false, true} {
		tv := newVolume(vol1, "n1", backend.GiB)
		if routerSetFinalizer {
			tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
		}
		e := newEnv(t, tv)
		e.reconcileVolume(vol1) // Ready in e.c, the "API server"
		pending := newVolume(vol1, "n1", backend.GiB)
		pending.Finalizers = []string{wellknown.FinalizerNodeCleanup}
		e.vr.Client = newEnv(t, pending).c // the agent's cache is behind
		e.reconcileVolume(vol1)
		if n := len(e.pool.calls); n != 1 {
			t.Errorf("finalizer set by the router %v: backend calls %v, want one CreateVolume", routerSetFinalizer, e.pool.calls)
		}
	}
}

// TestFirstSightingSkipsRoundTrips: a ThinVolume the router created with
// the agent's finalizer costs the agent one API write (its status) on the
// create's path: no finalizer update, no re-read. One without the
// finalizer gets it (an update) before any storage is made.
func TestFirstSightingSkipsRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name        string
		finalizer   bool
		wantUpdates int
	}{
		{name: "router set the finalizer", finalizer: true, wantUpdates: 0},
		{name: "no finalizer yet", finalizer: false, wantUpdates: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv := newVolume(vol1, "n1", backend.GiB)
			if tc.finalizer {
				tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
			}
			e := newEnv(t, tv)
			var updates, reads int
			e.vr.Client = interceptor.NewClient(e.c.(client.WithWatch), interceptor.Funcs{
				Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
					updates++
					return c.Update(ctx, obj, opts...)
				},
			})
			e.vr.APIReader = interceptor.NewClient(e.c.(client.WithWatch), interceptor.Funcs{
				Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
					reads++
					return c.Get(ctx, key, obj, opts...)
				},
			})
			e.reconcileVolume(vol1)
			got := e.volume(vol1)
			if got.Status.Phase != thinv1.PhaseReady || !controllerutil.ContainsFinalizer(got, wellknown.FinalizerNodeCleanup) {
				t.Fatalf("phase %s, finalizers %v; want Ready with the agent's finalizer", got.Status.Phase, got.Finalizers)
			}
			if updates != tc.wantUpdates || reads != 0 {
				t.Errorf("create: %d updates, %d API re-reads; want %d, 0", updates, reads, tc.wantUpdates)
			}
			// Seen before: the cache may be behind the agent's own write,
			// so a Pending copy is checked against the API server.
			if err := e.c.Get(e.ctx, client.ObjectKey{Name: vol1}, got); err != nil {
				t.Fatal(err)
			}
			got.Status.Phase = thinv1.PhasePending
			if err := e.c.Status().Update(e.ctx, got); err != nil {
				t.Fatal(err)
			}
			e.reconcileVolume(vol1)
			if reads != 1 {
				t.Errorf("second sighting: %d API re-reads, want 1", reads)
			}
		})
	}
}

// TestLostVolumeRecovers: a volume the controller marked Lost is Ready
// again once its agent finds the storage; without the storage it stays
// Lost with the reason and nothing is recreated. A volume the node had
// not made yet when it was judged lost is made once it is back.
func TestLostVolumeRecovers(t *testing.T) {
	lost := func(name string, made bool) *thinv1.ThinVolume {
		tv := newVolume(name, "n1", backend.GiB)
		tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
		tv.Status.Phase = thinv1.PhaseLost
		if made {
			tv.Status.SizeBytes = backend.GiB
		}
		return tv
	}
	vol2, vol3 := backend.VolumeIDFor("two"), backend.VolumeIDFor("three")
	e := newEnv(t, lost(vol1, true), lost(vol2, true), lost(vol3, false))
	e.pool.vols[vol1] = &backend.Volume{ID: vol1, SizeBytes: backend.GiB}
	e.reconcileVolume(vol1)
	e.reconcileVolume(vol2)
	if tv := e.volume(vol1); tv.Status.Phase != thinv1.PhaseReady || tv.Status.SizeBytes != backend.GiB {
		t.Errorf("found volume: status %+v", tv.Status)
	}
	tv := e.volume(vol2)
	c := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionReady)
	if tv.Status.Phase != thinv1.PhaseLost || c == nil || c.Reason != thinv1.ReasonStorageMissing {
		t.Errorf("missing volume: status %+v", tv.Status)
	}
	for _, call := range e.pool.calls {
		if strings.HasPrefix(call, "CreateVolume") {
			t.Errorf("a lost volume was recreated: %v", e.pool.calls)
		}
	}
	e.event(thinv1.ReasonRecovered)

	// Never made: back to Pending (the status update is what brings the
	// next reconcile), then made.
	e.reconcileVolume(vol3)
	tv = e.volume(vol3)
	c = apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionReady)
	if tv.Status.Phase != thinv1.PhasePending || c == nil || c.Reason != thinv1.ReasonResumed {
		t.Fatalf("never-made volume after its node is back: status %+v", tv.Status)
	}
	e.event(thinv1.ReasonResumed)
	e.reconcileVolume(vol3)
	if tv := e.volume(vol3); tv.Status.Phase != thinv1.PhaseReady || tv.Status.SizeBytes != backend.GiB || e.pool.vols[vol3] == nil {
		t.Errorf("never-made volume not made once its node is back: status %+v", tv.Status)
	}
}

// TestStraysReported: storage without a resource is counted and listed in
// the ThinNode's status, and stays in the pool.
func TestStraysReported(t *testing.T) {
	known := newVolume(vol1, "n1", backend.GiB)
	known.Labels = map[string]string{wellknown.LabelNode: "n1"}
	e := newEnv(t, known)
	stray := backend.VolumeIDFor("stray")
	e.pool.vols[vol1] = &backend.Volume{ID: vol1, SizeBytes: backend.GiB}
	e.pool.vols[stray] = &backend.Volume{ID: stray, SizeBytes: backend.GiB}
	e.pool.snaps[snap1] = &backend.Snapshot{ID: snap1}
	ns := NewNodeStatus(e.c, e.c, e.pool, time.Minute, nil)
	ns.Recorder = e.rec
	if err := ns.Update(e.ctx); err != nil {
		t.Fatal(err)
	}
	tn := &thinv1.ThinNode{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: "n1"}, tn); err != nil {
		t.Fatal(err)
	}
	want := []string{snap1, stray}
	slices.Sort(want)
	if tn.Status.Strays != 2 || fmt.Sprint(tn.Status.StrayIDs) != fmt.Sprint(want) {
		t.Errorf("strays %d %v, want %v", tn.Status.Strays, tn.Status.StrayIDs, want)
	}
	e.event("StrayStorage")
	if _, ok := e.pool.vols[stray]; !ok || len(e.pool.calls) != 0 {
		t.Errorf("stray touched: %v", e.pool.calls)
	}
}
