package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// TestDeleteOfMountedVolumeInClusterMode: in cluster mode the node agent
// runs the backend's DeleteVolume; a volume mounted on its node comes
// back to the CSI controller as FailedPrecondition with the node's
// message (the mount path), the storage stays, and once the mount is
// gone the agent's retry deletes it and the CO's retry succeeds.
func TestDeleteOfMountedVolumeInClusterMode(t *testing.T) {
	const mountPath = "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv-a/mount"
	tv := readyVolume(volA, "n1", backend.GiB)
	tv.Finalizers = []string{wellknown.FinalizerNodeCleanup}
	h := newHarness(t, tv)
	pool := fake.New("n1", 10*backend.GiB)
	if _, err := pool.CreateVolume(h.ctx, backend.VolumeRequest{ID: volA, RequiredBytes: backend.GiB}); err != nil {
		t.Fatal(err)
	}
	pool.SetMounted(volA, mountPath)
	agent := &nodeagent.VolumeReconciler{Client: h.c, APIReader: h.c, Pool: pool, Recorder: events.NewFakeRecorder(100)}
	cs := controller.New(h.r)

	// The agent reconciles once the resource is being deleted, and the
	// informer tells the router what it wrote.
	reconcileDeletion := func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			old := &thinv1.ThinVolume{}
			if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, old); err != nil {
				h.t.Errorf("agent: get: %v", err)
				return
			}
			if old.DeletionTimestamp.IsZero() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			_, _ = agent.Reconcile(h.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: volA}})
			cur := &thinv1.ThinVolume{}
			if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, cur); err == nil {
				h.event(old, cur)
			}
			return
		}
		h.t.Error("agent: the resource was never marked for deletion")
	}
	go reconcileDeletion()
	_, err := cs.DeleteVolume(h.ctx, &csi.DeleteVolumeRequest{VolumeId: volA})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), mountPath) {
		t.Fatalf("DeleteVolume of a mounted volume = %v, want FailedPrecondition naming %s", err, mountPath)
	}
	if _, err := pool.GetVolume(h.ctx, volA); err != nil {
		t.Fatalf("storage removed under a mount: %v", err)
	}

	// Unmounted: the agent's retry (with backoff) removes the storage and
	// the finalizer; the CO's retry then finds nothing left to delete.
	pool.SetMounted(volA, "")
	if _, err := agent.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Name: volA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DeleteVolume(h.ctx, &csi.DeleteVolumeRequest{VolumeId: volA}); err != nil {
		t.Fatalf("DeleteVolume after unmount: %v", err)
	}
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
		t.Errorf("ThinVolume still there: %v", err)
	}
	if _, err := pool.GetVolume(h.ctx, volA); err == nil {
		t.Error("volume still in the pool")
	}
}
