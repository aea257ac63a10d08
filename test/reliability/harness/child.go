// Package harness runs a csi-thin driver in a child process that a test
// can SIGKILL at any step, restart on the same pool and talk to over CSI,
// exactly as kubelet and the sidecars would. The child is the test binary
// itself, re-executed with an environment that tells its TestMain to
// serve instead of testing (see MaybeServe), so no hook is needed in the
// production binary.
package harness

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/exec"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// The environment a child reads.
const (
	envServe      = "CSI_THIN_RELIABILITY_SERVE"  // "1": this process is a driver child
	envConfig     = "CSI_THIN_RELIABILITY_CONFIG" // backend config, opaque to the harness
	envEndpoint   = "CSI_THIN_RELIABILITY_ENDPOINT"
	envFaults     = "CSI_THIN_FAULTS"      // exec.ParseFaults syntax; armed when the mutating call arrives
	envCrashReply = "CSI_THIN_CRASH_REPLY" // a Controller method name: die after it succeeded, before replying
)

// OpenFunc opens the backend of a child from its config, running every
// storage command through runner.
type OpenFunc func(ctx context.Context, config string, runner exec.Runner) (backend.Local, error)

// MaybeServe turns this process into a driver child when the environment
// asks for one; it then never returns. Call it first thing in TestMain.
func MaybeServe(open OpenFunc) {
	if os.Getenv(envServe) != "1" {
		return
	}
	if err := serve(open); err != nil {
		fmt.Fprintf(os.Stderr, "driver child: %v\n", err)
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
	os.Exit(0)
}

func serve(open OpenFunc) error {
	fs := flag.NewFlagSet("driver-child", flag.ContinueOnError)
	klog.InitFlags(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	faults, err := exec.ParseFaults(os.Getenv(envFaults))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Faults are armed only when the mutating call arrives: startup
	// recovery must run to completion for the restart half of every
	// crash case, and probes must not consume the fault.
	runner := &exec.FaultRunner{Next: &exec.Host{}, Crash: die}
	pool, err := open(ctx, os.Getenv(envConfig), runner)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	var ctrl csi.ControllerServer = controller.New(pool)
	if m := os.Getenv(envCrashReply); m != "" || len(faults) > 0 {
		ctrl = &faulted{ControllerServer: ctrl, runner: runner, faults: faults, crashMethod: m}
	}
	d, err := driver.New(driver.Config{
		Endpoint:   os.Getenv(envEndpoint),
		Identity:   driver.NewIdentity(pool.Health, true),
		Controller: ctrl,
		Node:       node.New(pool, node.Options{}),
	})
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// die is a crash as the kernel's OOM killer or a node reset would deliver
// it: no deferred function, no flush, no goodbye.
func die() {
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// faulted arms the faults when a mutating call arrives, so that they
// count only that call's commands (not those of probes and health checks,
// which on some backends run storage commands too), and dies after a
// successful call of crashMethod, before the reply leaves: the storage is
// complete but the caller never learns it, and retries.
type faulted struct {
	csi.ControllerServer
	runner      *exec.FaultRunner
	faults      []exec.Fault
	crashMethod string
}

func (c *faulted) arm() { c.runner.Arm(c.faults...) }

func dieIfOK[T any](c *faulted, method string, resp T, err error) (T, error) {
	if err == nil && c.crashMethod == method {
		die()
	}
	return resp, err
}

func (c *faulted) CreateVolume(ctx context.Context, r *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	c.arm()
	resp, err := c.ControllerServer.CreateVolume(ctx, r)
	return dieIfOK(c, "CreateVolume", resp, err)
}

func (c *faulted) DeleteVolume(ctx context.Context, r *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	c.arm()
	resp, err := c.ControllerServer.DeleteVolume(ctx, r)
	return dieIfOK(c, "DeleteVolume", resp, err)
}

func (c *faulted) CreateSnapshot(ctx context.Context, r *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	c.arm()
	resp, err := c.ControllerServer.CreateSnapshot(ctx, r)
	return dieIfOK(c, "CreateSnapshot", resp, err)
}

func (c *faulted) DeleteSnapshot(ctx context.Context, r *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	c.arm()
	resp, err := c.ControllerServer.DeleteSnapshot(ctx, r)
	return dieIfOK(c, "DeleteSnapshot", resp, err)
}

func (c *faulted) ControllerExpandVolume(ctx context.Context, r *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	c.arm()
	resp, err := c.ControllerServer.ControllerExpandVolume(ctx, r)
	return dieIfOK(c, "ControllerExpandVolume", resp, err)
}
