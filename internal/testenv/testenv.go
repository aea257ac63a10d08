// Package testenv decides what integration tests do when the machine lacks
// something they need: in CI (CI=true) that is a failure, because a green
// run that skipped the real storage would be a lie; on a developer's
// machine it is a skip that says what is missing.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing fails (in CI) or skips the test, naming what is missing.
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s", what)
	}
	t.Skipf("skipping: %s", what)
}

// RequireRoot needs uid 0 (loop devices, mounts, btrfs ioctls).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "must run as root (loop devices, mounts)")
	}
}

// RequireCommands needs each tool on PATH.
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Missing(t, n+" not found on PATH")
		}
	}
}
