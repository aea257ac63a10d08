package nodeagent

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// DefaultStatusInterval is how often the ThinNode is refreshed without a
// change on the pool (the controller treats a ThinNode as stale after a few
// missed refreshes).
const DefaultStatusInterval = 20 * time.Second

// NodeStatus keeps this node's ThinNode current: periodically, and soon
// after each change to the pool (Poke). It is a manager Runnable.
type NodeStatus struct {
	Client client.Client
	// Reader reads the Node object (for the owner reference that lets the
	// garbage collector remove the ThinNode with its node).
	Reader   client.Reader
	Pool     backend.Local
	Interval time.Duration
	// Observe receives every status written (metrics); may be nil.
	Observe func(thinv1.ThinNodeStatus)
	// Recorder, if set, gets a Warning on the ThinNode when strays appear.
	Recorder events.EventRecorder

	strays int32

	poke chan struct{}

	transferAddr atomic.Pointer[string]
}

// SetTransferAddress publishes where this node's agent serves transfers
// (ThinNode status.transferAddress; "" for nowhere) and refreshes the
// ThinNode soon.
func (s *NodeStatus) SetTransferAddress(addr string) {
	s.transferAddr.Store(&addr)
	s.Poke()
}

// Poke asks for a refresh soon; several pokes coalesce.
func (s *NodeStatus) Poke() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// NewNodeStatus returns a NodeStatus with its defaults.
func NewNodeStatus(c client.Client, reader client.Reader, pool backend.Local, interval time.Duration, observe func(thinv1.ThinNodeStatus)) *NodeStatus {
	if interval <= 0 {
		interval = DefaultStatusInterval
	}
	return &NodeStatus{Client: c, Reader: reader, Pool: pool, Interval: interval, Observe: observe, poke: make(chan struct{}, 1)}
}

