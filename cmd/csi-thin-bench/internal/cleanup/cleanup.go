// Package cleanup runs undo steps in reverse order, even after the main
// context was cancelled (Ctrl-C): a demo or benchmark that leaves mounts,
// loop devices or volumes behind on a shared machine is worse than one
// that fails.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Stack is a LIFO of named undo steps. The zero value is ready to use.
type Stack struct {
	mu    sync.Mutex
	steps []step
}

type step struct {
	name string
	fn   func(context.Context) error
}

// Push adds an undo step; it runs before every step pushed earlier.
func (s *Stack) Push(name string, fn func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, step{name, fn})
}

// Run pops and runs every step, newest first. Each step gets its own
// timeout on a context that ignores the caller's cancellation, because
// cleanup matters most exactly when the caller was interrupted. A failing
// step does not stop the others; all failures are returned joined.
func (s *Stack) Run(ctx context.Context, perStep time.Duration) error {
	s.mu.Lock()
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		st := steps[i]
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), perStep)
		err := st.fn(sctx)
		cancel()
		if err != nil {
			klog.ErrorS(err, "cleanup step failed", "step", st.name)
			errs = append(errs, fmt.Errorf("cleanup %s: %w", st.name, err))
		}
	}
	return errors.Join(errs...)
}
