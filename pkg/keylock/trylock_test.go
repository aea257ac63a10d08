package keylock

import (
	"context"
	"testing"
	"time"
)

func TestTryLockNeverWaits(t *testing.T) {
	l := New()
	unlock, err := l.Lock(context.Background(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.TryLock("vol"); ok {
		t.Fatal("TryLock took a key held by Lock")
	}
	unlock()
	if l.Len() != 0 {
		t.Fatalf("a failed TryLock left %d slots", l.Len())
	}

	tryUnlock, ok := l.TryLock("vol")
	if !ok {
		t.Fatal("TryLock of a free key failed")
	}
	if _, ok := l.TryLock("vol"); ok {
		t.Fatal("TryLock took a key held by TryLock")
	}
	if _, ok := l.TryLock("other"); !ok {
		t.Fatal("TryLock of another key failed")
	}
	got := make(chan struct{})
	go func() {
		u, err := l.Lock(context.Background(), "vol")
		if err != nil {
			t.Error(err)
		} else {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("Lock got a key held by TryLock")
	case <-time.After(50 * time.Millisecond):
	}
	tryUnlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Lock did not get the key after TryLock's unlock")
	}
}
