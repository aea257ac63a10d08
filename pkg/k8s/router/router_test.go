package router

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

var (
	volA  = backend.VolumeIDFor("pvc-a")
	volB  = backend.VolumeIDFor("pvc-b")
	snapA = backend.SnapshotIDFor("snap-a")
	now   = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

// harness is a router over the fake client, with a scripted "node agent"
// that answers each new resource the way a test says, through the same
// informer events the real cache would send.
type harness struct {
	t      *testing.T
	ctx    context.Context
	c      client.WithWatch
	inf    *informertest.FakeInformers
	r      *Router
	mu     sync.Mutex
	onVol  func(*thinv1.ThinVolume) // applied to a new ThinVolume's status; nil: never answer
	onSnap func(*thinv1.ThinSnapshot)
	onGrp  func(*thinv1.ThinGroupSnapshot)
}

func newHarness(t *testing.T, objs ...client.Object) *harness {
	t.Helper()
	s := runtime.NewScheme()
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: context.Background(), inf: &informertest.FakeInformers{Scheme: s}}
	h.c = fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinGroupSnapshot{}, &thinv1.ThinNode{}).
		WithInterceptorFuncs(interceptor.Funcs{Create: h.interceptCreate, Delete: h.interceptDelete}).Build()
	r, err := New(h.ctx, h.c, h.c, h.inf, Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	return h
}

func (h *harness) interceptCreate(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
	if err := c.Create(ctx, obj, opts...); err != nil {
		return err
	}
	h.mu.Lock()
	onVol, onSnap, onGrp := h.onVol, h.onSnap, h.onGrp
	h.mu.Unlock()
	name := obj.GetName()
	switch obj.(type) {
	case *thinv1.ThinVolume:
		if onVol != nil {
			go h.answer(&thinv1.ThinVolume{}, name, func(o client.Object) { onVol(o.(*thinv1.ThinVolume)) })
		}
	case *thinv1.ThinSnapshot:
		if onSnap != nil {
			go h.answer(&thinv1.ThinSnapshot{}, name, func(o client.Object) { onSnap(o.(*thinv1.ThinSnapshot)) })
		}
	case *thinv1.ThinGroupSnapshot:
		if onGrp != nil {
			go h.answer(&thinv1.ThinGroupSnapshot{}, name, func(o client.Object) { onGrp(o.(*thinv1.ThinGroupSnapshot)) })
		}
	}
	return nil
}

// interceptDelete plays the node agent of a deletion: where a test
// scripts the agent for that kind, it removes the storage (nothing here)
// and releases the finalizer the router set at creation.
func (h *harness) interceptDelete(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
	if err := c.Delete(ctx, obj, opts...); err != nil {
		return err
	}
	h.mu.Lock()
	var answering bool
	switch obj.(type) {
	case *thinv1.ThinVolume:
		answering = h.onVol != nil
	case *thinv1.ThinSnapshot:
		answering = h.onSnap != nil
	case *thinv1.ThinGroupSnapshot:
		answering = h.onGrp != nil
	}
	h.mu.Unlock()
	if answering {
		go h.release(obj.DeepCopyObject().(client.Object))
	}
	return nil
}

// release removes the agent's finalizer from a deleted resource and sends
// the informer's delete event.
func (h *harness) release(obj client.Object) {
	if err := h.c.Get(h.ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return // gone already: it held no finalizer
	}
	if !controllerutil.RemoveFinalizer(obj, wellknown.FinalizerNodeCleanup) {
		return
	}
	if err := h.c.Update(h.ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		h.t.Errorf("node: release %s: %v", obj.GetName(), err)
		return
	}
	fi, err := h.inf.FakeInformerFor(h.ctx, obj)
	if err != nil {
		h.t.Errorf("informer: %v", err)
		return
	}
	fi.Delete(obj)
}

// deleted reports whether the resource name was deleted: gone, or
// terminating with only its node agent's work left.
func deleted(ctx context.Context, c client.Client, name string, obj client.Object) bool {
	err := c.Get(ctx, client.ObjectKey{Name: name}, obj)
	return apierrors.IsNotFound(err) || err == nil && obj.GetDeletionTimestamp() != nil
}

// answer plays the node agent: update the status, then send the event.
func (h *harness) answer(obj client.Object, name string, mutate func(client.Object)) {
	time.Sleep(20 * time.Millisecond)
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: name}, obj); err != nil {
		h.t.Errorf("node: get %s: %v", name, err)
		return
	}
	old := obj.DeepCopyObject().(client.Object)
	mutate(obj)
	if err := h.c.Status().Update(h.ctx, obj); err != nil {
		h.t.Errorf("node: update %s: %v", name, err)
		return
	}
	h.event(old, obj)
}

