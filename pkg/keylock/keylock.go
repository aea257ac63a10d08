// Package keylock serialises work per key (a volume ID, a request name, a
// target path) so that concurrent duplicates of one CSI call queue up and
// see each other's result, while calls on different keys run in parallel.
package keylock

import (
	"context"
	"sync"
)

// Locks is a set of per-key mutexes that honour context cancellation.
// The zero value is ready to use; a Locks must not be copied after first
// use.
type Locks struct {
	mu    sync.Mutex
	slots map[string]*slot
}

type slot struct {
	ch   chan struct{} // holds one token while the key is free
	refs int
}

// New returns an empty lock set.
func New() *Locks { return &Locks{slots: map[string]*slot{}} }

// Lock waits for key until ctx ends; on success the returned func unlocks.
func (l *Locks) Lock(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	if l.slots == nil {
		l.slots = map[string]*slot{}
	}
	s, ok := l.slots[key]
	if !ok {
		s = &slot{ch: make(chan struct{}, 1)}
		s.ch <- struct{}{}
		l.slots[key] = s
	}
	s.refs++
	l.mu.Unlock()

	select {
	case <-s.ch:
		return func() { s.ch <- struct{}{}; l.release(key, s) }, nil
	case <-ctx.Done():
		l.release(key, s)
		return nil, ctx.Err()
	}
}

func (l *Locks) release(key string, s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.refs--
	if s.refs == 0 {
		delete(l.slots, key)
	}
}

// Len is the number of keys locked or waited on, for tests and metrics.
func (l *Locks) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.slots)
}

// TryLock takes key if it is free and returns its unlock func; ok is
// false, and nothing is held, when someone holds or waits for it.
func (l *Locks) TryLock(key string) (unlock func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, held := l.slots[key]; held {
		return nil, false
	}
	if l.slots == nil {
		l.slots = map[string]*slot{}
	}
	s := &slot{ch: make(chan struct{}, 1), refs: 1}
	l.slots[key] = s
	return func() { s.ch <- struct{}{}; l.release(key, s) }, true
}
