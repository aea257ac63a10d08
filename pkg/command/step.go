package command

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// A step is a storage operation the driver makes in-process (an ioctl)
// where it could run a tool instead: a process start costs more than the
// kernel's work for small operations. A step still passes through the
// Runner, named by the command line that would do the same, so that fault
// injection, crash tests and fakes see every storage operation whichever
// way it is made.

// Stepper is a Runner that takes part in steps: a fault injector, a fake.
type Stepper interface {
	Runner
	// Step runs do, or stands in for it, as the storage operation that
	// the command line name args... names.
	Step(ctx context.Context, do func() error, name string, args ...string) error
}

// Step makes the storage operation do through r, named by the command line
// that would do the same: r takes part when it is a Stepper, else do runs
// as it is. A failure of do is an *Error whose Err is do's error (an errno
// stays reachable with errors.Is) and whose Stderr is its text, as the
// tool would have printed it.
func Step(ctx context.Context, r Runner, do func() error, name string, args ...string) error {
	if s, ok := r.(Stepper); ok {
		return s.Step(ctx, do, name, args...)
	}
	return runStep(do, name, args...)
}

// runStep runs do and logs it as Host.Run logs a command.
func runStep(do func() error, name string, args ...string) error {
	argv := append([]string{name}, args...)
	start := time.Now()
	err := do()
	if err == nil {
		klog.V(4).InfoS("step done", "step", argv, "duration", time.Since(start))
		return nil
	}
	var errno syscall.Errno
	code := 1
	if errors.As(err, &errno) {
		code = int(errno)
	}
	klog.V(2).InfoS("step failed", "step", argv, "duration", time.Since(start), "err", err)
	return &Error{Cmd: argv, ExitCode: code, Stderr: err.Error(), Err: err}
}

// Step implements Stepper: a step counts, matches and fails, hangs or
// crashes like a command; a garbage fault (there is no output to garble)
// lets it run.
func (f *FaultRunner) Step(ctx context.Context, do func() error, name string, args ...string) error {
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	fault, hit := f.next(line)
	if !hit {
		return Step(ctx, f.Next, do, name, args...)
	}
	argv := append([]string{name}, args...)
	switch fault.Kind {
	case FaultFail:
		return injectedFailure(fault, argv)
	case FaultHang:
		// Nothing to kill: wait for the deadline a command would have had.
		timeout := DefaultTimeout
		if h, ok := f.Next.(*Host); ok && h.Timeout > 0 {
			timeout = h.Timeout
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		<-ctx.Done()
		return &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("injected hang of %q: %w", line, ctx.Err())}
	case FaultGarbage:
		return Step(ctx, f.Next, do, name, args...)
	case FaultCrashBefore:
		f.crash()
		return &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("driver crashed before the step (injected)")}
	case FaultCrashAfter:
		err := Step(ctx, f.Next, do, name, args...)
		f.crash()
		if err == nil {
			err = fmt.Errorf("driver crashed after the step (injected)")
		}
		return err
	}
	return &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("unknown fault kind %q", fault.Kind)}
}

// Step implements Stepper: the step is recorded as a call and answered as
// a command with that line would be, without running do.
func (f *Fake) Step(ctx context.Context, _ func() error, name string, args ...string) error {
	_, err := f.Run(ctx, name, args...)
	return err
}