func (h *harness) event(old, obj client.Object) {
	fi, err := h.inf.FakeInformerFor(h.ctx, obj)
	if err != nil {
		h.t.Errorf("informer: %v", err)
		return
	}
	fi.Update(old, obj)
}

func ready(size int64) func(*thinv1.ThinVolume) {
	return func(tv *thinv1.ThinVolume) {
		tv.Status.Phase, tv.Status.SizeBytes, tv.Status.Code = thinv1.PhaseReady, size, "OK"
	}
}

func thinNode(name string, avail int64, healthy bool, age time.Duration) *thinv1.ThinNode {
	t := metav1.NewTime(now.Add(-age))
	return &thinv1.ThinNode{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: thinv1.ThinNodeStatus{Backend: "btrfs", TotalBytes: 100 * backend.GiB, AvailableBytes: avail,
			MaximumVolumeBytes: avail, Healthy: healthy, UpdateTime: &t},
	}
}

func readyVolume(id, node string, size int64) *thinv1.ThinVolume {
	return &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{wellknown.LabelNode: node}},
		Spec:       thinv1.ThinVolumeSpec{Node: node, RequiredBytes: size, AccessType: thinv1.AccessMount, FsType: "ext4"},
		Status:     thinv1.ThinVolumeStatus{Phase: thinv1.PhaseReady, SizeBytes: size},
	}
}

func TestCreateVolume(t *testing.T) {
	gib := backend.GiB
	tests := []struct {
		name     string
		objs     []client.Object
		onVol    func(*thinv1.ThinVolume)
		req      backend.VolumeRequest
		wantNode string
		wantSize int64
		wantCode codes.Code
		wantMsg  string
		gone     bool // the ThinVolume must not remain
	}{{
		name:     "node reports ready",
		objs:     []client.Object{thinNode("n1", 10*gib, true, 0)},
		onVol:    ready(2 * gib),
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib + 1, Node: "n1", FsType: "ext4"},
		wantNode: "n1", wantSize: 2 * gib,
	}, {
		name: "node failure keeps its code and message, and the resource goes",
		onVol: func(tv *thinv1.ThinVolume) {
			tv.Status.Phase, tv.Status.Code, tv.Status.Message = thinv1.PhaseFailed, codes.ResourceExhausted.String(), "lvcreate: pool is 95% full"
		},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib, Node: "n1"},
		wantCode: codes.ResourceExhausted, wantMsg: "node n1: lvcreate: pool is 95% full", gone: true,
	}, {
		name: "unknown node code becomes Internal",
		onVol: func(tv *thinv1.ThinVolume) {
			tv.Status.Phase, tv.Status.Code, tv.Status.Message = thinv1.PhaseFailed, "Internal", "mkfs crashed"
		},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib, Node: "n1"},
		wantCode: codes.Internal, wantMsg: "mkfs crashed", gone: true,
	}, {
		name: "placement without topology picks the fresh healthy node with most room",
		objs: []client.Object{
			thinNode("small", 2*gib, true, 0), thinNode("big", 50*gib, true, time.Second),
			thinNode("stale", 90*gib, true, time.Hour), thinNode("sick", 80*gib, false, 0),
		},
		onVol:    ready(gib),
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib},
		wantNode: "big", wantSize: gib,
	}, {
		name:     "placement without room is ResourceExhausted",
		objs:     []client.Object{thinNode("small", gib, true, 0), thinNode("stale", 90*gib, true, time.Hour)},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: 2 * gib},
		wantCode: codes.ResourceExhausted, wantMsg: "no node",
	}, {
		name:     "clone goes to its source's node",
		objs:     []client.Object{readyVolume(volB, "n2", gib)},
		onVol:    ready(gib),
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib, Source: backend.Source{Kind: backend.SourceVolume, ID: volB}},
		wantNode: "n2", wantSize: gib,
	}, {
		name:     "clone to another node than its source's is FailedPrecondition with the fix",
		objs:     []client.Object{readyVolume(volB, "n2", gib)},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", Source: backend.Source{Kind: backend.SourceVolume, ID: volB}},
		wantCode: codes.FailedPrecondition, wantMsg: "volumeBindingMode: Immediate",
	}, {
		name:     "restore from a missing snapshot is NotFound",
		req:      backend.VolumeRequest{ID: volA, Source: backend.Source{Kind: backend.SourceSnapshot, ID: snapA}},
		wantCode: codes.NotFound,
	}, {
		name:     "existing compatible volume is returned without waiting",
		objs:     []client.Object{readyVolume(volA, "n3", 4*gib)},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: 3 * gib, Node: "n1", FsType: "ext4", AccessType: backend.AccessMount},
		wantNode: "n3", wantSize: 4 * gib,
	}, {
		name:     "existing volume of another size is AlreadyExists",
		objs:     []client.Object{readyVolume(volA, "n1", 4*gib)},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: 5 * gib, Node: "n1", FsType: "ext4"},
		wantCode: codes.AlreadyExists, wantMsg: "outside the requested range",
	}, {
		name:     "existing volume with another fsType is AlreadyExists",
		objs:     []client.Object{readyVolume(volA, "n1", 4*gib)},
		req:      backend.VolumeRequest{ID: volA, RequiredBytes: gib, Node: "n1", FsType: "xfs"},
		wantCode: codes.AlreadyExists, wantMsg: "fsType",
	}, {
		name:     "malformed ID is InvalidArgument",
		req:      backend.VolumeRequest{ID: "v-nope"},
		wantCode: codes.InvalidArgument,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.objs...)
			h.onVol = tc.onVol
			ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
			defer cancel()
			v, err := h.r.CreateVolume(ctx, tc.req)
			if tc.wantCode != codes.OK {
				if err == nil {
					t.Fatalf("got volume %+v, want %v", v, tc.wantCode)
				}
				if got := rpcerr.Code(err); got != tc.wantCode {
					t.Errorf("code %v (%v), want %v", got, err, tc.wantCode)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("message %q lacks %q", err, tc.wantMsg)
				}
			} else {
				if err != nil {
					t.Fatalf("CreateVolume: %v", err)
				}
				if v.Node != tc.wantNode || v.SizeBytes != tc.wantSize || v.ID != tc.req.ID {
					t.Errorf("volume %+v, want node %s size %d", v, tc.wantNode, tc.wantSize)
				}
			}
			if tc.gone && !deleted(h.ctx, h.c, tc.req.ID, &thinv1.ThinVolume{}) {
				t.Errorf("ThinVolume not deleted after failure")
			}
		})
	}
}

