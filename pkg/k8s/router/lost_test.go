package router

import (
	"context"
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

// TestDeleteLostDoesNotWait: deleting a volume or snapshot of a lost node
// returns at once. On a node deleted from the cluster the resource goes
// (finalizer released); on a node that still exists it stays terminating,
// the record its agent acts on when it returns. A create that finds its
// resource Lost fails Unavailable and keeps it.
func TestDeleteLostDoesNotWait(t *testing.T) {
	s := runtime.NewScheme()
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	lostVol := func(id, node string) *thinv1.ThinVolume {
		return &thinv1.ThinVolume{
			ObjectMeta: metav1.ObjectMeta{Name: id, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
			Spec:       thinv1.ThinVolumeSpec{Node: node, RequiredBytes: backend.GiB, AccessType: thinv1.AccessMount},
			Status:     thinv1.ThinVolumeStatus{Phase: thinv1.PhaseLost},
		}
	}
	gone, away := lostVol(volA, "gone"), lostVol(volB, "away")
	snap := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: snapA, Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec:       thinv1.ThinSnapshotSpec{Node: "gone", SourceVolumeID: volA},
		Status:     thinv1.ThinSnapshotStatus{Phase: thinv1.PhaseLost},
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(gone, away, snap, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "away"}}).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}).Build()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := New(ctx, c, c, &informertest.FakeInformers{Scheme: s}, Config{})
	if err != nil {
		t.Fatal(err)
	}
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
