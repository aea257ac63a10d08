package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

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

// TestHealthzFloodRunsOneCheck floods the node's /healthz, served by
// controller-runtime's handler with the check runNode installs, with
// concurrent requests: all are answered 200, and the pool is checked once.
func TestHealthzFloodRunsOneCheck(t *testing.T) {
	pool := &countingPool{Backend: fake.New("n1", backend.GiB)}
	srv := httptest.NewServer(&healthz.Handler{Checks: map[string]healthz.Checker{"pool": healthCheck(poolHealth(pool))}})
	defer srv.Close()
	const requests = 300
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range requests {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/") // the manager strips its /healthz prefix
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