func TestCreateVolumeRecordsRequest(t *testing.T) {
	h := newHarness(t)
	h.onVol = ready(backend.GiB)
	_, err := h.r.CreateVolume(h.ctx, backend.VolumeRequest{
		ID: volA, Name: "pvc-123", RequiredBytes: backend.GiB, Node: "n1", FsType: "ext4", AccessType: backend.AccessBlock,
		Parameters: map[string]string{"discard": "true", paramPVCName: "data", paramPVCNamespace: "team-a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tv := &thinv1.ThinVolume{}
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, tv); err != nil {
		t.Fatal(err)
	}
	if tv.Spec.Name != "pvc-123" || tv.Spec.AccessType != thinv1.AccessBlock || tv.Spec.Node != "n1" {
		t.Errorf("spec %+v", tv.Spec)
	}
	if len(tv.Spec.Parameters) != 1 || tv.Spec.Parameters["discard"] != "true" {
		t.Errorf("parameters %v: provisioner metadata must become labels, not parameters", tv.Spec.Parameters)
	}
	if tv.Labels[wellknown.LabelPVCName] != "data" || tv.Labels[wellknown.LabelPVCNamespace] != "team-a" || tv.Labels[wellknown.LabelNode] != "n1" {
		t.Errorf("labels %v", tv.Labels)
	}
}

func TestCreateVolumeTimesOutWithReason(t *testing.T) {
	h := newHarness(t) // the node never answers
	ctx, cancel := context.WithTimeout(h.ctx, 100*time.Millisecond)
	defer cancel()
	_, err := h.r.CreateVolume(ctx, backend.VolumeRequest{ID: volA, RequiredBytes: backend.GiB, Node: "n1"})
	if rpcerr.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "node agent running") {
		t.Fatalf("err %v (code %v), want DeadlineExceeded naming the node agent", err, rpcerr.Code(err))
	}
	// The pending resource stays: the node may still make the volume, and
	// the provisioner's retry will find it.
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, &thinv1.ThinVolume{}); err != nil {
		t.Errorf("pending ThinVolume gone: %v", err)
	}
}

