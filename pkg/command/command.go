// Package command runs external storage tools (btrfs, lvm, mkfs) with argument
// lists — never through a shell — under a context deadline, and reports
// their output and exit status. It never parses what a tool prints: the
// backends do that into typed results.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// DefaultTimeout bounds one command when the caller's context has no
// earlier deadline: a hung tool must not hang an RPC forever.
const DefaultTimeout = 2 * time.Minute

// Result is what a finished command printed.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// Runner runs one command. Implementations must not invoke a shell.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) (Result, error)
}

// Error is a command that failed to start, exited non-zero or timed out.
type Error struct {
	Cmd      []string
	ExitCode int // -1 if the command did not exit on its own
	Stderr   string
	Err      error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Cmd, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// ExitCodeOf returns the exit code of a failed command, or -1.
func ExitCodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.ExitCode
	}
	return -1
}

// StderrOf returns the trimmed stderr of a failed command.
func StderrOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Stderr
	}
	return ""
}

// Host runs commands on this machine.
type Host struct {
	// Prefix is prepended to every command (e.g. nsenter into the host's
	// namespaces when running in a container); empty runs directly.
	Prefix []string
	// Timeout bounds each command; zero means DefaultTimeout.
	Timeout time.Duration
	// Env is added to the environment (LC_ALL=C is always set so that
	// messages we classify are in English).
	Env []string
}

// Run implements Runner.
func (h *Host) Run(ctx context.Context, name string, args ...string) (Result, error) {
	timeout := h.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	argv := append(append(append([]string{}, h.Prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), h.Env...)
	// Kill the whole process (not just wait for pipes) when the deadline
	// passes, so a hung tool cannot outlive its RPC.
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: 0}
	elapsed := time.Since(start)
	if err == nil {
		klog.V(4).InfoS("command done", "cmd", argv, "duration", elapsed)
		return res, nil
	}
	res.ExitCode = -1
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		res.ExitCode = exitErr.ExitCode()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (after %s)", ctx.Err(), elapsed.Round(time.Millisecond))
	}
	klog.V(2).InfoS("command failed", "cmd", argv, "exitCode", res.ExitCode, "duration", elapsed, "stderr", trim(res.Stderr))
	return res, &Error{Cmd: argv, ExitCode: res.ExitCode, Stderr: trim(res.Stderr), Err: err}
}

// trim keeps error messages readable: the last lines of stderr matter most.
func trim(b []byte) string {
	s := strings.TrimSpace(string(b))
	const max = 2048
	if len(s) > max {
		s = "…" + s[len(s)-max:]
	}
	return s
}
