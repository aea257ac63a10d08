package lifecycle

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
)

// annotationHealthReported records on a ThinVolume which abnormal
// condition its claim was told of (reason@transition time), so that each
// is told once, across controller restarts, and its end is told too.
const annotationHealthReported = "csi-thin.io/health-reported"

// Events on the PV and PVC of a volume whose condition changed. The
// kubelet posts VolumeConditionAbnormal on the pods using a volume; these
// reach the claim whether or not a pod uses it (what the external health
// monitor would do, which this project cannot obtain).
const (
	ReasonVolumeConditionAbnormal = "VolumeConditionAbnormal"
	ReasonVolumeConditionNormal   = "VolumeConditionNormal"
)

// reportHealth tells the claim of each volume whose Healthy condition (the
// node agent keeps it current) turned False, and again when it is True
// once more.
func (d *Detector) reportHealth(ctx context.Context, vols []thinv1.ThinVolume) error {
	for i := range vols {
		tv := &vols[i]
		if tv.Spec.Name == "" || !tv.DeletionTimestamp.IsZero() {
			continue
		}
		reported := tv.Annotations[annotationHealthReported]
		c := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionHealthy)
		var key string
		switch {
		case c != nil && c.Status == metav1.ConditionFalse:
			key = c.Reason + "@" + c.LastTransitionTime.UTC().Format(time.RFC3339)
			if key == reported {
				continue
			}
			d.tellClaim(ctx, tv.Name, tv.Spec.Name, corev1.EventTypeWarning, ReasonVolumeConditionAbnormal,
				fmt.Sprintf("volume %s on node %s: %s: %s", tv.Name, tv.Spec.Node, c.Reason, c.Message))
		case reported != "":
			d.tellClaim(ctx, tv.Name, tv.Spec.Name, corev1.EventTypeNormal, ReasonVolumeConditionNormal,
				fmt.Sprintf("volume %s on node %s is healthy again", tv.Name, tv.Spec.Node))
		default:
			continue
		}
		patch := client.MergeFrom(tv.DeepCopy())
		if key == "" {
			delete(tv.Annotations, annotationHealthReported)
		} else {
			if tv.Annotations == nil {
				tv.Annotations = map[string]string{}
			}
			tv.Annotations[annotationHealthReported] = key
		}
		if err := d.Client.Patch(ctx, tv, patch); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("record the health reported for %s: %w", tv.Name, err)
		}
		klog.FromContext(ctx).V(2).Info("told the claim of the volume's condition", "volumeID", tv.Name, "abnormal", key != "")
	}
	return nil
}