func TestCreateVolumeWhileOldAttemptIsDeleted(t *testing.T) {
	tv := readyVolume(volA, "n1", backend.GiB)
	tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
	h := newHarness(t, tv)
	if err := h.c.Delete(h.ctx, tv); err != nil {
		t.Fatal(err)
	}
	_, err := h.r.CreateVolume(h.ctx, backend.VolumeRequest{ID: volA, RequiredBytes: backend.GiB, Node: "n1", FsType: "ext4"})
	if rpcerr.Code(err) != codes.Aborted {
		t.Fatalf("err %v, want Aborted", err)
	}
}

func TestDeleteVolume(t *testing.T) {
	t.Run("waits for the node to release the finalizer", func(t *testing.T) {
		tv := readyVolume(volA, "n1", backend.GiB)
		tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
		h := newHarness(t, tv)
		released := make(chan struct{})
		go func() {
			defer close(released)
			time.Sleep(50 * time.Millisecond)
			cur := &thinv1.ThinVolume{}
			if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, cur); err != nil {
				t.Errorf("get: %v", err)
				return
			}
			cur.Finalizers = nil
			if err := h.c.Update(h.ctx, cur); err != nil {
				t.Errorf("release: %v", err)
			}
			fi, _ := h.inf.FakeInformerFor(h.ctx, cur)
			fi.Delete(cur)
		}()
		start := time.Now()
		if err := h.r.DeleteVolume(h.ctx, volA); err != nil {
			t.Fatal(err)
		}
		<-released
		if time.Since(start) < 40*time.Millisecond {
			t.Error("returned before the node released the finalizer")
		}
	})
	t.Run("node failure is returned with its code", func(t *testing.T) {
		tv := readyVolume(volA, "n1", backend.GiB)
		tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
		h := newHarness(t, tv)
		go h.answer(&thinv1.ThinVolume{}, volA, func(o client.Object) {
			v := o.(*thinv1.ThinVolume)
			v.Status.Code, v.Status.Message = codes.FailedPrecondition.String(), "volume has snapshots"
			v.Status.Conditions = []metav1.Condition{{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
				Reason: thinv1.ReasonDeleteFailed, Message: "volume has snapshots", LastTransitionTime: metav1.Now()}}
		})
		err := h.r.DeleteVolume(h.ctx, volA)
		if rpcerr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "volume has snapshots") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("missing and malformed IDs succeed", func(t *testing.T) {
		h := newHarness(t)
		for _, id := range []string{volA, "garbage"} {
			if err := h.r.DeleteVolume(h.ctx, id); err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}
	})
}

