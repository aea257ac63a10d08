package command

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// FaultKind is what a Fault does to the command it hits.
type FaultKind string

const (
	// FaultFail does not run the command and returns a non-zero exit with
	// the fault's Stderr, as a tool that refused the operation would.
	FaultFail FaultKind = "fail"
	// FaultHang runs `sleep` in place of the command, so the real
	// process-killing path of the wrapped Runner (its timeout and the
	// caller's deadline) is what ends it.
	FaultHang FaultKind = "hang"
	// FaultGarbage runs the command and replaces what it printed with the
	// fault's Stdout: a tool whose output format changed under us.
	FaultGarbage FaultKind = "garbage"
	// FaultCrashBefore calls Crash instead of running the command.
	FaultCrashBefore FaultKind = "crash-before"
	// FaultCrashAfter runs the command, then calls Crash before its result
	// reaches the caller: the storage changed, the driver never knew.
	FaultCrashAfter FaultKind = "crash-after"
)

// HangSeconds is how long a FaultHang's stand-in sleeps: far beyond any
// deadline, and distinctive enough to find a leaked one in /proc.
const HangSeconds = "86399"

// Fault hits the Nth command (1-based, counting only commands that match
// Match) that a FaultRunner runs.
type Fault struct {
	Kind FaultKind
	Nth  int
	// Match is a prefix of the command line ("btrfs subvolume snapshot");
	// empty matches every command.
	Match    string
	ExitCode int    // FaultFail: default 1
	Stderr   string // FaultFail
	Stdout   string // FaultGarbage
}

// FaultRunner wraps a Runner and injects faults by command number: the
// single seam every storage command passes through, so a test can fail,
// hang, garble or crash at any step of any operation. It also records
// every command line it saw.
type FaultRunner struct {
	Next   Runner
	Faults []Fault
	// Crash is called for the crash kinds; it should not return (a test
	// child process SIGKILLs itself). If it does return, the command
	// fails as if the process had died.
	Crash func()

	mu      sync.Mutex
	counts  map[int]int // matching commands seen, per fault index
	lines   []string
	hits    int
	stopped bool
}

// Run implements Runner.
func (f *FaultRunner) Run(ctx context.Context, name string, args ...string) (Result, error) {
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	fault, hit := f.next(line)
	if !hit {
		return f.Next.Run(ctx, name, args...)
	}
	argv := append([]string{name}, args...)
	switch fault.Kind {
	case FaultFail:
		err := injectedFailure(fault, argv)
		return Result{ExitCode: err.ExitCode, Stderr: []byte(fault.Stderr)}, err
	case FaultHang:
		res, err := f.Next.Run(ctx, "sleep", HangSeconds)
		if err == nil {
			err = fmt.Errorf("injected hang of %q ended without a deadline", line)
		}
		return res, &Error{Cmd: argv, ExitCode: -1, Err: err}
	case FaultGarbage:
		res, err := f.Next.Run(ctx, name, args...)
		res.Stdout = []byte(fault.Stdout)
		return res, err
	case FaultCrashBefore:
		f.crash()
		return Result{ExitCode: -1}, &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("driver crashed before running the command (injected)")}
	case FaultCrashAfter:
		res, err := f.Next.Run(ctx, name, args...)
		f.crash()
		if err == nil {
			err = fmt.Errorf("driver crashed after running the command (injected)")
		}
		return res, err
	}
	return Result{ExitCode: -1}, &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("unknown fault kind %q", fault.Kind)}
}

var _ Streamer = (*FaultRunner)(nil)

// Stream implements Streamer when the wrapped runner streams: a stream
// (btrfs receive of a restore) is a step like any other, counted and hit
// by the same faults. A hang or garbled output of a stream is not
// modelled: they fail it.
func (f *FaultRunner) Stream(ctx context.Context, stdin io.Reader, stdout io.Writer, name string, args ...string) (Result, error) {
	next, err := StreamerOf(f.Next)
	if err != nil {
		return Result{ExitCode: -1}, err
	}
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	fault, hit := f.next(line)
	if !hit {
		return next.Stream(ctx, stdin, stdout, name, args...)
	}
	argv := append([]string{name}, args...)
	switch fault.Kind {
	case FaultCrashBefore:
		f.crash()
		return Result{ExitCode: -1}, &Error{Cmd: argv, ExitCode: -1, Err: fmt.Errorf("driver crashed before running the command (injected)")}
	case FaultCrashAfter:
		res, err := next.Stream(ctx, stdin, stdout, name, args...)
		f.crash()
		if err == nil {
			err = fmt.Errorf("driver crashed after running the command (injected)")
		}
		return res, err
	}
	ierr := injectedFailure(fault, argv)
	return Result{ExitCode: ierr.ExitCode, Stderr: []byte(fault.Stderr)}, ierr
}

