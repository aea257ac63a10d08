// Package router is the backend.Backend of the CSI controller in a
// Kubernetes cluster. It owns no storage: it turns each call into a
// ThinVolume or ThinSnapshot resource for the node that holds (or will
// hold) the storage, and waits — on an informer, not a poll — for that
// node's agent to report the outcome in the resource's status. Capacity
// comes from the ThinNode resources the node agents keep current.
//
// The CSI ControllerServer is the same code in local and Kubernetes mode;
// only the Backend it is given differs.
package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Defaults for Config.
const (
	DefaultStaleAfter  = 2 * time.Minute
	DefaultWaitTimeout = 5 * time.Minute
	// recheckInterval re-reads a resource while waiting even without an
	// event: a safety net against a missed notification, not the
	// mechanism.
	recheckInterval = 10 * time.Second
	// cleanupTimeout bounds the deletion of a failed resource after the
	// caller's context has already ended.
	cleanupTimeout = 10 * time.Second
)

// Config tunes a Router.
type Config struct {
	// StaleAfter: a ThinNode whose status is older than this (its agent is
	// gone) offers no capacity and receives no new volumes.
	StaleAfter time.Duration
	// WaitTimeout bounds a wait when the caller's context has no deadline.
	WaitTimeout time.Duration
	// Now is the clock (tests replace it).
	Now func() time.Time
	// Transfers, when set, lets a clone or restore land on another node
	// than its source's (crossnode.go); it returns the controller's token
	// issuer, nil while the transfer trust is not loaded yet. Nil: such a
	// request is FailedPrecondition.
	Transfers func() *transfer.Issuer
}

// Router implements backend.Backend over the csi-thin custom resources.
type Router struct {
	client client.Client // writes, and reads from the informer cache
	api    client.Reader // uncached reads where the cache may lag
	cfg    Config
	events *notifier
	synced func(context.Context) bool
}

var _ backend.Backend = (*Router)(nil)

// New returns a Router. c should read from the informer cache that
// informers belong to; api reads from the API server directly. New
// registers event handlers on the ThinVolume, ThinSnapshot,
// ThinGroupSnapshot and ThinNode informers, so the cache must serve those
// types.
func New(ctx context.Context, c client.Client, api client.Reader, informers cache.Informers, cfg Config) (*Router, error) {
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = DefaultWaitTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Router{client: c, api: api, cfg: cfg, events: newNotifier(), synced: informers.WaitForCacheSync}
	for _, obj := range []client.Object{&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinGroupSnapshot{}, &thinv1.ThinNode{}} {
		inf, err := informers.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, fmt.Errorf("informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(r.events.handler()); err != nil {
			return nil, fmt.Errorf("event handler for %T: %w", obj, err)
		}
	}
	return r, nil
}

// Kind implements backend.Backend: the router fronts pools of any kind.
func (r *Router) Kind() string { return "kubernetes" }

// Health is healthy once the informer caches have synced: before that,
// every answer about volumes would be a guess.
func (r *Router) Health(ctx context.Context) backend.Health {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if !r.synced(ctx) {
		return backend.Health{Healthy: false, Message: "caches of csi-thin resources not synced with the API server"}
	}
	return backend.Health{Healthy: true, Message: "ok"}
}

// Capacity reports the named node's pool, or the largest pool when node
// is empty. A node without a (fresh, healthy) ThinNode has no capacity.
func (r *Router) Capacity(ctx context.Context, node string) (backend.Capacity, error) {
	if node != "" {
		tn := &thinv1.ThinNode{}
		if err := r.client.Get(ctx, client.ObjectKey{Name: node}, tn); err != nil {
			if apierrors.IsNotFound(err) {
				klog.V(4).InfoS("no ThinNode: no capacity", "node", node)
				return backend.Capacity{}, nil
			}
			return backend.Capacity{}, fmt.Errorf("get ThinNode %s: %w", node, err)
		}
		return r.capacityOf(tn), nil
	}
	nodes, err := r.usableNodes(ctx)
	if err != nil {
		return backend.Capacity{}, err
	}
	var best backend.Capacity
	for i := range nodes {
		if c := r.capacityOf(&nodes[i]); c.AvailableBytes > best.AvailableBytes || best.TotalBytes == 0 {
			best = c
		}
	}
	return best, nil
}

func (r *Router) capacityOf(tn *thinv1.ThinNode) backend.Capacity {
	s := tn.Status
	c := backend.Capacity{
		TotalBytes:         s.TotalBytes,
		UsedBytes:          s.UsedBytes,
		ProvisionedBytes:   s.ProvisionedBytes,
		AvailableBytes:     s.AvailableBytes,
		MaximumVolumeBytes: s.MaximumVolumeBytes,
		DataPercent:        s.DataPercent,
		MetadataPercent:    s.MetadataPercent,
	}
	if !r.usable(tn) {
		c.AvailableBytes = 0
		c.MaximumVolumeBytes = 0
	}
	return c
}

