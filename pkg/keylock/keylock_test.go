package keylock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSameKeySerialises(t *testing.T) {
	l := New()
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := l.Lock(context.Background(), "vol")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if got := maxInside.Load(); got != 1 {
		t.Fatalf("at most one holder expected, saw %d", got)
	}
	if l.Len() != 0 {
		t.Fatalf("slots leaked: %d", l.Len())
	}
}

func TestDifferentKeysDoNotBlock(t *testing.T) {
	l := New()
	unlockA, err := l.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer unlockA()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	unlockB, err := l.Lock(ctx, "b")
	if err != nil {
		t.Fatalf("key b blocked by key a: %v", err)
	}
	unlockB()
}

func TestLockHonoursContext(t *testing.T) {
	l := New()
	unlock, _ := l.Lock(context.Background(), "k")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Lock(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	unlock()
	if l.Len() != 0 {
		t.Fatalf("slots leaked after timeout: %d", l.Len())
	}
}

// TestZeroValue: a Locks needs no New, for Lock and TryLock alike.
func TestZeroValue(t *testing.T) {
	var l Locks
	unlock, err := l.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.TryLock("a"); ok {
		t.Error("TryLock took a key that Lock holds")
	}
	unlock()
	var m Locks
	unlock, ok := m.TryLock("b")
	if !ok || m.Len() != 1 {
		t.Fatalf("TryLock on a zero Locks: %v, %d keys", ok, m.Len())
	}
	unlock()
	if l.Len() != 0 || m.Len() != 0 {
		t.Errorf("keys left: %d, %d", l.Len(), m.Len())
	}
}
