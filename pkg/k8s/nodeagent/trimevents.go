package nodeagent

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/trim"
)

// TrimEvents returns a trim.Trimmer Report that posts what a scheduled
// trim gave back to the pool as an Event: Trimmed on the volume's
// ThinVolume (on the node's ThinNode for a whole btrfs pool), TrimFailed
// as a Warning. A trim that discarded nothing posts nothing, so a daily
// trim of an idle volume leaves no daily Event.
func TrimEvents(c client.Reader, rec events.EventRecorder, node string) func(context.Context, trim.Result) {
	return func(ctx context.Context, r trim.Result) {
		if r.Skipped || r.Err == nil && r.Bytes == 0 {
			return
		}
		var obj client.Object = &thinv1.ThinNode{}
		name := node
		if r.VolumeID != "" {
			obj, name = &thinv1.ThinVolume{}, r.VolumeID
		}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, obj); err != nil {
			if !apierrors.IsNotFound(err) {
				klog.ErrorS(err, "trim event: cannot read the object", "volumeID", r.VolumeID, "object", name)
			}
			return
		}
		if r.Err != nil {
			rec.Eventf(obj, nil, corev1.EventTypeWarning, "TrimFailed", "Trim", "trim of %s: %v", r.Path, r.Err)
			return
		}
		rec.Eventf(obj, nil, corev1.EventTypeNormal, "Trimmed", "Trim", "discarded %d bytes (%.1f MiB) of free space to the pool (FITRIM of %s, %s)",
			r.Bytes, float64(r.Bytes)/(1<<20), r.Path, r.Duration.Round(time.Millisecond))
	}
}
