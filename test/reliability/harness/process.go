package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/exec"
)

// Options start one driver child.
type Options struct {
	// Dir holds the socket and the child's log.
	Dir string
	// Config is handed to the child's OpenFunc.
	Config string
	// Faults are armed once the pool is open.
	Faults []exec.Fault
	// CrashReply names a Controller method after whose success the child
	// dies before replying.
	CrashReply string
	// Verbosity is klog's -v for the child (its log is kept in Dir).
	Verbosity int
}

// Child is a running driver process and a CSI client connected to it.
type Child struct {
	*csiclient.Client
	cmd     *osexec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// Start runs a child and waits until it serves CSI.
func Start(t testing.TB, o Options) *Child {
	t.Helper()
	sock := filepath.Join(o.Dir, "csi.sock")
	logPath := filepath.Join(o.Dir, "child.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatalf("child log: %v", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== child start faults=%q crashReply=%q\n", exec.FormatFaults(o.Faults), o.CrashReply)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("remove old socket: %v", err)
	}
	cmd := osexec.Command(os.Args[0], fmt.Sprintf("-v=%d", o.Verbosity))
	cmd.Env = append(os.Environ(),
		envServe+"=1",
		envConfig+"="+o.Config,
		envEndpoint+"=unix://"+sock,
		envFaults+"="+exec.FormatFaults(o.Faults),
		envCrashReply+"="+o.CrashReply,
		// A -race build sleeps 1 s at exit by default; children exit often.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start driver child: %v", err)
	}
	c := &Child{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { c.waitErr = cmd.Wait(); close(c.done) }()
	// Dial only once the socket exists: a first connection attempt that
	// fails would put gRPC into a one-second reconnect backoff.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if c.Exited() || time.Now().After(deadline) {
			c.kill()
			t.Fatalf("driver child never created its socket (%v)\n%s", c.waitErr, c.LogTail())
		}
	}
	client, err := csiclient.Dial("unix://" + sock)
	if err != nil {
		c.kill()
		t.Fatalf("dial child: %v", err)
	}
	c.Client = client
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- client.WaitReady(ctx, 20*time.Millisecond) }()
	select {
	case err := <-ready:
		if err != nil {
			c.kill()
			t.Fatalf("driver child not ready: %v\n%s", err, c.LogTail())
		}
	case <-c.done:
		cancel()
		t.Fatalf("driver child exited during startup (%v)\n%s", c.waitErr, c.LogTail())
	}
	return c
}

// Stop ends a child gracefully and insists it exits cleanly.
func (c *Child) Stop(t testing.TB) {
	t.Helper()
	c.Client.Close()
	select {
	case <-c.done:
	default:
		c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.kill()
		t.Fatalf("driver child ignored SIGTERM for 30s\n%s", c.LogTail())
	}
	if c.waitErr != nil {
		t.Fatalf("driver child exited badly: %v\n%s", c.waitErr, c.LogTail())
	}
}

// WaitKilled waits for a child that is expected to have crashed and
// reports whether it died of SIGKILL (the injected crash).
func (c *Child) WaitKilled(t testing.TB) bool {
	t.Helper()
	c.Client.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.kill()
		t.Fatalf("driver child did not crash within 30s\n%s", c.LogTail())
	}
	var ee *osexec.ExitError
	if errors.As(c.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

// Exited reports whether the child process has ended.
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *Child) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// LogTail is the end of the child's log, for failure messages.
func (c *Child) LogTail() string {
	b, _ := os.ReadFile(c.logPath)
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "child log (tail):\n" + strings.TrimSpace(string(bytes.Join(lines, []byte("\n"))))
}
