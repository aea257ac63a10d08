// Package lifecycle is the controller's watch over nodes that go away: a
// node deleted from the cluster, or one whose agent stopped reporting for
// longer than a grace period. Their ThinVolumes and ThinSnapshots are
// marked Lost (status, Events on the resource, its PV and PVC, a metric),
// so that operators see what is unreachable and the router deletes them
// without waiting for an agent that will not come. It runs in the
// controller Deployment, in the elected leader only.
package lifecycle

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"

	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Defaults for Detector.
const (
	// DefaultLostAfter: an agent silent this long is gone (its ThinNode is
	// refreshed every 20 s; the router stops placing volumes there after
	// 2 minutes already).
	DefaultLostAfter = 5 * time.Minute
	DefaultInterval  = 30 * time.Second
)

// scansPerLostAfter: with no Interval set, a node is checked at least this
// many times within LostAfter, so a short LostAfter is not stretched by
// up to a whole DefaultInterval.
const scansPerLostAfter = 6

// Detector marks the resources of lost nodes. It is a manager Runnable.
type Detector struct {
	// Client reads the csi-thin resources (from the cache) and writes.
	Client client.Client
	// API reads Nodes, PVs and PVCs (uncached: read rarely).
	API       client.Reader
	Recorder  events.EventRecorder
	LostAfter time.Duration
	Interval  time.Duration
	Now       func() time.Time
	Metrics   *Metrics
	// CollectOrphans turns on the deletion of ThinVolumes that no PV
	// stands for after OrphanGrace (0: DefaultOrphanGrace).
	CollectOrphans bool
	OrphanGrace    time.Duration
	// Exports deletes the export of a ThinSnapshot deleted on a node that
	// is gone for good, whose agent never will (nil: such a snapshot keeps
	// its export finalizer).
	Exports ExportDeleter

	reported map[string]bool // orphans already announced (retained ones)
}

