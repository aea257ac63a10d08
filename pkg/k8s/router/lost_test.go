package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache/informertest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// lostVolume is a ThinVolume its node's loss left Lost; sizeBytes > 0:
// the node had made it.
func lostVolume(id, node string, sizeBytes int64) *thinv1.ThinVolume {
	return &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: id, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec:       thinv1.ThinVolumeSpec{Node: node, RequiredBytes: backend.GiB, AccessType: thinv1.AccessMount},
		Status:     thinv1.ThinVolumeStatus{Phase: thinv1.PhaseLost, SizeBytes: sizeBytes},
	}
}

// lostRouter is a router over a fake API holding objs, with no informer
// events: waits end by their own rechecks, or by a test's notify.
func lostRouter(t *testing.T, objs ...client.Object) (*Router, client.Client) {
	t.Helper()
	s := runtime.NewScheme()
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}).Build()
	r, err := New(context.Background(), c, c, &informertest.FakeInformers{Scheme: s}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// TestDeleteLostDoesNotWait: deleting a volume or snapshot of a lost node
// returns at once. On a node deleted from the cluster the resource goes
// (finalizer released); on a node that still exists it stays terminating,
// the record its agent acts on when it returns. A create that finds its
// resource Lost, made before its node was lost, fails Unavailable and
// keeps it.
func TestDeleteLostDoesNotWait(t *testing.T) {
	gone, away := lostVolume(volA, "gone", 0), lostVolume(volB, "away", backend.GiB)
	snap := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: snapA, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec:       thinv1.ThinSnapshotSpec{Node: "gone", SourceVolumeID: volA},
		Status:     thinv1.ThinSnapshotStatus{Phase: thinv1.PhaseLost},
	}
	r, c := lostRouter(t, gone, away, snap, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "away"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.CreateVolume(ctx, backend.VolumeRequest{ID: volB, Node: "away", RequiredBytes: backend.GiB, AccessType: backend.AccessMount}); rpcerr.Code(err) != codes.Unavailable {
		t.Errorf("create of a lost volume: %v (%v), want Unavailable", err, rpcerr.Code(err))
	}
	for _, id := range []string{volA, volB} {
		if err := r.DeleteVolume(ctx, id); err != nil {
			t.Errorf("delete %s: %v", id, err)
		}
	}
	if err := r.DeleteSnapshot(ctx, snapA); err != nil {
		t.Errorf("delete snapshot: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: volA}, &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
		t.Errorf("volume of a deleted node still there: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: snapA}, &thinv1.ThinSnapshot{}); !apierrors.IsNotFound(err) {
		t.Errorf("snapshot of a deleted node still there: %v", err)
	}
	kept := &thinv1.ThinVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: volB}, kept); err != nil || kept.DeletionTimestamp == nil || len(kept.Finalizers) != 1 {
		t.Errorf("volume of an existing, silent node: %v, deleting %v, finalizers %v", err, kept.DeletionTimestamp, kept.Finalizers)
	}
}

// TestCreateWaitsOutLostNeverMade: a volume its node had not made when
// the node was judged lost is made once the node is back (the agent
// resumes it), so a create waits for it as for a Pending one: it fails
// DeadlineExceeded, naming the loss, if the node stays away, and succeeds
// once the node makes it, within the call.
func TestCreateWaitsOutLostNeverMade(t *testing.T) {
	tv := lostVolume(volA, "away", 0)
	tv.Status.Conditions = []metav1.Condition{{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: thinv1.ReasonNodeLost, Message: "the agent on away has not reported", LastTransitionTime: metav1.Now()}}
	r, c := lostRouter(t, tv, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "away"}})
	req := backend.VolumeRequest{ID: volA, Node: "away", RequiredBytes: backend.GiB, AccessType: backend.AccessMount}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := r.CreateVolume(ctx, req)
	cancel()
	if rpcerr.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "has not reported") {
		t.Errorf("create of a never-made volume whose node stays away: %v (%v), want DeadlineExceeded naming the loss", err, rpcerr.Code(err))
	}

	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(200 * time.Millisecond)
		made := &thinv1.ThinVolume{}
		if err := c.Get(ctx, client.ObjectKey{Name: volA}, made); err != nil {
			t.Error(err)
			return
		}
		made.Status.Phase, made.Status.SizeBytes = thinv1.PhaseReady, backend.GiB
		if err := c.Status().Update(ctx, made); err != nil {
			t.Error(err)
			return
		}
		r.events.notify(volA)
	}()
	v, err := r.CreateVolume(ctx, req)
	if err != nil || v.SizeBytes != backend.GiB {
		t.Fatalf("create while the node comes back and makes the volume: %+v, %v", v, err)
	}
}

