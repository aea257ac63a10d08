package nodeagent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// sightings remembers which resources this agent process has already
// reconciled while they waited for it. The zero value is ready to use.
//
// The first time a resource is seen, the cached copy cannot be behind a
// write of this process (there was none), so the create can go ahead on
// it; from the second time on, the agent's own status write may not have
// reached the cache yet, and the API server must be asked before the pool
// is (stillPending). That saves a round trip on the create's latency path
// without ever asking the backend twice on a stale read.
type sightings struct {
	mu   sync.Mutex
	seen map[types.UID]struct{}
}

// first records uid and reports whether it had not been seen before. A
// resource without a UID (never from the API server) is never "first".
func (s *sightings) first(uid types.UID) bool {
	if uid == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[uid]; ok {
		return false
	}
	if s.seen == nil {
		s.seen = map[types.UID]struct{}{}
	}
	s.seen[uid] = struct{}{}
	return true
}

// forget drops uid: the resource is being deleted, and no create can
// follow (a deletion timestamp is never removed).
func (s *sightings) forget(uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.seen, uid)
}

// pickUp makes sure obj holds the agent's finalizer before any storage is
// made for it, and reports whether obj (read from the cache) is known to
// be current, so the re-read before a create can be skipped.
//
// The router creates resources with the finalizer already set (one API
// write fewer per create); a resource made without it (by hand, or by an
// older controller) gets it here, and the update returns the current
// version.
func pickUp(ctx context.Context, c client.Client, obj client.Object, seen *sightings, operation string) (current bool, err error) {
	if controllerutil.AddFinalizer(obj, wellknown.FinalizerNodeCleanup) {
		start := time.Now()
		if err := c.Update(ctx, obj); err != nil {
			return false, fmt.Errorf("add finalizer: %w", err)
		}
		observeStage(operation, stageFinalizer, start)
		seen.first(obj.GetUID())
		return true, nil
	}
	return seen.first(obj.GetUID()), nil
}
