package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	cmd.Stderr = &stderr
	if stdin != nil {
		cmd.Stdin = chunkedReader{stdin}
	}
	cmd.Stdout = io.Discard
	out := &chunkedWriter{w: io.Discard}
	if stdout != nil {
		out.w = stdout
		cmd.Stdout = out
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
	} else if werr := out.failed(); werr != nil {
		// Once stdout stops taking data, the command dies of the closed
		// pipe (SIGPIPE), and os/exec reports that exit, not the cause.
		err = fmt.Errorf("write its output: %w (the command then ended: %w)", werr, err)
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

// StreamChunkBytes is what a stream moves per system call between this
// process and its command, and the capacity of the pipe between them.
// os/exec would copy 32 KiB at a time through a 64 KiB pipe: at hundreds
// of MiB per second, the system calls and wake-ups of those small copies
// were the largest cost of a stream in this process (docs/performance.md).
const StreamChunkBytes = 1 << 20

// chunkedReader is a command's stdin: os/exec copies it into the
// command's pipe with WriteTo, which grows the pipe and copies in
// StreamChunkBytes.
type chunkedReader struct{ r io.Reader }

func (c chunkedReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c chunkedReader) WriteTo(w io.Writer) (int64, error) {
	growPipe(w)
	// The wrappers hide ReadFrom and WriteTo, which would copy in 32 KiB.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{c.r}, make([]byte, StreamChunkBytes))
}

// chunkedWriter is a command's stdout: os/exec copies the command's pipe
// into it with ReadFrom, which grows the pipe and copies in
// StreamChunkBytes.
// It keeps the first error of w, the command's failure's likely cause
// (atomically: after WaitDelay, os/exec returns without waiting for its
// copying goroutine).
type chunkedWriter struct {
	w   io.Writer
	err atomic.Pointer[error]
}

func (c *chunkedWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// failed is the first error of the writer, or nil.
func (c *chunkedWriter) failed() error {
	if err := c.err.Load(); err != nil {
		return *err
	}
	return nil
}

func (c *chunkedWriter) ReadFrom(r io.Reader) (int64, error) {
	growPipe(r)
	return io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{r}, make([]byte, StreamChunkBytes))
}

// growPipe raises the capacity of the pipe that f is an end of to
// StreamChunkBytes; anything else, or a kernel that refuses, keeps its
// size (a smaller pipe is only slower).
func growPipe(f any) {
	// os/exec hands over an *os.File, or one wrapped to hide its WriteTo:
	// either way the file's SyscallConn shows.
	file, ok := f.(syscall.Conn)
	if !ok {
		return
	}
	conn, err := file.SyscallConn()
	if err != nil {
		return
	}
	_ = conn.Control(func(fd uintptr) {
		if _, err := unix.FcntlInt(fd, unix.F_SETPIPE_SZ, StreamChunkBytes); err != nil {
			klog.V(4).InfoS("pipe keeps its size", "err", err.Error())
		}
	})
}