// usable: the node agent is alive (recent status) and its pool healthy.
func (r *Router) usable(tn *thinv1.ThinNode) bool {
	s := tn.Status
	return s.Healthy && s.UpdateTime != nil && r.cfg.Now().Sub(s.UpdateTime.Time) <= r.cfg.StaleAfter
}

func (r *Router) usableNodes(ctx context.Context) ([]thinv1.ThinNode, error) {
	var list thinv1.ThinNodeList
	if err := r.client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list ThinNodes: %w", err)
	}
	var out []thinv1.ThinNode
	for _, tn := range list.Items {
		if r.usable(&tn) {
			out = append(out, tn)
		}
	}
	return out, nil
}

// waitContext applies the default wait bound to a context without deadline.
func (r *Router) waitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, r.cfg.WaitTimeout)
}

// wait re-reads obj (by name) after every change event until check says
// done or fails, or ctx ends. check sees found=false once the object is
// gone. Reads go to the cache: events come from the same informer, so
// after a wake-up the cache holds at least that version.
func (r *Router) wait(ctx context.Context, obj client.Object, check func(found bool) (bool, error)) error {
	name := obj.GetName()
	changed, stop := r.events.subscribe(name)
	defer stop()
	ticker := time.NewTicker(recheckInterval)
	defer ticker.Stop()
	for {
		found := true
		if err := r.client.Get(ctx, client.ObjectKey{Name: name}, obj); err != nil {
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("get %s: %w", name, err)
			}
			found = false
		}
		if done, err := check(found); done || err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ticker.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// nodeVerdict is what waitVerdict reads of a resource's status.
type nodeVerdict struct {
	node, code, message string
	phase               thinv1.Phase
	conditions          []metav1.Condition
	// resumable: the node had not made the resource when it was judged
	// lost, so Lost is not final: the node, back, makes it (Resumed).
	resumable bool
}

// waitVerdict waits until the node has made the resource obj (Ready), or
// failed to (Failed: obj is deleted so that a retry starts afresh), or is
// lost (Lost: obj is kept, the node may come back with it), and returns
// the node's error. what names the resource in a timeout's error. A
// resumable resource's Lost is waited out like Pending: the call in
// flight when its node returns succeeds, where an immediate error would
// leave the claim to its sidecar's retries, backing off to 5 min apart.
func (r *Router) waitVerdict(ctx context.Context, obj client.Object, what string, state func() nodeVerdict) error {
	wctx, cancel := r.waitContext(ctx)
	defer cancel()
	var nodeErr error
	seen := false
	err := r.wait(wctx, obj, func(found bool) (bool, error) {
		if !found {
			if seen {
				return true, fmt.Errorf("%s was deleted before node %s made it: %w", what, state().node, backend.ErrBusy)
			}
			return false, nil // not in the cache yet
		}
		seen = true
		if obj.GetDeletionTimestamp() != nil {
			return true, fmt.Errorf("%s is being deleted before node %s made it: %w", what, state().node, backend.ErrBusy)
		}
		s := state()
		switch s.phase {
		case thinv1.PhaseReady:
			return true, nil
		case thinv1.PhaseLost:
			if s.resumable {
				return false, nil
			}
			nodeErr = lostError(s.node, s.conditions)
			return true, nil
		case thinv1.PhaseFailed:
			nodeErr = statusError(s.node, s.code, s.message)
			if nodeErr == nil {
				nodeErr = &nodeError{node: s.node, message: "failed without a reason", sentinel: errInternal}
			}
			return true, nil
		}
		return false, nil
	})
	s := state()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			if s.phase == thinv1.PhaseLost {
				return fmt.Errorf("%s not made yet (%v); node %s makes it when it is back: %w", what, lostError(s.node, s.conditions), s.node, err)
			}
			return fmt.Errorf("%s still %s on node %s (is the csi-thin node agent running there?): %w", what, phaseOf(s.phase), s.node, err)
		}
		return err
	}
	if nodeErr != nil && s.phase == thinv1.PhaseFailed {
		klog.FromContext(ctx).Info("the node failed to make it; deleting the resource so a retry starts afresh",
			idKeyOf(obj), obj.GetName(), "node", s.node, "code", s.code, "err", nodeErr.Error())
		r.deleteQuietly(ctx, obj)
	}
	return nodeErr
}

// deleteQuietly removes a resource even when ctx has ended (a failed
// resource must go so that the retry starts afresh).
func (r *Router) deleteQuietly(ctx context.Context, obj client.Object) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := r.client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		klog.ErrorS(err, "delete failed resource", idKeyOf(obj), obj.GetName())
	}
}

// agentFinalizer is set on every resource the router creates: the node
// agent would add it before making any storage anyway, and setting it at
// creation saves that API write on each create's latency path. It also
// means a resource no agent has picked up yet is deleted the same way as
// any other: by its agent, or, when its node is lost, as lost.
func agentFinalizer() []string {
	return []string{wellknown.FinalizerNodeCleanup}
}
