package nodeagent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// DefaultHealthInterval is how often the agent reads the condition of each
// of its Ready volumes again.
const DefaultHealthInterval = 30 * time.Second

// VolumeHealth keeps the Healthy condition of this node's ThinVolumes
// current: what the pool says of each volume now (its storage missing,
// the pool full, read-only or failed, an object needing an operator), so
// that the controller can tell the claim (pkg/k8s/lifecycle) whether or
// not a pod is using the volume. It is a manager Runnable.
type VolumeHealth struct {
	Client   client.Client
	Pool     backend.Local
	Recorder events.EventRecorder
	Interval time.Duration
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (h *VolumeHealth) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (h *VolumeHealth) Start(ctx context.Context) error {
	interval := h.Interval
	if interval <= 0 {
		interval = DefaultHealthInterval
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if _, err := h.Sweep(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "read the condition of this node's volumes", "node", h.Pool.NodeName())
		}
	}
}

// Sweep reads each Ready volume's condition from the pool and writes the
// ones that changed; it returns how many changed.
func (h *VolumeHealth) Sweep(ctx context.Context) (int, error) {
	node := h.Pool.NodeName()
	var list thinv1.ThinVolumeList
	if err := h.Client.List(ctx, &list); err != nil {
		return 0, fmt.Errorf("list ThinVolumes: %w", err)
	}
	// One listing of the pool for all volumes (one lvs on LVM), not a
	// lookup per volume.
	pooled, err := h.Pool.ListVolumes(ctx)
	if err != nil {
		return 0, fmt.Errorf("list the pool's volumes: %w", err)
	}
	byID := make(map[string]*backend.Volume, len(pooled))
	for _, v := range pooled {
		byID[v.ID] = v
	}
	changed := 0
	for i := range list.Items {
		tv := &list.Items[i]
		if tv.Spec.Node != node || tv.Status.Phase != thinv1.PhaseReady || !tv.DeletionTimestamp.IsZero() {
			continue
		}
		logger := klog.FromContext(ctx).WithValues("volumeID", tv.Name)
		c := h.condition(byID, tv.Name)
		abnormal := c.Abnormal
		if cur := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionHealthy); cur != nil &&
			(cur.Status == metav1.ConditionFalse) == abnormal && cur.Message == c.Message {
			continue
		}
		setHealthy(&tv.Status.Conditions, tv.Generation, c)
		if err := h.Client.Status().Update(ctx, tv); err != nil {
			logger.Error(ignoreConflict(err), "write volume condition")
			continue
		}
		changed++
		if abnormal {
			logger.Info("volume condition abnormal", "reason", c.Reason, "message", c.Message)
			h.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "VolumeConditionAbnormal", "CheckHealth", "%s: %s", c.Reason, c.Message)
		} else {
			logger.Info("volume condition normal again", "message", c.Message)
			h.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "VolumeConditionNormal", "CheckHealth", "%s", c.Message)
		}
	}
	return changed, nil
}

// condition is the pool's view of a volume; one the pool no longer has
// at all is missing.
func (h *VolumeHealth) condition(pooled map[string]*backend.Volume, id string) backend.Condition {
	if v, ok := pooled[id]; ok {
		return v.Condition
	}
	return backend.Condition{Abnormal: true, Reason: backend.ReasonMissing, Message: "the pool of node " + h.Pool.NodeName() + " no longer has the volume"}
}