// ExportDeleter deletes a deleted ThinSnapshot's export from its store
// and then removes the snapshot's export finalizer
// (snapshotexport.GoneNodeExports).
type ExportDeleter interface {
	DeleteExport(ctx context.Context, ts *thinv1.ThinSnapshot) error
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: one
// replica judges, the others wait.
func (d *Detector) NeedLeaderElection() bool { return true }

// Start implements manager.Runnable.
func (d *Detector) Start(ctx context.Context) error {
	interval := d.interval()
	for {
		if err := d.Scan(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "scan for lost nodes")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// interval is the time between two scans: Interval if set, else
// DefaultInterval or a sixth of LostAfter, whichever is shorter.
func (d *Detector) interval() time.Duration {
	if d.Interval > 0 {
		return d.Interval
	}
	return min(DefaultInterval, d.lostAfter()/scansPerLostAfter)
}

func (d *Detector) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Detector) lostAfter() time.Duration {
	if d.LostAfter > 0 {
		return d.LostAfter
	}
	return DefaultLostAfter
}

// nodeState is what a scan knows of one node.
type nodeState struct {
	gone bool   // the Node object does not exist
	lost bool   // gone, or its agent silent beyond LostAfter
	why  string // for Events and logs
}

// Scan looks at every node that holds resources once.
func (d *Detector) Scan(ctx context.Context) error {
	var vols thinv1.ThinVolumeList
	if err := d.Client.List(ctx, &vols); err != nil {
		return fmt.Errorf("list ThinVolumes: %w", err)
	}
	var snaps thinv1.ThinSnapshotList
	if err := d.Client.List(ctx, &snaps); err != nil {
		return fmt.Errorf("list ThinSnapshots: %w", err)
	}
	states := map[string]*nodeState{}
	state := func(node string) (*nodeState, error) {
		if s, ok := states[node]; ok {
			return s, nil
		}
		s, err := d.judge(ctx, node)
		if err != nil {
			return nil, err
		}
		states[node] = s
		return s, nil
	}
	lostVols, lostSnaps := map[string]int{}, map[string]int{}
	for i := range vols.Items {
		tv := &vols.Items[i]
		s, err := state(tv.Spec.Node)
		if err != nil {
			return err
		}
		if !s.lost || d.now().Sub(tv.CreationTimestamp.Time) < d.lostAfter() {
			continue
		}
		lostVols[tv.Spec.Node]++
		if err := d.handle(ctx, tv, tv.Spec.Node, &tv.Status.Phase, &tv.Status.Conditions, tv.Generation, tv.Spec.Name, s); err != nil {
			return err
		}
	}
	for i := range snaps.Items {
		ts := &snaps.Items[i]
		s, err := state(ts.Spec.Node)
		if err != nil {
			return err
		}
		if !s.lost || d.now().Sub(ts.CreationTimestamp.Time) < d.lostAfter() {
			continue
		}
		lostSnaps[ts.Spec.Node]++
		if err := d.handle(ctx, ts, ts.Spec.Node, &ts.Status.Phase, &ts.Status.Conditions, ts.Generation, "", s); err != nil {
			return err
		}
	}
	var groups thinv1.ThinGroupSnapshotList
	if err := d.Client.List(ctx, &groups); err != nil {
		return fmt.Errorf("list ThinGroupSnapshots: %w", err)
	}
	for i := range groups.Items {
		g := &groups.Items[i]
		s, err := state(g.Spec.Node)
		if err != nil {
			return err
		}
		if !s.lost || d.now().Sub(g.CreationTimestamp.Time) < d.lostAfter() {
			continue
		}
		if err := d.handle(ctx, g, g.Spec.Node, &g.Status.Phase, &g.Status.Conditions, g.Generation, "", s); err != nil {
			return err
		}
	}
	if d.Metrics != nil {
		d.Metrics.set(lostVols, lostSnaps)
	}
	if err := d.reportHealth(ctx, vols.Items); err != nil {
		return err
	}
	if d.CollectOrphans {
		return d.collectOrphans(ctx, vols.Items, func(node string) nodeState {
			if s := states[node]; s != nil {
				return *s
			}
			return nodeState{}
		})
	}
	return nil
}

// judge decides whether node is lost.
func (d *Detector) judge(ctx context.Context, node string) (*nodeState, error) {
	n := &corev1.Node{}
	if err := d.API.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		if apierrors.IsNotFound(err) {
			return &nodeState{gone: true, lost: true, why: "node " + node + " was deleted from the cluster"}, nil
		}
		return nil, fmt.Errorf("get Node %s: %w", node, err)
	}
	tn := &thinv1.ThinNode{}
	if err := d.Client.Get(ctx, client.ObjectKey{Name: node}, tn); err != nil {
		if apierrors.IsNotFound(err) {
			return &nodeState{lost: true, why: "no csi-thin node agent ever reported on node " + node}, nil
		}
		return nil, fmt.Errorf("get ThinNode %s: %w", node, err)
	}
	if tn.Status.UpdateTime == nil || d.now().Sub(tn.Status.UpdateTime.Time) > d.lostAfter() {
		last := "never"
		if tn.Status.UpdateTime != nil {
			last = tn.Status.UpdateTime.UTC().Format(time.RFC3339)
		}
		return &nodeState{lost: true, why: fmt.Sprintf("the csi-thin node agent on %s has not reported since %s", node, last)}, nil
	}
	return &nodeState{}, nil
}

// handle marks one resource of a lost node Lost, and releases the
// finalizer of a deleted one whose Node is gone for good (no agent can
// ever remove the storage, and the PVC's deletion must complete). A
// deleted snapshot's export (in an object store, which any node or the
// controller reaches) is deleted through d.Exports.
func (d *Detector) handle(ctx context.Context, obj client.Object, node string, phase *thinv1.Phase, conds *[]metav1.Condition, generation int64, pvName string, s *nodeState) error {
	logger := klog.FromContext(ctx).WithValues(idKey(obj), obj.GetName(), "node", node)
	if !obj.GetDeletionTimestamp().IsZero() {
		if !s.gone {
			return nil // the agent, back, finishes the deletion
		}
		if err := ReleaseFinalizer(ctx, d.Client, d.Recorder, obj, s.why); err != nil {
			return err
		}
		if ts, ok := obj.(*thinv1.ThinSnapshot); ok && d.Exports != nil && controllerutil.ContainsFinalizer(ts, wellknown.FinalizerExport) {
			// A store that fails now is tried again by the next scan; the
			// other nodes' resources are judged meanwhile.
			if err := d.Exports.DeleteExport(ctx, ts); err != nil {
				logger.Error(err, "delete the export of a snapshot deleted on a gone node; next scan retries")
			}
		}
		return nil
	}
	if *phase == thinv1.PhaseLost || *phase == thinv1.PhaseFailed {
		return nil
	}
	*phase = thinv1.PhaseLost
	apimeta.SetStatusCondition(conds, metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: thinv1.ReasonNodeLost, Message: s.why, ObservedGeneration: generation})
	if err := d.Client.Status().Update(ctx, obj); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // the next scan sees the new version
		}
		return fmt.Errorf("mark %s lost: %w", obj.GetName(), err)
	}
	logger.Info("marked lost", "reason", s.why)
	d.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, thinv1.ReasonNodeLost, "Detect", "%s", s.why)
	if pvName != "" {
		d.tellClaim(ctx, obj.GetName(), pvName, corev1.EventTypeWarning, thinv1.ReasonNodeLost, fmt.Sprintf("volume %s is unreachable: %s", obj.GetName(), s.why))
	}
	return nil
}

