// Package harness runs a csi-thin driver in a child process that a test
// can SIGKILL at any step, restart on the same pool and talk to over CSI,
// exactly as kubelet and the sidecars would. The child is the test binary
// itself, re-executed with an environment that tells its TestMain to
// serve instead of testing (see MaybeServe), so no hook is needed in the
// production binary.
package harness

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// The environment a child reads.
const (
	envServe      = "CSI_THIN_RELIABILITY_SERVE"  // "1": this process is a driver child
	envConfig     = "CSI_THIN_RELIABILITY_CONFIG" // backend config, opaque to the harness
	envEndpoint   = "CSI_THIN_RELIABILITY_ENDPOINT"
	envFaults     = "CSI_THIN_FAULTS"      // command.ParseFaults syntax; armed when the mutating call arrives
	envCrashReply = "CSI_THIN_CRASH_REPLY" // a Controller or Node method name: die after it succeeded, before replying
	// envRecoveryFaults are armed while the pool is opened, so they count
	// only the commands of startup recovery.
	envRecoveryFaults = "CSI_THIN_RECOVERY_FAULTS"
	// envMountFaults hit mount(8), umount(8) and the filesystem tools
	// mount-utils runs itself (see mountwrap.go); armed
	// when the mutating call arrives, like envFaults.
	envMountFaults = "CSI_THIN_MOUNT_FAULTS"
)

// OpenFunc opens the backend of a child from its config, running every
// storage command through runner.
type OpenFunc func(ctx context.Context, config string, runner command.Runner) (backend.Local, error)