// TestCreateDiscardsNeverMadeOfDeletedNode: a volume whose node was lost
// before making it and then deleted from the cluster is never made by any
// agent; the provisioner reschedules its claim, and the create discards
// the old attempt (Aborted, so it retries) and makes it on the new node.
// One that was made stays, Lost.
func TestCreateDiscardsNeverMadeOfDeletedNode(t *testing.T) {
	r, c := lostRouter(t, lostVolume(volA, "gone", 0), lostVolume(volB, "gone", backend.GiB))
	create := func(id string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Node: "n2", RequiredBytes: backend.GiB, AccessType: backend.AccessMount})
		return err
	}
	if err := create(volA); rpcerr.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "was deleted from the cluster") {
		t.Fatalf("create of a never-made volume of a deleted node: %v (%v), want Aborted", err, rpcerr.Code(err))
	}
	_ = create(volA) // the retry: creates it on n2, then waits (no agent here)
	tv := &thinv1.ThinVolume{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: volA}, tv); err != nil || tv.Spec.Node != "n2" || tv.Status.Phase == thinv1.PhaseLost {
		t.Errorf("retried create: %v, node %q, phase %q; want a new ThinVolume on n2", err, tv.Spec.Node, tv.Status.Phase)
	}
	if err := create(volB); rpcerr.Code(err) != codes.Unavailable {
		t.Errorf("create of a made volume of a deleted node: %v (%v), want Unavailable", err, rpcerr.Code(err))
	}
	if err := c.Get(context.Background(), client.ObjectKey{Name: volB}, tv); err != nil || tv.DeletionTimestamp != nil {
		t.Errorf("made volume of a deleted node: %v, deleting %v; want it kept", err, tv.DeletionTimestamp)
	}
}

// TestCreateGroupWaitsOutLostNeverMade: as TestCreateWaitsOutLostNeverMade,
// for a group snapshot: one its node had not taken when the node was
// judged lost is taken once the node is back, so the create waits for it
// (DeadlineExceeded naming the loss while the node stays away); one it had
// taken fails Unavailable at once.
func TestCreateGroupWaitsOutLostNeverMade(t *testing.T) {
	never, taken := backend.GroupSnapshotIDFor("never"), backend.GroupSnapshotIDFor("taken")
	group := func(id string, wasTaken bool) *thinv1.ThinGroupSnapshot {
		g := &thinv1.ThinGroupSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: id, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
			Spec:       thinv1.ThinGroupSnapshotSpec{Node: "away", SourceVolumeIDs: []string{volA}},
			Status: thinv1.ThinGroupSnapshotStatus{Phase: thinv1.PhaseLost, Conditions: []metav1.Condition{{Type: thinv1.ConditionReady,
				Status: metav1.ConditionFalse, Reason: thinv1.ReasonNodeLost, Message: "the agent on away has not reported", LastTransitionTime: metav1.Now()}}},
		}
		if wasTaken {
			at := metav1.Now()
			g.Status.CreationTime = &at
			g.Status.Members = []thinv1.GroupMember{{SnapshotID: snapA, SourceVolumeID: volA}}
		}
		return g
	}
	source := &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: volA, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec:       thinv1.ThinVolumeSpec{Node: "away", RequiredBytes: backend.GiB, AccessType: thinv1.AccessMount},
		Status:     thinv1.ThinVolumeStatus{Phase: thinv1.PhaseReady, SizeBytes: backend.GiB},
	}
	r, _ := lostRouter(t, source, group(never, false), group(taken, true), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "away"}})
	create := func(id string) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: id, SourceVolumeIDs: []string{volA}})
		return time.Since(start), err
	}
	if _, err := create(never); rpcerr.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "has not reported") {
		t.Errorf("create of a never-taken group whose node stays away: %v (%v), want DeadlineExceeded naming the loss", err, rpcerr.Code(err))
	}
	if took, err := create(taken); rpcerr.Code(err) != codes.Unavailable || took >= 300*time.Millisecond {
		t.Errorf("create of a taken group of a lost node: %v (%v) after %s, want Unavailable at once", err, rpcerr.Code(err), took)
	}
}