// tellClaim puts a verdict on a volume where users look: on the PV and its
// PVC (the PV must still be the volume's, and the PVC the one it is bound to).
func (d *Detector) tellClaim(ctx context.Context, volumeID, pvName, eventType, reason, msg string) {
	pv := &corev1.PersistentVolume{}
	if err := d.API.Get(ctx, client.ObjectKey{Name: pvName}, pv); err != nil {
		return
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle != volumeID {
		return
	}
	d.Recorder.Eventf(pv, nil, eventType, reason, "Detect", "%s", msg)
	if ref := pv.Spec.ClaimRef; ref != nil {
		pvc := &corev1.PersistentVolumeClaim{}
		if err := d.API.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, pvc); err == nil && pvc.UID == ref.UID {
			d.Recorder.Eventf(pvc, nil, eventType, reason, "Detect", "%s", msg)
		}
	}
}

// ReleaseFinalizer removes the node agent's finalizer from a resource whose
// node will never remove its storage, with an Event that says why.
func ReleaseFinalizer(ctx context.Context, c client.Client, rec events.EventRecorder, obj client.Object, why string) error {
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	if !controllerutil.RemoveFinalizer(obj, wellknown.FinalizerNodeCleanup) {
		return nil
	}
	if err := c.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release finalizer of %s: %w", obj.GetName(), err)
	}
	klog.FromContext(ctx).Info("finalizer released: the node cannot remove the storage", idKey(obj), obj.GetName(), "reason", why)
	if rec != nil {
		rec.Eventf(obj, nil, corev1.EventTypeWarning, "FinalizerReleased", "Delete", "deleted without its node: %s", why)
	}
	return nil
}

func idKey(obj client.Object) string {
	switch obj.(type) {
	case *thinv1.ThinSnapshot:
		return "snapshotID"
	case *thinv1.ThinGroupSnapshot:
		return "groupSnapshotID"
	}
	return "volumeID"
}

// Metrics counts the resources on lost nodes.
type Metrics struct {
	vols, snaps *prometheus.GaugeVec
}

// NewMetrics registers the gauges with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		vols: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "csi_thin", Name: "lost_volumes",
			Help: "ThinVolumes whose node is deleted or whose agent is silent beyond the grace period."}, []string{"node"}),
		snaps: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "csi_thin", Name: "lost_snapshots",
			Help: "ThinSnapshots whose node is deleted or whose agent is silent beyond the grace period."}, []string{"node"}),
	}
	for _, c := range []prometheus.Collector{m.vols, m.snaps} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) set(vols, snaps map[string]int) {
	m.vols.Reset()
	m.snaps.Reset()
	for n, c := range vols {
		m.vols.WithLabelValues(n).Set(float64(c))
	}
	for n, c := range snaps {
		m.snaps.WithLabelValues(n).Set(float64(c))
	}
}
