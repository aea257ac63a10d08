package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/cleanup"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/driverproc"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/pools"
	"github.com/csi-thin/csi-thin/internal/csiclient"
)

// session is one driver process on one fresh pool, plus everything that
// must be undone when the run ends.
type session struct {
	dir    string
	pool   pools.Pool
	driver *driverproc.Process
	client *csiclient.Client
	undo   cleanup.Stack
	logf   string
	// keepLog keeps the driver's log after a successful run too.
	keepLog bool
}

type sessionConfig struct {
	driverBinary string
	// parentDir holds the session's work dir (pool file, mounts, log).
	parentDir string
	prefix    string
	// newPool plans the pool inside the work dir.
	newPool func(dir string) (pools.Pool, error)
	// tools must be on PATH (checked before anything is made).
	tools []string
	// extraArgs are added to the driver's flags (e.g. -v=4).
	extraArgs []string
	keepLog   bool
}

// startSession makes a work dir, starts the driver on a new pool and
// registers their teardown. On error everything made so far is undone.
func startSession(ctx context.Context, cfg sessionConfig) (s *session, err error) {
	if err := preflight(cfg.tools); err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(cfg.driverBinary)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("driver binary (build it with `make build`): %w", err)
	}
	if err := os.MkdirAll(cfg.parentDir, 0o755); err != nil {
		return nil, fmt.Errorf("work dir parent: %w", err)
	}
	dir, err := os.MkdirTemp(cfg.parentDir, cfg.prefix)
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	s = &session{dir: dir, keepLog: cfg.keepLog, logf: filepath.Join(cfg.parentDir, filepath.Base(dir)+".driver.log")}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close(ctx))
		}
	}()
	s.pool, err = cfg.newPool(dir)
	if err != nil {
		return s, err
	}
	s.undo.Push("tear down pool", s.pool.Teardown)
	args := append([]string{"--mode=local", "--node-id=csi-thin-bench"}, s.pool.DriverArgs()...)
	args = append(args, cfg.extraArgs...)
	s.driver, err = driverproc.Start(ctx, driverproc.Options{
		Binary: bin, Socket: filepath.Join(dir, "csi.sock"), Args: args, LogFile: s.logf,
		ReadyTimeout: 3 * time.Minute,
	})
	if err != nil {
		return s, fmt.Errorf("%w\n%s", err, s.logTail(20))
	}
	s.undo.Push("stop driver", func(ctx context.Context) error {
		stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return s.driver.Stop(stopCtx)
	})
	s.client = s.driver.Client
	return s, nil
}

// close runs every undo step. The driver log is removed on success and
// kept (its path printed) on failure.
func (s *session) close(ctx context.Context) error {
	err := s.undo.Run(ctx, 2*time.Minute)
	switch {
	case err == nil && s.keepLog:
		fmt.Fprintf(os.Stderr, "driver log: %s\n", s.logf)
	case err == nil:
		os.Remove(s.logf)
	default:
		err = fmt.Errorf("%w (driver log kept at %s)", err, s.logf)
	}
	return err
}

// logTail returns the last n lines of the driver's log.
func (s *session) logTail(n int) string {
	b, err := os.ReadFile(s.logf)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "last lines of the driver's log:\n  " + strings.Join(lines, "\n  ")
}

// printLog copies the driver's log to w.
func (s *session) printLog(w io.Writer) {
	f, err := os.Open(s.logf)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(w, "--- driver log ---")
	io.Copy(w, f)
	fmt.Fprintln(w, "--- end of driver log ---")
}

// mountDir is where a volume is staged and published, inside the work dir.
func (s *session) mountDir(name string) string { return filepath.Join(s.dir, "pods", name) }

// attach stages and publishes a volume and registers its detach.
func (s *session) attach(ctx context.Context, volumeID, name string, flags []string) (*csiclient.Attachment, error) {
	a, err := s.client.Attach(ctx, volumeID, s.mountDir(name), flags)
	if err != nil {
		return nil, err
	}
	s.undo.Push("detach "+name, a.Detach)
	return a, nil
}

// timed runs fn and returns how long it took.
func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}

// preflight fails early, with a useful message, where the run could only
// fail later with a confusing one.
func preflight(tools []string) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: the driver attaches loop devices and mounts volumes")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found on PATH (install btrfs-progs / util-linux / lvm2)", t)
		}
	}
	return nil
}