// Start implements manager.Runnable.
func (s *NodeStatus) Start(ctx context.Context) error {
	ticker := time.NewTicker(s.Interval)
	defer ticker.Stop()
	for {
		if err := s.Update(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "update ThinNode status", "node", s.Pool.NodeName())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-s.poke:
			// Let a burst of changes settle into one write.
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every
// node agent reports its own node.
func (s *NodeStatus) NeedLeaderElection() bool { return false }

// Collect reads the pool into a ThinNode status.
func Collect(ctx context.Context, pool backend.Local, now time.Time) thinv1.ThinNodeStatus {
	h := pool.Health(ctx)
	st := thinv1.ThinNodeStatus{Backend: pool.Kind(), Healthy: h.Healthy, Message: h.Message}
	c, err := pool.Capacity(ctx, "")
	if err != nil {
		st.Healthy, st.Message = false, fmt.Sprintf("capacity: %v", err)
	} else {
		st.TotalBytes, st.UsedBytes, st.ProvisionedBytes = c.TotalBytes, c.UsedBytes, c.ProvisionedBytes
		st.AvailableBytes, st.MaximumVolumeBytes = c.AvailableBytes, c.MaximumVolumeBytes
		st.DataPercent, st.MetadataPercent = round2(c.DataPercent), round2(c.MetadataPercent)
		if c.TotalBytes > 0 {
			st.Overprovision = round2(float64(c.ProvisionedBytes) / float64(c.TotalBytes))
		}
	}
	if vols, err := pool.ListVolumes(ctx); err == nil {
		st.Volumes = int32(len(vols))
	}
	if snaps, err := pool.ListSnapshots(ctx); err == nil {
		st.Snapshots = int32(len(snaps))
	}
	t := metav1.NewTime(now)
	st.UpdateTime = &t
	return st
}

// maxStrayIDs bounds the IDs listed in a ThinNode's status.
const maxStrayIDs = 32

// Strays lists, sorted, the IDs of the volumes and snapshots in the pool
// that no ThinVolume or ThinSnapshot of this node stands for: storage left
// behind while the node was away (its resources removed without it), or
// made by hand. The agent never deletes them: only a resource's deletion
// (its finalizer) removes storage. c lists this node's resources (the
// agent's cache holds exactly those). The pool is read after the
// resources: a resource is always created before its storage and removed
// after it, so an operation in flight is never taken for a stray.
func Strays(ctx context.Context, c client.Reader, pool backend.Local) ([]string, error) {
	node := pool.NodeName()
	known := map[string]bool{}
	var vols thinv1.ThinVolumeList
	if err := c.List(ctx, &vols, client.MatchingLabels{wellknown.LabelNode: node}); err != nil {
		return nil, fmt.Errorf("list ThinVolumes: %w", err)
	}
	for _, tv := range vols.Items {
		known[tv.Name] = true
	}
	var snaps thinv1.ThinSnapshotList
	if err := c.List(ctx, &snaps, client.MatchingLabels{wellknown.LabelNode: node}); err != nil {
		return nil, fmt.Errorf("list ThinSnapshots: %w", err)
	}
	for _, ts := range snaps.Items {
		known[ts.Name] = true
	}
	var out []string
	pv, err := pool.ListVolumes(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pool volumes: %w", err)
	}
	for _, v := range pv {
		if !known[v.ID] {
			out = append(out, v.ID)
		}
	}
	ps, err := pool.ListSnapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pool snapshots: %w", err)
	}
	for _, sn := range ps {
		if !known[sn.ID] {
			out = append(out, sn.ID)
		}
	}
	sort.Strings(out)
	return out, nil
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// Update writes the ThinNode once, creating it if needed.
func (s *NodeStatus) Update(ctx context.Context) error {
	name := s.Pool.NodeName()
	st := Collect(ctx, s.Pool, time.Now())
	if a := s.transferAddr.Load(); a != nil {
		st.TransferAddress = *a
	}
	if ids, err := Strays(ctx, s.Client, s.Pool); err != nil {
		klog.ErrorS(err, "look for strays", "node", name)
		st.Strays = s.strays // keep the last answer
	} else {
		st.Strays = int32(len(ids))
		st.StrayIDs = ids[:min(len(ids), maxStrayIDs)]
	}
	if s.Observe != nil {
		s.Observe(st)
	}
	tn := &thinv1.ThinNode{}
	err := s.Client.Get(ctx, client.ObjectKey{Name: name}, tn)
	if apierrors.IsNotFound(err) {
		tn = &thinv1.ThinNode{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{wellknown.LabelNode: name}}}
		if ref, ok := s.nodeOwner(ctx, name); ok {
			tn.OwnerReferences = []metav1.OwnerReference{ref}
		}
		if err := s.Client.Create(ctx, tn); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create ThinNode %s: %w", name, err)
		}
		klog.InfoS("ThinNode created", "node", name)
		if err := s.Client.Get(ctx, client.ObjectKey{Name: name}, tn); err != nil {
			return fmt.Errorf("get ThinNode %s: %w", name, err)
		}
	} else if err != nil {
		return fmt.Errorf("get ThinNode %s: %w", name, err)
	}
	tn.Status = st
	if err := s.Client.Status().Update(ctx, tn); err != nil {
		return fmt.Errorf("update ThinNode %s status: %w", name, err)
	}
	if st.Strays > s.strays && s.Recorder != nil {
		klog.InfoS("pool holds storage no ThinVolume or ThinSnapshot stands for; kept, an operator decides", "node", name, "strays", st.Strays, "ids", st.StrayIDs)
		s.Recorder.Eventf(tn, nil, corev1.EventTypeWarning, "StrayStorage", "Reconcile",
			"%d volumes or snapshots in the pool have no ThinVolume or ThinSnapshot (kept; see status.strayIDs): %v", st.Strays, st.StrayIDs)
	}
	s.strays = st.Strays
	klog.V(4).InfoS("ThinNode updated", "node", name, "availableBytes", st.AvailableBytes, "healthy", st.Healthy)
	return nil
}

// nodeOwner makes the Node own its ThinNode, so deleting a node from the
// cluster removes its pool record (and with it, its capacity).
func (s *NodeStatus) nodeOwner(ctx context.Context, name string) (metav1.OwnerReference, bool) {
	if s.Reader == nil {
		return metav1.OwnerReference{}, false
	}
	n := &corev1.Node{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		klog.InfoS("ThinNode without owner: cannot read the Node", "node", name, "err", err.Error())
		return metav1.OwnerReference{}, false
	}
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}, true
}
