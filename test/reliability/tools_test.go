package reliability

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// hangDeadline is the CSI call deadline in the hang cases: the sidecars'
// --timeout, shortened so that the suite stays quick.
const hangDeadline = 400 * time.Millisecond

type toolStats struct {
	cases, failedClearly, tolerated int
}

// TestToolFailuresAtEveryStep makes the k-th btrfs command of each
// mutating call exit non-zero, print garbage, or hang past the call's
// deadline, for every k. Each call must fail with a precise code and a
// message naming the object and the command (or shrug off a harmless
// failure), return within its deadline, leave no process or goroutine
// behind, and succeed when retried once the tool behaves again.
func TestToolFailuresAtEveryStep(t *testing.T) {
	base := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	faults := &command.FaultRunner{Next: &command.Host{}}
	pool, err := btrfs.Open(context.Background(), btrfs.Config{PoolPath: base.MountPath(), NodeName: base.NodeName(), Runner: faults})
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, pool)
	// The model inspects the pool through the test's own handle, which
	// knows the loop device.
	w := newWorld(t, base)
	w.seed(t, c)
	goroutines := settledGoroutines(0)

	var total toolStats
	start := time.Now()
	for _, kind := range []command.FaultKind{command.FaultFail, command.FaultGarbage, command.FaultHang} {
		for _, op := range crashOps() {
			if op.group {
				continue // covered by TestCrashAtEveryStep only
			}
			n, slow := 0, 0
			for k := 1; ; k++ {
				n++
				name := fmt.Sprintf("%s-%s-%d", kind, op.name, n)
				if op.setup != nil {
					faults.Disarm()
					op.setup(t, w, c, name)
				}
				fault := command.Fault{Kind: kind, Nth: k, Stderr: "ERROR: injected failure", Stdout: "garbage\x00{]"}
				faults.Arm(fault)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if kind == command.FaultHang {
					ctx, cancel = context.WithTimeout(context.Background(), hangDeadline)
				}
				callStart := time.Now()
				err := op.call(ctx, w, c, name)
				elapsed := time.Since(callStart)
				cancel()
				fired := faults.Hits() > 0
				faults.Disarm()
				if !fired && kind == command.FaultHang && status.Code(err) == codes.DeadlineExceeded && slow < 3 {
					// No tool hung, yet the call outran the short deadline
					// a hang case gets (a busy machine) before it reached
					// step k. Finish it under the normal deadline (RPCs
					// are idempotent) and try step k again with a new name.
					slow++
					rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
					err = op.call(rctx, w, c, name)
					rcancel()
					if err != nil {
						t.Fatalf("%s %s: a slow call, finished without a fault: %v", kind, op.name, err)
					}
					op.done(t, w, name)
					k--
					continue
				}
				if !fired {
					if err != nil {
						t.Fatalf("%s %s: failed with no fault injected: %v", kind, op.name, err)
					}
					op.done(t, w, name)
					break // fewer than k commands: every step was covered
				}
				total.cases++
				label := fmt.Sprintf("%s %s %s", op.name, kind, command.FormatFaults([]command.Fault{fault}))
				if err == nil {
					total.tolerated++
				} else {
					total.failedClearly++
					checkToolError(t, label, kind, err, elapsed, backend.VolumeIDFor(name), backend.SnapshotIDFor(name))
				}
				if kind == command.FaultHang {
					waitNoHungTool(t, label)
				}
				for try := 1; try <= 2; try++ {
					rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
					err := op.call(rctx, w, c, name)
					rcancel()
					if err != nil {
						t.Fatalf("[%s] retry %d with a healthy tool failed: %v", label, try, err)
					}
				}
				op.done(t, w, name)
				checkWorld(t, w, c, label)
			}
		}
	}
	if now := settledGoroutines(goroutines); now > goroutines+2 {
		t.Errorf("goroutines grew from %d to %d across the fault cases", goroutines, now)
	}
	t.Logf("tool faults: %d cases (%d failed with a clear error, %d tolerated) in %s",
		total.cases, total.failedClearly, total.tolerated, time.Since(start).Round(time.Millisecond))
}

// checkToolError insists on an error a person can act on: the right code,
// the object it is about, and what went wrong.
func checkToolError(t *testing.T, label string, kind command.FaultKind, err error, elapsed time.Duration, ids ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	msg := st.Message()
	switch kind {
	case command.FaultHang:
		if st.Code() != codes.DeadlineExceeded {
			t.Errorf("[%s] code %s, want DeadlineExceeded: %s", label, st.Code(), msg)
		}
		if elapsed > hangDeadline+2*time.Second {
			t.Errorf("[%s] returned after %s, deadline was %s", label, elapsed, hangDeadline)
		}
		return // the client's own deadline message; the server logs the rest
	case command.FaultFail:
		if !strings.Contains(msg, "injected failure") || !strings.Contains(msg, "btrfs ") {
			t.Errorf("[%s] message lacks the command and its stderr: %q", label, msg)
		}
	case command.FaultGarbage:
		if !strings.Contains(msg, "unexpected output") && !strings.Contains(msg, "parse") {
			t.Errorf("[%s] message does not say the output was not understood: %q", label, msg)
		}
	}
	if st.Code() == codes.Unknown || st.Code() == codes.OK {
		t.Errorf("[%s] code %s: %q", label, st.Code(), msg)
	}
	named := false
	for _, id := range ids {
		named = named || strings.Contains(msg, id)
	}
	if !named {
		t.Errorf("[%s] message does not name the object: %q", label, msg)
	}
}

// waitNoHungTool fails if a stand-in for a hung tool outlives its call.
func waitNoHungTool(t *testing.T, label string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := hungTools()
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("[%s] hung tool processes still running: %v", label, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hungTools() []string {
	var out []string
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && string(b) == "sleep\x00"+command.HangSeconds+"\x00" {
			out = append(out, filepath.Base(filepath.Dir(m)))
		}
	}
	return out
}

// settledGoroutines waits briefly for goroutines to wind down to at most
// want (0: just settle) and returns the count.
func settledGoroutines(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100 && (want == 0 && i < 10 || n > want); i++ {
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}
