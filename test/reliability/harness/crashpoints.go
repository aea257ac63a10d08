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
