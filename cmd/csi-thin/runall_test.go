package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
)

// syncGatedManager is a manager whose cache syncs when synced is closed.
type syncGatedManager struct {
	ctrl.Manager
	synced chan struct{}
}

func (m syncGatedManager) Start(ctx context.Context) error { <-ctx.Done(); return nil }
func (m syncGatedManager) GetCache() cache.Cache           { return gatedCache{synced: m.synced} }

// gatedCache: runAll calls only WaitForCacheSync.
type gatedCache struct {
	cache.Cache
	synced chan struct{}
}

func (c gatedCache) WaitForCacheSync(ctx context.Context) bool {
	select {
	case <-c.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

type startedRunner struct{ started chan struct{} }

func (r startedRunner) Run(ctx context.Context) error { close(r.started); <-ctx.Done(); return nil }

// The CSI server is served before the caches sync (a sidecar connecting
// early must find it answering), gated by synced; the other servers wait
// for the sync.
func TestRunAllServesCSIBeforeSync(t *testing.T) {
	mgr := syncGatedManager{synced: make(chan struct{})}
	csiServer, registration := startedRunner{make(chan struct{})}, startedRunner{make(chan struct{})}
	synced := new(atomic.Bool)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runAll(ctx, mgr, csiServer, synced, registration) }()

	select {
	case <-csiServer.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the CSI server did not start before the caches synced")
	}
	select {
	case <-registration.started:
		t.Fatal("the registration started before the caches synced")
	case <-time.After(100 * time.Millisecond):
	}
	if synced.Load() {
		t.Fatal("synced before the caches synced")
	}
	close(mgr.synced)
	select {
	case <-registration.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the registration did not start after the sync")
	}
	if !synced.Load() {
		t.Error("not marked synced after the sync")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("runAll: %v", err)
	}
}
