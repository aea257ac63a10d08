package lifecycle

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"

	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// DefaultOrphanGrace is how old a ThinVolume without a PV must be before
// it is collected: far beyond the provisioner's call timeout and retries,
// so that a volume whose PV is about to be made is never taken.
const DefaultOrphanGrace = 15 * time.Minute

// collectOrphans deletes the Ready or Failed ThinVolumes older than
// OrphanGrace that no PV stands for (their PVC was deleted while they
// were being made, or the provisioner crashed before writing the PV), with
// an Event; the node agent then removes the storage through the usual
// finalizer. Volumes made without a name (not by a provisioner) and those
// of lost nodes are left alone, except one its node never made before it
// was deleted from the cluster: no agent will ever make or remove it, it
// holds no data, and its finalizer is released as for any resource of a
// deleted node (handle).
func (d *Detector) collectOrphans(ctx context.Context, vols []thinv1.ThinVolume, nodeOf func(node string) nodeState) error {
	var pvs corev1.PersistentVolumeList
	if err := d.API.List(ctx, &pvs); err != nil {
		return fmt.Errorf("list PVs: %w", err)
	}
	byName := map[string]*corev1.PersistentVolume{}
	for i := range pvs.Items {
		byName[pvs.Items[i].Name] = &pvs.Items[i]
	}
	for i := range vols {
		tv := &vols[i]
		node := nodeOf(tv.Spec.Node)
		neverMade := node.gone && tv.Status.Phase == thinv1.PhaseLost && tv.Resumable()
		if tv.Spec.Name == "" || !tv.DeletionTimestamp.IsZero() || (node.lost && !neverMade) {
			continue
		}
		logger := klog.FromContext(ctx).WithValues("volumeID", tv.Name, "pv", tv.Spec.Name, "node", tv.Spec.Node)
		if pv := byName[tv.Spec.Name]; pv != nil && pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == tv.Name {
			if policy := string(pv.Spec.PersistentVolumeReclaimPolicy); policy != "" && tv.Annotations[wellknown.AnnotationReclaimPolicy] != policy {
				patch := client.MergeFrom(tv.DeepCopy())
				if tv.Annotations == nil {
					tv.Annotations = map[string]string{}
				}
				tv.Annotations[wellknown.AnnotationReclaimPolicy] = policy
				if err := d.Client.Patch(ctx, tv, patch); err != nil && !apierrors.IsNotFound(err) {
					return fmt.Errorf("record reclaim policy of %s: %w", tv.Name, err)
				}
			}
			continue
		}
		if tv.Status.Phase != thinv1.PhaseReady && tv.Status.Phase != thinv1.PhaseFailed && !neverMade {
			continue
		}
		if d.now().Sub(tv.CreationTimestamp.Time) < d.orphanGrace() {
			continue
		}
		if tv.Annotations[wellknown.AnnotationReclaimPolicy] == string(corev1.PersistentVolumeReclaimRetain) {
			if d.reported == nil {
				d.reported = map[string]bool{}
			}
			if !d.reported[tv.Name] {
				d.reported[tv.Name] = true
				logger.Info("PV of a retained volume is gone; the volume is kept")
				d.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "Orphaned", "CollectOrphans",
					"PV %s (reclaim policy Retain) is gone; the volume is kept: delete the ThinVolume to free its storage", tv.Spec.Name)
			}
			continue
		}
		why := "claim deleted or provisioner interrupted while provisioning"
		if neverMade {
			why = "node " + tv.Spec.Node + " was deleted from the cluster before it made the volume"
		}
		logger.Info("no PV stands for the volume after the grace period; deleting it", "grace", d.orphanGrace(), "why", why)
		d.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "OrphanDeleted", "CollectOrphans",
			"no PV %s after %s (%s): deleted", tv.Spec.Name, d.orphanGrace(), why)
		if err := d.Client.Delete(ctx, tv); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete orphan %s: %w", tv.Name, err)
		}
	}
	return nil
}

func (d *Detector) orphanGrace() time.Duration {
	if d.OrphanGrace > 0 {
		return d.OrphanGrace
	}
	return DefaultOrphanGrace
}
