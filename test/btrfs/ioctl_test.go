package btrfs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// TestSubvolumeIDOfMatchesTheTool checks the ioctl against `btrfs
// inspect-internal rootid` on a real pool, and that anything but a
// subvolume's root is refused rather than naming some other qgroup.
func TestSubvolumeIDOfMatchesTheTool(t *testing.T) {
	p := btrfstest.NewPool(t, 512*backend.MiB, btrfs.Config{})
	dir := t.TempDir() // not on btrfs
	subvols := []string{filepath.Join(p.MountPath(), "a"), filepath.Join(p.MountPath(), "b")}
	for _, sv := range subvols {
		btrfsCmd(t, "subvolume", "create", sv)
	}
	seen := map[uint64]bool{}
	for _, sv := range subvols {
		got, err := btrfs.SubvolumeIDOf(sv)
		if err != nil {
			t.Fatalf("SubvolumeIDOf(%s): %v", sv, err)
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
			t.Errorf("SubvolumeIDOf(%s) = %d, the tool says %d (seen before: %v)", sv, got, want, seen[got])
		}
		seen[got] = true
	}

	plainDir := filepath.Join(subvols[0], "dir")
	if err := os.Mkdir(plainDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{plainDir, dir, filepath.Join(dir, "missing")} {
		if id, err := btrfs.SubvolumeIDOf(path); err == nil {
			t.Errorf("SubvolumeIDOf(%s) = %d, want an error: not a subvolume root", path, id)
		}
	}
}