// MaybeServe turns this process into a driver child when the environment
// asks for one; it then never returns. Call it first thing in TestMain.
func MaybeServe(open OpenFunc) {
	// A driver child's tool stand-in carries the child's environment,
	// so it must be recognised first.
	maybeBeMountTool()
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
	var lists [3][]command.Fault
	var err error
	for i, env := range []string{envFaults, envRecoveryFaults, envMountFaults} {
		if lists[i], err = command.ParseFaults(os.Getenv(env)); err != nil {
			return fmt.Errorf("%s: %w", env, err)
		}
	}
	faults, recoveryFaults, mountFaults := lists[0], lists[1], lists[2]
	// The tool stand-in kills the process named here: the driver,
	// whatever runs between it and the tool.
	os.Setenv(envDriverPID, strconv.Itoa(os.Getpid()))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Call faults are armed only when the mutating call arrives: startup
	// recovery must run to completion for the restart half of every
	// crash case, and probes must not consume the fault. Recovery faults
	// are armed for the opening of the pool only, which is where startup
	// recovery runs, and disarmed before the first call can arrive.
	runner := &command.FaultRunner{Next: &command.Host{}, Crash: die}
	runner.Arm(recoveryFaults...)
	pool, err := open(ctx, os.Getenv(envConfig), runner)
	runner.Disarm()
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	ctrlServer := controller.New(pool)
	var ctrl csi.ControllerServer = ctrlServer
	// Only on a pool that takes group snapshots (nil otherwise, as in the driver).
	var groups csi.GroupControllerServer
	if g := ctrlServer.Groups(); g != nil {
		groups = g
	}
	var nodeSrv csi.NodeServer = node.New(pool, node.Options{})
	// With the tool stand-ins installed (faulted or recording), every
	// mutating call must arm them, so that their count starts at it.
	standIns := os.Getenv(envMountDir) != ""
	if len(mountFaults) > 0 && !standIns {
		return errors.New("mount faults given but no tool stand-in is installed")
	}
	if m := os.Getenv(envCrashReply); m != "" || len(faults) > 0 || standIns {
		f := &faultSet{runner: runner, faults: faults, mountFaults: mountFaults, standIns: standIns, crashMethod: m}
		ctrl = &faultedController{ControllerServer: ctrl, f: f}
		nodeSrv = &faultedNode{NodeServer: nodeSrv, f: f}
		if groups != nil {
			groups = &faultedGroups{GroupControllerServer: groups, f: f}
		}
	}
	d, err := driver.New(driver.Config{
		Endpoint:        os.Getenv(envEndpoint),
		Identity:        driver.NewIdentity(pool.Health, driver.WithController),
		Controller:      ctrl,
		Node:            nodeSrv,
		GroupController: groups,
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

// faultSet arms the faults when a mutating call arrives, so that they
// count only that call's commands (not those of probes and health checks,
// which on some backends run storage commands too), and dies after a
// successful call of crashMethod, before the reply leaves: the storage is
// complete but the caller never learns it, and retries.
type faultSet struct {
	runner      *command.FaultRunner
	faults      []command.Fault
	mountFaults []command.Fault
	standIns    bool
	crashMethod string
}

func (f *faultSet) arm() error {
	f.runner.Arm(f.faults...)
	if f.standIns {
		return armMountTool(f.mountFaults)
	}
	return nil
}

// call arms the faults, runs one CSI call and dies if it succeeded and is
// the crashMethod. A fault that cannot be armed fails the call, so that
// the test sees it rather than a call that silently ran unfaulted.
func call[Req, Resp any](ctx context.Context, f *faultSet, method string, req Req, next func(context.Context, Req) (Resp, error)) (Resp, error) {
	if err := f.arm(); err != nil {
		var zero Resp
		return zero, fmt.Errorf("arm faults: %w", err)
	}
	resp, err := next(ctx, req)
	if err == nil && f.crashMethod == method {
		die()
	}
	return resp, err
}

type faultedController struct {
	csi.ControllerServer
	f *faultSet
}

func (c *faultedController) CreateVolume(ctx context.Context, r *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	return call(ctx, c.f, "CreateVolume", r, c.ControllerServer.CreateVolume)
}

func (c *faultedController) DeleteVolume(ctx context.Context, r *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return call(ctx, c.f, "DeleteVolume", r, c.ControllerServer.DeleteVolume)
}

func (c *faultedController) CreateSnapshot(ctx context.Context, r *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	return call(ctx, c.f, "CreateSnapshot", r, c.ControllerServer.CreateSnapshot)
}

func (c *faultedController) DeleteSnapshot(ctx context.Context, r *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return call(ctx, c.f, "DeleteSnapshot", r, c.ControllerServer.DeleteSnapshot)
}

func (c *faultedController) ControllerExpandVolume(ctx context.Context, r *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	return call(ctx, c.f, "ControllerExpandVolume", r, c.ControllerServer.ControllerExpandVolume)
}

// faultedGroups does for the group snapshot calls what faultedController
// does for the Controller's.
type faultedGroups struct {
	csi.GroupControllerServer
	f *faultSet
}

func (g *faultedGroups) CreateVolumeGroupSnapshot(ctx context.Context, r *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	return call(ctx, g.f, "CreateVolumeGroupSnapshot", r, g.GroupControllerServer.CreateVolumeGroupSnapshot)
}

func (g *faultedGroups) DeleteVolumeGroupSnapshot(ctx context.Context, r *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	return call(ctx, g.f, "DeleteVolumeGroupSnapshot", r, g.GroupControllerServer.DeleteVolumeGroupSnapshot)
}

// faultedNode does for the Node calls that change mounts what
// faultedController does for the Controller's.
type faultedNode struct {
	csi.NodeServer
	f *faultSet
}

func (n *faultedNode) NodeStageVolume(ctx context.Context, r *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return call(ctx, n.f, "NodeStageVolume", r, n.NodeServer.NodeStageVolume)
}

func (n *faultedNode) NodeUnstageVolume(ctx context.Context, r *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return call(ctx, n.f, "NodeUnstageVolume", r, n.NodeServer.NodeUnstageVolume)
}

func (n *faultedNode) NodePublishVolume(ctx context.Context, r *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return call(ctx, n.f, "NodePublishVolume", r, n.NodeServer.NodePublishVolume)
}

func (n *faultedNode) NodeUnpublishVolume(ctx context.Context, r *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	return call(ctx, n.f, "NodeUnpublishVolume", r, n.NodeServer.NodeUnpublishVolume)
}

func (n *faultedNode) NodeExpandVolume(ctx context.Context, r *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	return call(ctx, n.f, "NodeExpandVolume", r, n.NodeServer.NodeExpandVolume)
}
