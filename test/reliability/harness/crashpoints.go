package harness

import (
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// EveryCommandStep calls point with a crash before, then after, the k-th
// storage command, for k = 1, 2, ... until a crash before the k-th does
// not fire (the call runs fewer than k commands: every step is covered).
// point reports whether its fault fired. A crash before the k-th command
// that fired while the crash after it did not means the call is not
// deterministic, which the crash suites cannot cover: the test fails.
// It returns the number of commands.
func EveryCommandStep(t testing.TB, what string, point func(faults []command.Fault) (fired bool)) int {
	t.Helper()
	for k := 1; ; k++ {
		if !point([]command.Fault{{Kind: command.FaultCrashBefore, Nth: k}}) {
			return k - 1
		}
		if !point([]command.Fault{{Kind: command.FaultCrashAfter, Nth: k}}) {
			t.Fatalf("%s: crash-before@%d fired but crash-after@%d did not", what, k, k)
		}
	}
}

// EveryCommandStepVarying is EveryCommandStep for a call whose number of
// commands varies by design: a btrfs group snapshot whose members landed
// in two transactions deletes them and takes them again, when the
// kernel's timing says so. Its first minCommands commands always run, and each
// gets both crashes as in EveryCommandStep (a call that runs fewer fails
// the test); after them, the loop ends at the first crash, before or
// after, that does not fire.
func EveryCommandStepVarying(t testing.TB, what string, minCommands int, point func(faults []command.Fault) (fired bool)) int {
	t.Helper()
	for k := 1; ; k++ {
		if !point([]command.Fault{{Kind: command.FaultCrashBefore, Nth: k}}) {
			if k-1 < minCommands {
				t.Fatalf("%s: the call ran %d commands, want at least %d", what, k-1, minCommands)
			}
			return k - 1
		}
		if !point([]command.Fault{{Kind: command.FaultCrashAfter, Nth: k}}) {
			if k <= minCommands {
				t.Fatalf("%s: crash-before@%d fired but crash-after@%d did not", what, k, k)
			}
			return k
		}
	}
}

// SortedKeys returns the keys of a set, sorted.
func SortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Sorted sorts l in place and returns it.
func Sorted(l []string) []string {
	slices.Sort(l)
	return l
}
