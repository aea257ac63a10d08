package driver

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// healthTimeout bounds one shared health check: it runs on its own
// context, since a caller that gives up must not cancel it for the others.
const healthTimeout = 30 * time.Second

// CachedHealth wraps check so that it runs at most once per interval,
// however many callers ask: /healthz is unauthenticated and on an LVM node
// each check is an lvs, so a flood of requests must not become a flood of
// LVM commands. Callers within interval of the last check get its result;
// concurrent callers after that share one check.
func CachedHealth(check HealthFunc, interval time.Duration) HealthFunc {
	c := &healthCache{check: check, interval: interval, now: time.Now}
	return c.get
}

type healthCache struct {
	check    HealthFunc
	interval time.Duration
	now      func() time.Time
	flight   singleflight.Group

	mu   sync.Mutex
	last backend.Health
	at   time.Time
	ok   bool // last holds a result
}

func (c *healthCache) fresh() (backend.Health, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last, c.ok && c.now().Sub(c.at) < c.interval
}

func (c *healthCache) get(ctx context.Context) backend.Health {
	if h, ok := c.fresh(); ok {
		return h
	}
	ch := c.flight.DoChan("health", func() (any, error) {
		// A flight that ended just before this one began has a fresh result.
		if h, ok := c.fresh(); ok {
			return h, nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), healthTimeout)
		defer cancel()
		h := c.check(cctx)
		c.mu.Lock()
		c.last, c.at, c.ok = h, c.now(), true
		c.mu.Unlock()
		return h, nil
	})
	select {
	case r := <-ch:
		return r.Val.(backend.Health)
	case <-ctx.Done():
		return backend.Health{Message: "health check still running: " + ctx.Err().Error()}
	}
}
