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
	envFaults     = "CSI_THIN_FAULTS"      // exec.ParseFaults syntax; armed after the pool opened
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
	// Faults are armed only once the pool is open: startup recovery must
	// run to completion for the restart half of every crash case.
	runner := &exec.FaultRunner{Next: &exec.Host{}, Crash: die}
	pool, err := open(ctx, os.Getenv(envConfig), runner)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	runner.Arm(faults...)
	var ctrl csi.ControllerServer = controller.New(pool)
	if m := os.Getenv(envCrashReply); m != "" {
		ctrl = &crashOnReply{ControllerServer: ctrl, method: m}
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

// crashOnReply dies after a successful call, before the reply leaves: the
// storage is complete but the caller never learns it, and retries.
type crashOnReply struct {
	csi.ControllerServer
	method string
}

func dieIfOK[T any](c *crashOnReply, method string, resp T, err error) (T, error) {
	if err == nil && c.method == method {
		die()
	}
	return resp, err
}

func (c *crashOnReply) CreateVolume(ctx context.Context, r *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	resp, err := c.ControllerServer.CreateVolume(ctx, r)
	return dieIfOK(c, "CreateVolume", resp, err)
}

func (c *crashOnReply) DeleteVolume(ctx context.Context, r *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	resp, err := c.ControllerServer.DeleteVolume(ctx, r)
	return dieIfOK(c, "DeleteVolume", resp, err)
}

func (c *crashOnReply) CreateSnapshot(ctx context.Context, r *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	resp, err := c.ControllerServer.CreateSnapshot(ctx, r)
	return dieIfOK(c, "CreateSnapshot", resp, err)
}

func (c *crashOnReply) DeleteSnapshot(ctx context.Context, r *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	resp, err := c.ControllerServer.DeleteSnapshot(ctx, r)
	return dieIfOK(c, "DeleteSnapshot", resp, err)
}

func (c *crashOnReply) ControllerExpandVolume(ctx context.Context, r *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	resp, err := c.ControllerServer.ControllerExpandVolume(ctx, r)
	return dieIfOK(c, "ControllerExpandVolume", resp, err)
}
