// Package driverproc runs the real csi-thin binary as a child process and
// connects a CSI client to it: the demo and the benchmark measure what a
// container orchestrator would talk to, including gRPC and process
// overheads, and can read the driver's own memory figures from /proc.
package driverproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/internal/csiclient"
)

// Options start one driver.
type Options struct {
	// Binary is the csi-thin executable.
	Binary string
	// Socket is the unix socket path the driver serves on.
	Socket string
	// Args are the driver's flags besides --endpoint.
	Args []string
	// LogFile receives the driver's stdout and stderr.
	LogFile string
	// ReadyTimeout bounds pool bootstrap (format, mount) plus startup.
	ReadyTimeout time.Duration
}

// Process is a running driver with a client connected to it.
type Process struct {
	Client *csiclient.Client
	cmd    *exec.Cmd
	log    *os.File
	done   chan error
}

// Start launches the driver and waits until its Probe reports ready.
func Start(ctx context.Context, o Options) (*Process, error) {
	logf, err := os.OpenFile(o.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("driver log: %w", err)
	}
	args := append([]string{"--endpoint=unix://" + o.Socket}, o.Args...)
	cmd := exec.Command(o.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C in the terminal reaches only us, so
	// the driver is still there to delete volumes and unmount during
	// cleanup; we stop it last.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start driver %s: %w", o.Binary, err)
	}
	p := &Process{cmd: cmd, log: logf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	klog.V(1).InfoS("driver started", "pid", cmd.Process.Pid, "args", args)

	c, err := csiclient.Dial(o.Socket)
	if err != nil {
		return nil, errors.Join(err, p.Stop(context.WithoutCancel(ctx)))
	}
	p.Client = c
	timeout := o.ReadyTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- c.WaitReady(rctx, 50*time.Millisecond) }()
	select {
	case err = <-ready:
	case werr := <-p.done:
		p.done <- werr // Stop reads it again
		err = fmt.Errorf("driver exited before it was ready (%v); see %s", werr, o.LogFile)
	}
	if err != nil {
		return nil, errors.Join(err, p.Stop(context.WithoutCancel(ctx)))
	}
	return p, nil
}

// Pid is the driver's process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// PeakRSS is the driver's high-water resident set size (VmHWM) so far.
func (p *Process) PeakRSS() (int64, error) { return procStatusBytes(p.Pid(), "VmHWM:") }

// RSS is the driver's current resident set size (VmRSS).
func (p *Process) RSS() (int64, error) { return procStatusBytes(p.Pid(), "VmRSS:") }

// AnonRSS is the anonymous part of the resident set (RssAnon): the heap,
// stacks and runtime, without the binary's file-backed pages, which the
// kernel can drop and re-read at will.
func (p *Process) AnonRSS() (int64, error) { return procStatusBytes(p.Pid(), "RssAnon:") }

// SamplePeakAnon samples AnonRSS every interval until ctx ends and then
// returns the highest value seen (the kernel keeps no high-water mark for
// the anonymous part alone).
func (p *Process) SamplePeakAnon(ctx context.Context, interval time.Duration) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if v, err := p.AnonRSS(); err == nil {
				peak = max(peak, v)
			}
			select {
			case <-ctx.Done():
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

func procStatusBytes(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("driver status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s %q: %w", field, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// Stop asks the driver to stop (SIGTERM: it finishes in-flight calls) and
// kills it if it has not exited when ctx ends.
func (p *Process) Stop(ctx context.Context) error {
	if p.Client != nil {
		p.Client.Close()
	}
	defer p.log.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal driver: %w", err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
			return nil // stopped by our signal before it installed a handler
		}
		if err != nil {
			return fmt.Errorf("driver exited: %w", err)
		}
		return nil
	case <-ctx.Done():
		p.cmd.Process.Kill()
		return fmt.Errorf("driver did not stop on SIGTERM: killed")
	}
}