func TestExpandVolume(t *testing.T) {
	gib := backend.GiB
	t.Run("grows through the node", func(t *testing.T) {
		h := newHarness(t, readyVolume(volA, "n1", gib))
		go h.answer(&thinv1.ThinVolume{}, volA, func(o client.Object) {
			v := o.(*thinv1.ThinVolume)
			v.Status.SizeBytes = v.Spec.RequiredBytes
		})
		v, err := h.r.ExpandVolume(h.ctx, volA, 3*gib)
		if err != nil || v.SizeBytes != 3*gib {
			t.Fatalf("ExpandVolume: %+v, %v", v, err)
		}
	})
	t.Run("node refusal keeps its code", func(t *testing.T) {
		h := newHarness(t, readyVolume(volA, "n1", gib))
		go func() {
			time.Sleep(30 * time.Millisecond) // after the spec change
			h.answer(&thinv1.ThinVolume{}, volA, func(o client.Object) {
				v := o.(*thinv1.ThinVolume)
				v.Status.Code, v.Status.Message = codes.OutOfRange.String(), "above the maximum volume size"
			})
		}()
		_, err := h.r.ExpandVolume(h.ctx, volA, 3*gib)
		if rpcerr.Code(err) != codes.OutOfRange {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("already large enough", func(t *testing.T) {
		h := newHarness(t, readyVolume(volA, "n1", 4*gib))
		if v, err := h.r.ExpandVolume(h.ctx, volA, 3*gib); err != nil || v.SizeBytes != 4*gib {
			t.Fatalf("%+v %v", v, err)
		}
	})
	t.Run("missing volume", func(t *testing.T) {
		h := newHarness(t)
		if _, err := h.r.ExpandVolume(h.ctx, volA, gib); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("err %v", err)
		}
	})
}

func TestSnapshots(t *testing.T) {
	gib := backend.GiB
	h := newHarness(t, readyVolume(volA, "n2", gib))
	var nodeSawSkipFreeze bool
	h.onSnap = func(ts *thinv1.ThinSnapshot) {
		nodeSawSkipFreeze = ts.Spec.SkipFreeze
		ts.Status.Phase, ts.Status.ReadyToUse, ts.Status.SizeBytes = thinv1.PhaseReady, true, gib
	}
	s, err := h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, Name: "snapcontent-1", SourceVolumeID: volA, SkipFreeze: true})
	if err != nil {
		t.Fatal(err)
	}
	if !nodeSawSkipFreeze {
		t.Error("the snapshot class's freeze=false did not reach the node's ThinSnapshot")
	}
	if s.Node != "n2" || !s.ReadyToUse || s.SizeBytes != gib || s.SourceVolumeID != volA {
		t.Errorf("snapshot %+v", s)
	}
	// Same ID, other source: AlreadyExists.
	_, err = h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, SourceVolumeID: volB})
	if rpcerr.Code(err) != codes.NotFound { // volB does not exist: checked first
		t.Errorf("err %v, want NotFound for the missing source", err)
	}
	if err := h.c.Create(h.ctx, readyVolume(volB, "n2", gib)); err != nil {
		t.Fatal(err)
	}
	_, err = h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, SourceVolumeID: volB})
	if rpcerr.Code(err) != codes.AlreadyExists {
		t.Errorf("err %v, want AlreadyExists", err)
	}
	// A restore of it lands on n2, and a request for n1 is refused.
	h.onVol = ready(gib)
	v, err := h.r.CreateVolume(h.ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("restore"), Source: backend.Source{Kind: backend.SourceSnapshot, ID: snapA}})
	if err != nil || v.Node != "n2" {
		t.Fatalf("restore: %+v %v", v, err)
	}
	// Both made with the node agent's finalizer: the agent need not write
	// it before making the storage.
	for _, obj := range []client.Object{&thinv1.ThinSnapshot{ObjectMeta: metav1.ObjectMeta{Name: snapA}}, &thinv1.ThinVolume{ObjectMeta: metav1.ObjectMeta{Name: v.ID}}} {
		if err := h.c.Get(h.ctx, client.ObjectKeyFromObject(obj), obj); err != nil || !controllerutil.ContainsFinalizer(obj, wellknown.FinalizerNodeCleanup) {
			t.Errorf("%T %s: finalizers %v (%v), want the agent's", obj, obj.GetName(), obj.GetFinalizers(), err)
		}
	}
	list, err := h.r.ListSnapshots(h.ctx)
	if err != nil || len(list) != 1 || list[0].ID != snapA {
		t.Errorf("ListSnapshots: %v %v", list, err)
	}
	if err := h.r.DeleteSnapshot(h.ctx, snapA); err != nil {
		t.Fatal(err)
	}
	if _, err := h.r.GetSnapshot(h.ctx, snapA); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetSnapshot after delete: %v", err)
	}
}

func TestCapacity(t *testing.T) {
	gib := backend.GiB
	h := newHarness(t, thinNode("a", 5*gib, true, 0), thinNode("b", 9*gib, true, 0), thinNode("old", 90*gib, true, time.Hour))
	tests := []struct {
		node  string
		avail int64
	}{{"a", 5 * gib}, {"b", 9 * gib}, {"", 9 * gib}, {"old", 0}, {"missing", 0}}
	for _, tc := range tests {
		c, err := h.r.Capacity(h.ctx, tc.node)
		if err != nil || c.AvailableBytes != tc.avail {
			t.Errorf("Capacity(%q) = %+v, %v; want available %d", tc.node, c, err, tc.avail)
		}
	}
}

func TestSentinelRoundTrip(t *testing.T) {
	// What the node stores (rpcerr.Code(err).String()) comes back as the
	// same code through rpcerr.
	for _, sentinel := range []error{backend.ErrNotFound, backend.ErrExists, backend.ErrNoSpace, backend.ErrOutOfRange,
		backend.ErrInvalid, backend.ErrUnsupported, backend.ErrBusy, backend.ErrPrecondition, backend.ErrUnavailable,
		errors.New("boom"), context.DeadlineExceeded} {
		code := rpcerr.Code(sentinel)
		err := statusError("n1", code.String(), "msg")
		if got := rpcerr.Code(err); got != code {
			t.Errorf("%v: stored %v, came back as %v", sentinel, code, got)
		}
	}
	if statusError("n1", "OK", "") != nil || statusError("n1", "", "") != nil {
		t.Error("OK must not be an error")
	}
}

