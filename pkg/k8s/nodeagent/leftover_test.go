package nodeagent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

const (
	staged  = "/var/lib/kubelet/plugins/kubernetes.io/csi/csi-thin.io/" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + "/globalmount"
	publish = "/var/lib/kubelet/pods/4f1c/volumes/kubernetes.io~csi/pvc-1/mount"
)

func mountedAt(paths ...string) error {
	return fmt.Errorf("delete: %w", &backend.MountedError{Volume: vol1, Node: "n1", MountPoints: paths})
}

func TestLeftoverStaging(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"staging only", mountedAt(staged), true},
		{"staging in another kubelet root", mountedAt("/data/kubelet/plugins/kubernetes.io/csi/csi-thin.io/" + strings.Repeat("a", 64) + "/globalmount"), true},
		{"staging and a pod", mountedAt(staged, publish), false},
		{"a pod only", mountedAt(publish), false},
		{"another driver's staging", mountedAt(strings.Replace(staged, "csi-thin.io", "other.io", 1)), false},
		{"not a hash", mountedAt(strings.Replace(staged, "0123456789abcdef", "../../../../etc/", 1)), false},
		{"unclean path", mountedAt("/var/lib/kubelet/x/../plugins/kubernetes.io/csi/csi-thin.io/" + strings.Repeat("b", 64) + "/globalmount"), false},
		{"no mount points", mountedAt(), false},
		{"open, not mounted", fmt.Errorf("volume is open: %w", backend.ErrInUse), false},
		{"other error", backend.ErrBusy, false},
		{"no error", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, got := leftoverStaging(tc.err); got != tc.want {
				t.Errorf("leftoverStaging(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// A deleted volume that is mounted only at its staging path is unmounted
// by the agent, but only once the kubelet had its grace to unstage it; a
// volume a pod still has published is never touched.
func TestLeftoverStagingUnmounted(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mounts      []string
		after       time.Duration
		wantUnmount bool
		// Within the grace: no error, tried again when the grace ends.
		wantRequeue time.Duration
	}{
		{"within the kubelet's grace", []string{staged}, DefaultLeftoverStagingGrace - time.Second, false, time.Second},
		{"after the grace", []string{staged}, DefaultLeftoverStagingGrace, true, 0},
		{"published to a pod", []string{staged, publish}, time.Hour, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
			e.reconcileVolume(vol1)
			if err := e.c.Delete(e.ctx, e.volume(vol1)); err != nil {
				t.Fatal(err)
			}
			deleting := e.volume(vol1).DeletionTimestamp.Time
			e.vr.Now = func() time.Time { return deleting.Add(tc.after) }
			var unmounted []string
			e.vr.Unmount = func(p string) error {
				unmounted = append(unmounted, p)
				delete(e.pool.failOn, "DeleteVolume")
				return nil
			}
			e.pool.failOn["DeleteVolume"] = mountedAt(tc.mounts...)
			res, err := e.vr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: vol1}})
			_, gone := e.pool.vols[vol1]
			gone = !gone
			if !tc.wantUnmount {
				if refused := err != nil || res.RequeueAfter > 0; !refused || unmounted != nil || gone {
					t.Fatalf("err %v, unmounted %v, storage gone %v: want a refusal and no unmount", err, unmounted, gone)
				}
				if res.RequeueAfter != tc.wantRequeue || (tc.wantRequeue > 0) != (err == nil) {
					t.Errorf("err %v, requeue after %v; want requeue after %v (with no error when waiting for the grace)", err, res.RequeueAfter, tc.wantRequeue)
				}
				return
			}
			if err != nil || !slices.Equal(unmounted, []string{staged}) || !gone {
				t.Fatalf("err %v, unmounted %v, storage gone %v: want %s unmounted and the volume deleted", err, unmounted, gone, staged)
			}
			if err := e.c.Get(e.ctx, client.ObjectKey{Name: vol1}, &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
				t.Errorf("ThinVolume still there: %v", err)
			}
			e.event("LeftoverStagingUnmounted")
		})
	}
}
