package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// A volume still staged when its node died, its pod already unpublished,
// stays mounted at the kubelet's staging path after the node returns: its
// PV was deleted meanwhile, nothing of the pod is left for the kubelet to
// rebuild the volume from, and it does not unstage a volume it has no PV
// for. The
// agent never deletes a mounted volume, so without help that volume and
// its ThinVolume would wait for an operator's umount. The agent unmounts
// such a leftover itself, but only when nothing else can be using it:
//   - the ThinVolume is being deleted (its claim and PV are gone, so no
//     pod can be given the volume again);
//   - every mount of the volume is this driver's staging path (a pod's
//     publish mount, or any other mount, means a user: hands off);
//   - the deletion began at least the grace (LeftoverStagingGrace) ago,
//     so that the kubelet's own unstage, which normally follows a pod's
//     end within seconds, is never raced. Until then the volume is tried
//     again when the grace ends, not after the backoff of a failure.

// DefaultLeftoverStagingGrace is how long the kubelet has to unstage a
// deleted volume before the agent unmounts its staging path itself.
const DefaultLeftoverStagingGrace = 2 * time.Minute

// graceError is a delete refused for a leftover staging mount whose grace
// has not ended: the deletion is tried again after remaining.
type graceError struct {
	error
	remaining time.Duration
}

func (e *graceError) Unwrap() error { return e.error }

// deletedResult is what Reconcile returns after a delete: a wait for the
// grace is a requeue at its end, not an error.
func deletedResult(err error) (ctrl.Result, error) {
	var g *graceError
	if errors.As(err, &g) {
		return ctrl.Result{RequeueAfter: g.remaining}, nil
	}
	return ctrl.Result{}, err
}

// stagingPath matches the kubelet's staging (global) mount of a volume of
// this driver: <kubelet root>/plugins/kubernetes.io/csi/<driver>/<sha256 of
// the volume handle>/globalmount.
var stagingPath = regexp.MustCompile(`/plugins/kubernetes\.io/csi/` + regexp.QuoteMeta(wellknown.DriverName) + `/[0-9a-f]{64}/globalmount$`)

// leftoverStaging returns the mount points of a delete refused because the
// volume is mounted only at this driver's staging paths.
func leftoverStaging(err error) ([]string, bool) {
	var mounted *backend.MountedError
	if !errors.As(err, &mounted) || len(mounted.MountPoints) == 0 {
		return nil, false
	}
	for _, p := range mounted.MountPoints {
		if path.Clean(p) != p || !stagingPath.MatchString(p) {
			return nil, false
		}
	}
	return mounted.MountPoints, true
}

// deleteVolume deletes tv's storage, first unmounting a staging mount the
// kubelet left behind (see above).
func (r *VolumeReconciler) deleteVolume(ctx context.Context, tv *thinv1.ThinVolume) error {
	err := r.Pool.DeleteVolume(ctx, tv.Name)
	paths, ok := leftoverStaging(err)
	if !ok || r.Unmount == nil {
		return err
	}
	if remaining := r.leftoverGrace() - r.now().Sub(tv.DeletionTimestamp.Time); remaining > 0 {
		return &graceError{error: err, remaining: remaining}
	}
	logger := klog.FromContext(ctx)
	for _, p := range paths {
		if uerr := r.Unmount(p); uerr != nil {
			return fmt.Errorf("%w; unmounting the kubelet's leftover staging mount %s failed: %v", err, p, uerr)
		}
		logger.Info("unmounted a staging mount the kubelet left behind", "path", p)
		r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "LeftoverStagingUnmounted", "DeleteVolume",
			"unmounted %s: the volume's claim and PV are gone and no pod uses it, but the kubelet left it staged (its node was away)", p)
	}
	return r.Pool.DeleteVolume(ctx, tv.Name)
}

func (r *VolumeReconciler) leftoverGrace() time.Duration {
	if r.LeftoverStagingGrace > 0 {
		return r.LeftoverStagingGrace
	}
	return DefaultLeftoverStagingGrace
}

func (r *VolumeReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}
