package snapshotexport_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// The environment of the agent child (TestRestoreAgentChild).
const (
	envChildPool       = "CSI_THIN_RESTORE_CHILD_POOL" // the mount path of the child's btrfs pool
	envChildNode       = "CSI_THIN_RESTORE_CHILD_NODE"
	envChildKubeconfig = "CSI_THIN_RESTORE_CHILD_KUBECONFIG"
	envChildFaults     = "CSI_THIN_RESTORE_CHILD_FAULTS" // command.ParseFaults syntax
)

// TestRestoreAgentChild is the node agent that TestRestoreKilledAtEveryStep
// runs in a child process (this test binary run again) so that a fault
// can SIGKILL it: a real kill, with whatever the agent had in flight
// lost. Run on its own, it skips.
func TestRestoreAgentChild(t *testing.T) {
	mount := os.Getenv(envChildPool)
	if mount == "" {
		t.Skip("the agent TestRestoreKilledAtEveryStep runs and kills")
	}
	faults, err := command.ParseFaults(os.Getenv(envChildFaults))
	if err != nil {
		t.Fatal(err)
	}
	runner := &command.FaultRunner{Next: &command.Host{}, Faults: faults, Crash: func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pool, err := btrfs.Open(ctx, btrfs.Config{PoolPath: mount, NodeName: os.Getenv(envChildNode), Runner: runner})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv(envChildKubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := newAgent(cfg, scheme, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// restoreSteps are the command lines of a restore that change a pool:
// what a kill before or after leaves differs.
var restoreSteps = []string{
	"btrfs receive",
	"btrfs subvolume snapshot",
	"btrfs subvolume delete",
	"btrfs qgroup create",
	"btrfs qgroup assign",
	"btrfs qgroup limit",
	"btrfs qgroup destroy",
	"btrfs property set",
	"mv",
}

// TestRestoreKilledAtEveryStep SIGKILLs the agent of a restore (a chain:
// a full export and an incremental one) before and after each command
// of the restore that changes the pool, then starts the agent again on
// the same pool, as a restarted pod would: the restore completes, Ready
// with the source's files, and deleting it leaves no subvolume on the
// pool. Half the cases delete the ThinVolume while the agent is away:
// the returning agent leaves no subvolume either. The steps are those a
// restore ran in a first, unharmed run (the probe), counted per command
// as command.FaultRunner counts them.
func TestRestoreKilledAtEveryStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	e.ctx = ctx
	src := e.startAgent("n1")
	vol, _, s2 := e.exportedTwice(src)
	exportID := ExportIDOf(s2)

	var faults []command.Fault
	t.Run("probe", func(t *testing.T) {
		lines := e.probeRestore(t, exportID, src, vol)
		seen := map[string]int{}
		for _, line := range lines {
			for _, step := range restoreSteps {
				if strings.HasPrefix(line, step+" ") {
					seen[step]++
					faults = append(faults,
						command.Fault{Kind: command.FaultCrashBefore, Nth: seen[step], Match: step},
						command.Fault{Kind: command.FaultCrashAfter, Nth: seen[step], Match: step})
					break
				}
			}
		}
		t.Logf("a restore's steps: %v (of %d commands)", seen, len(lines))
		if seen["btrfs receive"] != 2 {
			t.Fatalf("the restore of a chain of two ran btrfs receive %d times, want 2: %q", seen["btrfs receive"], lines)
		}
	})
	for i, fault := range faults {
		deleteWhileAway := i%4 >= 2 // both kinds of each other step
		name := fmt.Sprintf("%s@%d:%s", fault.Kind, fault.Nth, fault.Match)
		if deleteWhileAway {
			name += ",deleted"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			node := fmt.Sprintf("k%d", i)
			pool := newPool(t, node)
			child := e.startAgentChild(t, pool, fault)
			tv := e.createRestore(t, "restored-on-"+node, node, exportID)
			child.waitKilled(t)
			if deleteWhileAway {
				if err := e.c.Delete(ctx, tv); err != nil {
					t.Fatal(err)
				}
			}
			restarted := reopen(t, pool)
			e.runAgent(t, restarted)
			if !deleteWhileAway {
				tv = e.verdict(t, tv)
				if tv.Status.Phase != thinv1.PhaseReady {
					t.Fatalf("restore after the kill: %s %s: %s", tv.Status.Phase, tv.Status.Code, tv.Status.Message)
				}
				wantSameFiles(t, src, vol, restarted, tv.Name)
				if err := e.c.Delete(ctx, tv); err != nil {
					t.Fatal(err)
				}
			}
			waitGone(t, ctx, e.c, tv)
			wantEmptyPool(t, ctx, restarted)
		})
	}
}

// probeRestore restores exportID on a pool of its own through an agent
// whose runner records every command, checks the result and returns the
// commands run from the pool's opening on, as a child's count them.
func (e *env) probeRestore(t *testing.T, exportID string, src *btrfs.Pool, vol string) []string {
	t.Helper()
	pool := newPool(t, "probe")
	rec := &command.FaultRunner{Next: &command.Host{}}
	probed, err := btrfs.Open(e.ctx, btrfs.Config{PoolPath: pool.MountPath(), NodeName: "probe", Runner: rec})
	if err != nil {
		t.Fatal(err)
	}
	e.runAgent(t, probed)
	tv := e.verdict(t, e.createRestore(t, "probed", "probe", exportID))
	if tv.Status.Phase != thinv1.PhaseReady {
		t.Fatalf("probe restore: %s %s: %s", tv.Status.Phase, tv.Status.Code, tv.Status.Message)
	}
	wantSameFiles(t, src, vol, probed, tv.Name)
	probed.Settle()
	return rec.Lines()
}

// reopen opens pool again, as an agent that starts on it does (startup
// recovery included).
func reopen(t *testing.T, pool *btrfs.Pool) *btrfs.Pool {
	t.Helper()
	p, err := btrfs.Open(context.Background(), btrfs.Config{PoolPath: pool.MountPath(), NodeName: pool.NodeName()})
	if err != nil {
		t.Fatalf("reopen the pool after the kill: %v", err)
	}
	return p
}

// agentChild is a node agent in a child process.
type agentChild struct {
	cmd    *exec.Cmd
	output bytes.Buffer
	exited chan error
}

// startAgentChild runs pool's node agent in a child process whose runner
// SIGKILLs it at fault.
func (e *env) startAgentChild(t *testing.T, pool *btrfs.Pool, fault command.Fault) *agentChild {
	t.Helper()
	c := &agentChild{exited: make(chan error, 1)}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestRestoreAgentChild$", "-test.count=1")
	c.cmd.Env = append(os.Environ(),
		envChildPool+"="+pool.MountPath(),
		envChildNode+"="+pool.NodeName(),
		envChildKubeconfig+"="+e.kubeconfig,
		envChildFaults+"="+command.FormatFaults([]command.Fault{fault}))
	c.cmd.Stdout, c.cmd.Stderr = &c.output, &c.output
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	return c
}

// waitKilled waits for the child to die of its fault's SIGKILL.
func (c *agentChild) waitKilled(t *testing.T) {
	t.Helper()
	select {
	case err := <-c.exited:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
				return
			}
		}
		t.Fatalf("agent child ended (%v) without its fault's SIGKILL:\n%s", err, c.output.String())
	case <-time.After(3 * time.Minute):
		t.Fatalf("agent child not killed by its fault within 3 minutes:\n%s", c.output.String())
	}
}

// wantEmptyPool checks that pool holds no volume, no snapshot, and no
// subvolume at all: nothing a kill left behind.
func wantEmptyPool(t *testing.T, ctx context.Context, pool *btrfs.Pool) {
	t.Helper()
	pool.Settle()
	vols, err := pool.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := pool.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 0 || len(snaps) != 0 {
		t.Errorf("pool holds %d volumes and %d snapshots after the restore was deleted", len(vols), len(snaps))
	}
	out, err := exec.CommandContext(ctx, "btrfs", "subvolume", "list", pool.MountPath()).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs subvolume list: %v: %s", err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("subvolumes left on the pool:\n%s", s)
	}
}
