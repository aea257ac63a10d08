package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"time"

	"k8s.io/klog/v2"
)

// Streamer runs a command whose input or output is a stream too large to
// hold in memory (btrfs send and receive): stdin is fed from a reader and
// stdout goes to a writer as the command runs. Like Runner, no shell.
type Streamer interface {
	Stream(ctx context.Context, stdin io.Reader, stdout io.Writer, name string, args ...string) (Result, error)
}

var _ Streamer = (*Host)(nil)

// Stream implements Streamer. A stream takes as long as its data does, so
// only ctx bounds it (no Timeout); cancelling ctx kills the command. The
// result's Stdout is empty: it went to stdout.
func (h *Host) Stream(ctx context.Context, stdin io.Reader, stdout io.Writer, name string, args ...string) (Result, error) {
	argv := append(append(append([]string{}, h.Prefix...), name), args...)
	cmd := osexec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), h.Env...)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
	if stdout == nil {
		cmd.Stdout = io.Discard
	}
	start := time.Now()
	err := cmd.Run()
	res := Result{Stderr: stderr.Bytes()}
	elapsed := time.Since(start)
	if err == nil {
		klog.V(4).InfoS("stream command done", "cmd", argv, "duration", elapsed)
		return res, nil
	}
	res.ExitCode = -1
	var exitErr *osexec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		res.ExitCode = exitErr.ExitCode()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (after %s): %w", ctx.Err(), elapsed.Round(time.Millisecond), err)
	}
	klog.V(2).InfoS("stream command failed", "cmd", argv, "exitCode", res.ExitCode, "duration", elapsed, "stderr", trim(res.Stderr))
	return res, &Error{Cmd: argv, ExitCode: res.ExitCode, Stderr: trim(res.Stderr), Err: err}
}

// StreamerOf returns r as a Streamer, or an error naming what r is when
// it cannot stream (a test's scripted runner).
func StreamerOf(r Runner) (Streamer, error) {
	if s, ok := r.(Streamer); ok {
		return s, nil
	}
	return nil, fmt.Errorf("command runner %T cannot stream data", r)
}
