package driver

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// countingCheck stands for a pool's health check that runs one storage
// command (lvs) per call; it holds each call until release is closed.
type countingCheck struct {
	calls   atomic.Int32
	release chan struct{}
}

func (c *countingCheck) health(ctx context.Context) backend.Health {
	c.calls.Add(1)
	select {
	case <-c.release:
	case <-ctx.Done():
		return backend.Health{Message: ctx.Err().Error()}
	}
	return backend.Health{Healthy: true, Message: "ok"}
}

// TestCachedHealthFlood: a flood of concurrent health requests runs one
// check per interval, and every request gets its answer.
func TestCachedHealthFlood(t *testing.T) {
	check := &countingCheck{release: make(chan struct{})}
	var clock atomic.Int64 // nanoseconds since start
	start := time.Now()
	c := &healthCache{check: check.health, interval: 5 * time.Second, now: func() time.Time { return start.Add(time.Duration(clock.Load())) }}

	flood := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		var healthy atomic.Int32
		for range n {
			wg.Go(func() {
				if c.get(context.Background()).Healthy {
					healthy.Add(1)
				}
			})
		}
		wg.Wait()
		if int(healthy.Load()) != n {
			t.Fatalf("%d of %d requests answered healthy", healthy.Load(), n)
		}
	}
	// The first flood finds the check running: hold it until many wait.
	go func() {
		for check.calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		close(check.release)
	}()
	flood(200)
	if n := check.calls.Load(); n != 1 {
		t.Fatalf("200 concurrent requests ran %d checks, want 1", n)
	}
	clock.Add(int64(4 * time.Second))
	flood(200)
	if n := check.calls.Load(); n != 1 {
		t.Fatalf("requests within the interval ran %d checks in all, want 1", n)
	}
	clock.Add(int64(2 * time.Second))
	flood(200)
	if n := check.calls.Load(); n != 2 {
		t.Fatalf("requests after the interval ran %d checks in all, want 2", n)
	}
}

// TestCachedHealthCallerGivesUp: a request that times out while the check
// hangs gets an unhealthy answer at once, and does not cancel the check
// the others share.
func TestCachedHealthCallerGivesUp(t *testing.T) {
	check := &countingCheck{release: make(chan struct{})}
	get := CachedHealth(check.health, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if h := get(ctx); h.Healthy {
		t.Fatalf("answer from a check that has not finished: %+v", h)
	}
	done := make(chan backend.Health)
	go func() { done <- get(context.Background()) }()
	close(check.release)
	if h := <-done; !h.Healthy {
		t.Fatalf("the shared check was cancelled with its first caller: %+v", h)
	}
	if n := check.calls.Load(); n != 1 {
		t.Fatalf("%d checks, want 1", n)
	}
}
