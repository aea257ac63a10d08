package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/healthz"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// countingPool counts its health checks, each of which stands for one
// storage command (an lvs on an LVM node).
type countingPool struct {
	*fake.Backend
	checks atomic.Int32
}

func (p *countingPool) Health(ctx context.Context) backend.Health {
	p.checks.Add(1)
	return p.Backend.Health(ctx)
}

// TestReadyzFloodRunsOneCheck floods the node's /readyz, served by
// controller-runtime's handler with the check runNode installs, with
// concurrent requests: all are answered 200, and the pool is checked once.
func TestReadyzFloodRunsOneCheck(t *testing.T) {
	pool := &countingPool{Backend: fake.New("n1", backend.GiB)}
	srv := httptest.NewServer(&healthz.Handler{Checks: map[string]healthz.Checker{"pool": healthCheck(poolHealth(pool))}})
	defer srv.Close()
	const requests = 300
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range requests {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/") // the manager strips its /readyz prefix
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != requests {
		t.Errorf("%d of %d requests answered 200", ok.Load(), requests)
	}
	if n := pool.checks.Load(); n != 1 {
		t.Fatalf("%d requests within the %v interval ran %d pool checks, want 1", requests, poolHealthInterval, n)
	}
}

// probeHandlers collects the checks addProbes installs, as the manager
// would serve them.
type probeHandlers struct{ live, ready map[string]healthz.Checker }

func (p *probeHandlers) AddHealthzCheck(name string, c healthz.Checker) error {
	p.live[name] = c
	return nil
}

func (p *probeHandlers) AddReadyzCheck(name string, c healthz.Checker) error {
	p.ready[name] = c
	return nil
}

// TestProbesLivenessIgnoresPool installs the node's probes over a pool that
// is unhealthy, and over one whose check hangs (an lvs on a loaded node):
// liveness answers 200 at once in both, so the kubelet never restarts an
// agent (and kills its copies) for its pool; readiness reports the pool.
func TestProbesLivenessIgnoresPool(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	cases := []struct {
		name        string
		check       func(context.Context) backend.Health
		readyWithin time.Duration
		wantReady   int // 0: no answer within readyWithin
	}{
		{"healthy", func(context.Context) backend.Health { return backend.Health{Healthy: true, Message: "ok"} }, 5 * time.Second, http.StatusOK},
		{"unhealthy", func(context.Context) backend.Health { return backend.Health{Message: "metadata 97% full"} }, 5 * time.Second, http.StatusInternalServerError},
		{"hanging", func(ctx context.Context) backend.Health {
			select {
			case <-hang:
			case <-ctx.Done():
			}
			return backend.Health{Message: "timed out"}
		}, 200 * time.Millisecond, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &probeHandlers{live: map[string]healthz.Checker{}, ready: map[string]healthz.Checker{}}
			if err := addProbes(p, "pool", tc.check); err != nil {
				t.Fatal(err)
			}
			get := func(checks map[string]healthz.Checker, timeout time.Duration) int {
				srv := httptest.NewServer(&healthz.Handler{Checks: checks})
				defer srv.Close()
				c := http.Client{Timeout: timeout}
				resp, err := c.Get(srv.URL + "/")
				if err != nil {
					return 0 // no answer within timeout
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := get(p.live, 5*time.Second); code != http.StatusOK {
				t.Errorf("liveness answered %d, want 200 whatever the pool", code)
			}
			if code := get(p.ready, tc.readyWithin); code != tc.wantReady {
				t.Errorf("readiness answered %d, want %d", code, tc.wantReady)
			}
		})
	}
}