// The VolumeSnapshotClass's export target reaches the node's ThinSnapshot
// (a reference to the Secret); the same snapshot asked for with another
// target is AlreadyExists.
func TestSnapshotExportTarget(t *testing.T) {
	h := newHarness(t, readyVolume(volA, "n2", backend.GiB))
	var nodeSaw *thinv1.SnapshotExport
	h.onSnap = func(ts *thinv1.ThinSnapshot) {
		nodeSaw = ts.Spec.Export
		ts.Status.Phase, ts.Status.ReadyToUse = thinv1.PhaseReady, true
	}
	target := &backend.ExportTarget{SecretNamespace: "csi-thin", SecretName: "s3"}
	if _, err := h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, Name: "c1", SourceVolumeID: volA, Export: target,
		VolumeSnapshotNamespace: "app", VolumeSnapshotName: "nightly"}); err != nil {
		t.Fatal(err)
	}
	ts := &thinv1.ThinSnapshot{}
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: snapA}, ts); err != nil {
		t.Fatal(err)
	}
	if ts.Annotations[wellknown.AnnotationVolumeSnapshotNamespace] != "app" || ts.Annotations[wellknown.AnnotationVolumeSnapshotName] != "nightly" {
		t.Errorf("ThinSnapshot annotations %v: want the VolumeSnapshot app/nightly", ts.Annotations)
	}
	if nodeSaw == nil || nodeSaw.SecretNamespace != "csi-thin" || nodeSaw.SecretName != "s3" {
		t.Errorf("node's ThinSnapshot export %+v, want csi-thin/s3", nodeSaw)
	}
	if _, err := h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, Name: "c1", SourceVolumeID: volA, Export: target}); err != nil {
		t.Errorf("repeated request: %v", err)
	}
	for _, other := range []*backend.ExportTarget{nil, {SecretNamespace: "csi-thin", SecretName: "other"}} {
		_, err := h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, Name: "c1", SourceVolumeID: volA, Export: other})
		if rpcerr.Code(err) != codes.AlreadyExists {
			t.Errorf("export %+v for a snapshot exported to csi-thin/s3: %v, want AlreadyExists", other, err)
		}
	}
	if !h.r.ExportsSnapshots() {
		t.Error("the router does not say it exports")
	}
}

// A restore from an export handle is placed like a new volume (any node:
// the export is in an object store), and its ThinVolume names the export
// and its Secret; a retry with the same handle is the same volume, with
// another it is AlreadyExists; a malformed handle is InvalidArgument.
func TestRestoreFromExportHandle(t *testing.T) {
	gib := backend.GiB
	exportID := volB + "/" + snapA
	handle := "export:backup/s3/" + exportID
	h := newHarness(t, thinNode("n1", 2*gib, true, 0), thinNode("n2", 50*gib, true, 0))
	var nodeSaw *thinv1.VolumeSource
	h.onVol = func(tv *thinv1.ThinVolume) {
		nodeSaw = tv.Spec.Source
		ready(gib)(tv)
	}
	req := backend.VolumeRequest{ID: volA, RequiredBytes: gib, Source: backend.Source{Kind: backend.SourceExport, ID: handle}}
	v, err := h.r.CreateVolume(h.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: exportID, Export: &thinv1.SnapshotExport{SecretNamespace: "backup", SecretName: "s3"}}
	if nodeSaw == nil || !sourceEqual(nodeSaw, &want) {
		t.Errorf("node's ThinVolume source %+v, want %+v", nodeSaw, want)
	}
	if v.Node != "n2" || v.Source != req.Source {
		t.Errorf("volume %+v: want node n2 (most room) and the handle as its source", v)
	}
	if _, err := h.r.CreateVolume(h.ctx, req); err != nil {
		t.Errorf("retry: %v", err)
	}
	other := req
	other.Source.ID = "export:backup/other/" + exportID
	if _, err := h.r.CreateVolume(h.ctx, other); rpcerr.Code(err) != codes.AlreadyExists {
		t.Errorf("same volume from another Secret: %v, want AlreadyExists", err)
	}
	bad := backend.VolumeRequest{ID: volB, RequiredBytes: gib, Source: backend.Source{Kind: backend.SourceExport, ID: "export:backup/" + exportID}}
	if _, err := h.r.CreateVolume(h.ctx, bad); rpcerr.Code(err) != codes.InvalidArgument {
		t.Errorf("malformed handle: %v, want InvalidArgument", err)
	}
}
