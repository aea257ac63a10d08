package node

import (
	"context"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// The scheduled trim takes a volume only while no stage, unstage, expand
// (volume ID lock) or unpublish of the path it opens (target lock) runs.
func TestTryLockMountSkipsBusyVolumes(t *testing.T) {
	s := New(fake.New("n1", 1<<30), Options{})
	ctx := context.Background()
	for _, key := range []string{"v-1", "/stage/v-1"} {
		unlock, err := s.lock(ctx, key) // an unstage or unpublish in progress
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := s.TryLockMount("v-1", "/stage/v-1"); ok {
			t.Fatalf("TryLockMount took v-1 while %s is locked", key)
		}
		unlock()
		if n := s.locks.Len(); n != 0 {
			t.Fatalf("a failed TryLockMount left %d locks", n)
		}
	}
	unlock, ok := s.TryLockMount("v-1", "/stage/v-1")
	if !ok {
		t.Fatal("TryLockMount of an idle volume failed")
	}
	lockCtx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.lock(lockCtx, "v-1"); err == nil {
		t.Fatal("an unstage got the volume lock during the trim")
	}
	unlock()
	if n := s.locks.Len(); n != 0 {
		t.Fatalf("%d locks left after the trim", n)
	}
}
