package btrfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestSubvolumeIDOfMatchesTheTool checks the ioctl against `btrfs
// inspect-internal rootid` on a real pool, and that anything but a
// subvolume's root is refused rather than naming some other qgroup.
func TestSubvolumeIDOfMatchesTheTool(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "btrfs", "mkfs.btrfs", "losetup", "mount")
	dir := t.TempDir()
	p, err := Open(context.Background(), Config{
		PoolPath: filepath.Join(dir, "mnt"), LoopFile: filepath.Join(dir, "pool.img"),
		LoopSizeBytes: 512 * backend.MiB, NodeName: "test-node",
	})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Teardown(context.Background(), true); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	ctx := context.Background()
	subvols := []string{filepath.Join(p.mountPath, "a"), filepath.Join(p.mountPath, "b")}
	for _, sv := range subvols {
		if err := p.cli.createSubvolume(ctx, sv); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint64]bool{}
	for _, sv := range subvols {
		got, err := subvolumeIDOf(sv)
		if err != nil {
			t.Fatalf("subvolumeIDOf(%s): %v", sv, err)
		}
		out, err := exec.Command("btrfs", "inspect-internal", "rootid", sv).Output()
		if err != nil {
			t.Fatal(err)
		}
		want, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if got != want || seen[got] {
			t.Errorf("subvolumeIDOf(%s) = %d, the tool says %d (seen before: %v)", sv, got, want, seen[got])
		}
		seen[got] = true
	}

	plainDir := filepath.Join(subvols[0], "dir")
	if err := os.Mkdir(plainDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{plainDir, dir, filepath.Join(dir, "missing")} {
		if id, err := subvolumeIDOf(path); err == nil {
			t.Errorf("subvolumeIDOf(%s) = %d, want an error: not a subvolume root", path, id)
		}
	}
}
