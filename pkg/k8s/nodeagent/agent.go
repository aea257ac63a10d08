package nodeagent

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/k8s/snapshotexport"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// CacheOptions makes the agent's cache hold only its own node's
// resources: the API server filters the list and the watch by the
// csi-thin.io/node label (set by the controller at creation), so an agent
// receives nothing of the other nodes' (memory and traffic stay flat as the
// cluster grows, and it needs no data of theirs).
func CacheOptions(node string) map[client.Object]cache.ByObject {
	mine := labels.SelectorFromSet(labels.Set{wellknown.LabelNode: node})
	return map[client.Object]cache.ByObject{
		&thinv1.ThinVolume{}:        {Label: mine},
		&thinv1.ThinSnapshot{}:      {Label: mine},
		&thinv1.ThinGroupSnapshot{}: {Label: mine},
		&thinv1.ThinNode{}:          {Field: fields.OneTermEqualSelector("metadata.name", node)},
	}
}

// reconcileWorkers is how many ThinVolumes (and, separately, ThinSnapshots)
// the agent works on at once. The pool serialises its own mutations; what
// overlaps is each create's API round trips (finalizer, re-read, status),
// which with one worker made a burst of claims wait in line for every
// other claim's round trips.
const reconcileWorkers = 4

// Setup adds the node agent to mgr (whose cache was built with
// CacheOptions): the ThinVolume and ThinSnapshot reconcilers, the
// snapshot exporter (a pool that streams: pkg/k8s/snapshotexport), the
// ThinNode status writer and the labeler of unlabeled resources. It returns the
// status writer (whose Poke the caller may use).
func Setup(mgr ctrl.Manager, pool backend.Local, interval time.Duration, observe func(thinv1.ThinNodeStatus), opts ...Option) (*NodeStatus, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	recorder := mgr.GetEventRecorder("csi-thin-node")
	status := NewNodeStatus(mgr.GetClient(), mgr.GetAPIReader(), pool, interval, observe)
	status.Recorder = recorder
	if err := mgr.Add(status); err != nil {
		return nil, err
	}
	if err := mgr.Add(&VolumeHealth{Client: mgr.GetClient(), Pool: pool, Recorder: recorder}); err != nil {
		return nil, err
	}
	if err := mgr.Add(&Labeler{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Node: pool.NodeName()}); err != nil {
		return nil, err
	}
	volumes := &VolumeReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Pool: pool, Recorder: recorder,
		Changed: status.Poke, Unmount: mount.New("").Unmount, LeftoverStagingGrace: o.leftoverGrace}
	if streams, ok := pool.(backend.Streamer); ok {
		restorer := &snapshotexport.Restorer{Secrets: mgr.GetAPIReader(), Pool: pool, Streams: streams}
		volumes.RestoreExport, volumes.DiscardRestore = restorer.Restore, restorer.Discard
		if o.transfers != nil {
			volumes.Copies = NewPuller(mgr.GetClient(), mgr.GetAPIReader(), pool, streams, o.transfers, recorder)
			volumes.Copies.Changed = status.Poke
			volumes.Copies.Metrics = o.transferMetrics
			if o.tune != nil {
				o.tune(volumes.Copies)
			}
			if err := mgr.Add(volumes.Copies); err != nil {
				return nil, err
			}
		}
	}
	if err := volumes.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("volume reconciler: %w", err)
	}
	if err := (&SnapshotReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Pool: pool, Recorder: recorder, Changed: status.Poke}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("snapshot reconciler: %w", err)
	}
	if streams, ok := pool.(backend.Streamer); ok {
		exporter := &snapshotexport.Reconciler{Client: mgr.GetClient(), Secrets: mgr.GetAPIReader(), Pool: pool, Streams: streams, Recorder: recorder}
		if err := exporter.SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("snapshot exporter: %w", err)
		}
	}
	if groups, ok := pool.(backend.GroupSnapshotter); ok {
		if err := (&GroupSnapshotReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Pool: pool, Groups: groups, Recorder: recorder, Changed: status.Poke}).SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("group snapshot reconciler: %w", err)
		}
	}
	return status, nil
}

// Option changes what Setup sets up.
type Option func(*options)

type options struct {
	transfers       func() *transfer.Client
	transferMetrics *TransferMetrics
	tune            func(*Puller)
	leftoverGrace   time.Duration
}

// WithTransfers makes the agent receive cross-node copies (Puller) with
// the client transfers returns (nil until the node has its transfer
// identity), counted in m (may be nil), if its pool streams.
func WithTransfers(transfers func() *transfer.Client, m *TransferMetrics) Option {
	return func(o *options) { o.transfers, o.transferMetrics = transfers, m }
}

// WithLeftoverStagingGrace sets how long the kubelet has to unstage a
// deleted volume before the agent unmounts a staging mount it left
// (leftover.go; 0: DefaultLeftoverStagingGrace).
func WithLeftoverStagingGrace(d time.Duration) Option {
	return func(o *options) { o.leftoverGrace = d }
}

// WithPullerTuning changes the Puller's settings (tests).
func WithPullerTuning(tune func(*Puller)) Option {
	return func(o *options) { o.tune = tune }
}

// labelInterval is how often the Labeler looks again (a controller older
// than the label may still be creating resources during an upgrade).
const labelInterval = 5 * time.Minute

// Labeler gives this node's resources that lack the csi-thin.io/node label
// (made before the controller set it) their label, so that the agent's
// label-selected cache receives them. It lists only unlabeled resources
// (selector "!csi-thin.io/node"), which is nothing once a cluster is
// migrated.
type Labeler struct {
	Client client.Client
	Reader client.Reader // uncached: the cache never sees unlabeled resources
	Node   string
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (l *Labeler) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (l *Labeler) Start(ctx context.Context) error {
	for {
		if n, err := l.LabelOnce(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "label this node's unlabeled resources", "node", l.Node)
		} else if n > 0 {
			klog.InfoS("labeled resources of this node that had no node label", "node", l.Node, "count", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(labelInterval):
		}
	}
}

// LabelOnce labels this node's unlabeled resources and returns how many.
func (l *Labeler) LabelOnce(ctx context.Context) (int, error) {
	req, err := labels.NewRequirement(wellknown.LabelNode, selection.DoesNotExist, nil)
	if err != nil {
		return 0, err
	}
	unlabeled := client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*req)}
	var objs []client.Object
	var vols thinv1.ThinVolumeList
	if err := l.Reader.List(ctx, &vols, unlabeled); err != nil {
		return 0, fmt.Errorf("list unlabeled ThinVolumes: %w", err)
	}
	for i := range vols.Items {
		if vols.Items[i].Spec.Node == l.Node {
			objs = append(objs, &vols.Items[i])
		}
	}
	var snaps thinv1.ThinSnapshotList
	if err := l.Reader.List(ctx, &snaps, unlabeled); err != nil {
		return 0, fmt.Errorf("list unlabeled ThinSnapshots: %w", err)
	}
	for i := range snaps.Items {
		if snaps.Items[i].Spec.Node == l.Node {
			objs = append(objs, &snaps.Items[i])
		}
	}
	n := 0
	for _, obj := range objs {
		patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
		lb := obj.GetLabels()
		if lb == nil {
			lb = map[string]string{}
		}
		lb[wellknown.LabelNode] = l.Node
		obj.SetLabels(lb)
		if err := l.Client.Patch(ctx, obj, patch); err != nil {
			return n, fmt.Errorf("label %s: %w", obj.GetName(), client.IgnoreNotFound(err))
		}
		n++
	}
	return n, nil
}
