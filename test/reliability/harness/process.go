package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// Options start one driver child.
type Options struct {
	// Dir holds the socket and the child's log.
	Dir string
	// Config is handed to the child's OpenFunc.
	Config string
	// Faults hit storage commands; they are armed when a mutating
	// Controller or Node call arrives.
	Faults []command.Fault
	// RecoveryFaults hit the storage commands of startup recovery: they
	// are armed while the pool is opened and disarmed before the child
	// serves. Use StartMayCrash with them.
	RecoveryFaults []command.Fault
	// MountFaults hit the calls of mount(8), umount(8) and the filesystem
	// tools mount-utils runs (blkid, fsck, mkfs.*, resize2fs, xfs_growfs;
	// crash kinds only, counted apart from Faults);
	// they are armed like Faults. See mountwrap.go.
	MountFaults []command.Fault
	// RecordTools installs the tool stand-ins without faults, so that
	// MountCalls tells what a call ran.
	RecordTools bool
	// CrashReply names a Controller, GroupController or Node method after whose success
	// the child dies before replying.
	CrashReply string
	// Verbosity is klog's -v for the child (its log is kept in Dir).
	Verbosity int
}

// Child is a running driver process and a CSI client connected to it.
type Child struct {
	*csiclient.Client
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// Start runs a child and waits until it serves CSI.
func Start(t testing.TB, o Options) *Child {
	t.Helper()
	c, killed, err := launch(o)
	if err != nil {
		t.Fatal(err)
	}
	if killed {
		t.Fatalf("driver child was killed during startup\n%s", c.LogTail())
	}
	return c
}

// StartMayCrash runs a child whose startup may meet an injected crash
// (RecoveryFaults). It returns the child once it serves CSI, or, if it
// died of SIGKILL before that, the dead child and true. Any other end of
// the child fails the test.
func StartMayCrash(t testing.TB, o Options) (*Child, bool) {
	t.Helper()
	c, killed, err := launch(o)
	if err != nil {
		t.Fatal(err)
	}
	return c, killed
}

// StartAll starts one child per Options at once (each must have its own
// Dir) and waits until all serve CSI: a test that needs many drivers need
// not pay for their startups one after another.
func StartAll(t testing.TB, opts []Options) []*Child {
	t.Helper()
	children := make([]*Child, len(opts))
	errs := make([]error, len(opts))
	var wg sync.WaitGroup
	for i, o := range opts {
		wg.Go(func() {
			c, killed, err := launch(o)
			if err == nil && killed {
				err = fmt.Errorf("driver child was killed during startup\n%s", c.LogTail())
			}
			children[i], errs[i] = c, err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, c := range children {
			if c != nil && !c.Exited() {
				c.kill()
			}
		}
		t.Fatal(err)
	}
	return children
}

// launch starts a child and waits until it serves CSI or dies. It
// returns the child and whether it died of SIGKILL; an error means any
// other failure, after which no child is left running.
func launch(o Options) (*Child, bool, error) {
	sock := filepath.Join(o.Dir, "csi.sock")
	logPath := filepath.Join(o.Dir, "child.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("child log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== child start faults=%q recoveryFaults=%q mountFaults=%q crashReply=%q\n",
		command.FormatFaults(o.Faults), command.FormatFaults(o.RecoveryFaults), command.FormatFaults(o.MountFaults), o.CrashReply)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("remove old socket: %w", err)
	}
	cmd := exec.Command(os.Args[0], fmt.Sprintf("-v=%d", o.Verbosity))
	cmd.Env = append(os.Environ(),
		envServe+"=1",
		envConfig+"="+o.Config,
		envEndpoint+"=unix://"+sock,
		envFaults+"="+command.FormatFaults(o.Faults),
		envRecoveryFaults+"="+command.FormatFaults(o.RecoveryFaults),
		envMountFaults+"="+command.FormatFaults(o.MountFaults),
		envCrashReply+"="+o.CrashReply,
		// A -race build sleeps 1 s at exit by default; children exit often.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"),
	)
	if len(o.MountFaults) > 0 || o.RecordTools {
		env, err := setupMountTool(filepath.Join(o.Dir, "mount-tool"))
		if err != nil {
			return nil, false, fmt.Errorf("mount tool stand-ins: %w", err)
		}
		// Later entries win: PATH here replaces the inherited one.
		cmd.Env = append(cmd.Env, env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("start driver child: %w", err)
	}
	c := &Child{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { c.waitErr = cmd.Wait(); close(c.done) }()
	// Dial only once the socket exists: a first connection attempt that
	// fails would put gRPC into a one-second reconnect backoff.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if c.Exited() && c.killed() {
			return c, true, nil
		}
		if c.Exited() || time.Now().After(deadline) {
			c.kill()
			return nil, false, fmt.Errorf("driver child never created its socket (%v)\n%s", c.waitErr, c.LogTail())
		}
	}
	client, err := csiclient.Dial("unix://" + sock)
	if err != nil {
		c.kill()
		return nil, false, fmt.Errorf("dial child: %w", err)
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
			return nil, false, fmt.Errorf("driver child not ready: %w\n%s", err, c.LogTail())
		}
	case <-c.done:
		cancel()
		client.Close()
		if c.killed() {
			return c, true, nil
		}
		return nil, false, fmt.Errorf("driver child exited during startup (%v)\n%s", c.waitErr, c.LogTail())
	}
	return c, false, nil
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
	return c.killed()
}

// killed reports whether the ended child died of SIGKILL.
func (c *Child) killed() bool {
	var ee *exec.ExitError
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

// RetryTwice runs call twice against the child, as a container
// orchestrator retries a call whose reply a crash lost: CSI calls are
// idempotent, so both must succeed. label names the crash point.
func (c *Child) RetryTwice(t testing.TB, label string, call func(*csiclient.Client) error) {
	t.Helper()
	for try := 1; try <= 2; try++ {
		if err := call(c.Client); err != nil {
			t.Fatalf("[%s] retry %d failed: %v\n%s", label, try, err, c.LogTail())
		}
	}
}

// Must fails the test at once when a step that sets up or tears down a
// crash point fails.
func Must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