// injectedFailure is what a FaultFail makes of the command argv: a
// non-zero exit (1 unless the fault says) with the fault's stderr.
func injectedFailure(fault Fault, argv []string) *Error {
	code := fault.ExitCode
	if code == 0 {
		code = 1
	}
	return &Error{Cmd: argv, ExitCode: code, Stderr: fault.Stderr, Err: fmt.Errorf("exit status %d (injected)", code)}
}

// next records line and returns the fault it triggers, if any.
func (f *FaultRunner) next(line string) (Fault, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, line)
	if f.stopped {
		return Fault{}, false
	}
	if f.counts == nil {
		f.counts = map[int]int{}
	}
	for i, fault := range f.Faults {
		if !strings.HasPrefix(line, fault.Match) {
			continue
		}
		f.counts[i]++
		if f.counts[i] == fault.Nth {
			f.hits++
			return fault, true
		}
	}
	return Fault{}, false
}

// Triggered returns the fault that the last of seen triggers, where seen
// is every command line run since the faults were armed, oldest first.
// It counts as FaultRunner does (per fault, only the lines matching it),
// for a process that runs a single command and exits, such as a test's
// stand-in for mount(8), and so must keep the count outside itself.
func Triggered(faults []Fault, seen []string) (Fault, bool) {
	if len(seen) == 0 {
		return Fault{}, false
	}
	last := seen[len(seen)-1]
	for _, fault := range faults {
		if !strings.HasPrefix(last, fault.Match) {
			continue
		}
		n := 0
		for _, line := range seen {
			if strings.HasPrefix(line, fault.Match) {
				n++
			}
		}
		if n == fault.Nth {
			return fault, true
		}
	}
	return Fault{}, false
}

func (f *FaultRunner) crash() {
	if f.Crash != nil {
		f.Crash()
	}
}

// Lines returns every command line seen, in order.
func (f *FaultRunner) Lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

// Hits is how many faults have fired since the last Arm.
func (f *FaultRunner) Hits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// Arm replaces the faults and restarts their command and hit counts, so
// the next matching commands are counted from 1.
func (f *FaultRunner) Arm(faults ...Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Faults = faults
	f.counts = nil
	f.hits = 0
	f.stopped = false
}

// Disarm stops injecting faults; commands still get recorded.
func (f *FaultRunner) Disarm() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
}

// ParseFaults reads a fault list from its text form, as passed to a child
// process in an environment variable: faults separated by ";", each
// "kind@nth" optionally followed by ":match", e.g.
// "crash-after@3" or "fail@1:btrfs qgroup limit".
func ParseFaults(spec string) ([]Fault, error) {
	var out []Fault
	for _, item := range strings.Split(spec, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		head, match, _ := strings.Cut(item, ":")
		kind, nth, ok := strings.Cut(head, "@")
		if !ok {
			return nil, fmt.Errorf("fault %q: want kind@nth[:match]", item)
		}
		n, err := strconv.Atoi(nth)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("fault %q: nth must be a positive integer", item)
		}
		k := FaultKind(kind)
		switch k {
		case FaultFail, FaultHang, FaultGarbage, FaultCrashBefore, FaultCrashAfter:
		default:
			return nil, fmt.Errorf("fault %q: unknown kind %q", item, kind)
		}
		out = append(out, Fault{Kind: k, Nth: n, Match: match, Stderr: "injected failure", Stdout: "garbage\x00{not json"})
	}
	return out, nil
}

// FormatFaults renders faults in the form ParseFaults reads.
func FormatFaults(faults []Fault) string {
	parts := make([]string, 0, len(faults))
	for _, f := range faults {
		s := fmt.Sprintf("%s@%d", f.Kind, f.Nth)
		if f.Match != "" {
			s += ":" + f.Match
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ";")
}
