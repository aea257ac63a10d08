// Package btrfstest makes real btrfs pools on loop files for tests.
package btrfstest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// Require checks what a loop-backed btrfs pool needs.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "btrfs", "mkfs.btrfs", "losetup", "blkid", "mount")
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(b), "btrfs") {
		testenv.Missing(t, "the kernel has no btrfs (/proc/filesystems)")
	}
}

// NewPool creates a sparse loop file of size bytes in a fresh directory,
// opens a pool on it, and tears everything down (mount, loop device, file)
// when the test ends. cfg may set Overprovision, FullPercent, QuotaMode.
func NewPool(t testing.TB, size int64, cfg btrfs.Config) *btrfs.Pool {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	cfg.PoolPath = filepath.Join(dir, "mnt")
	cfg.LoopFile = filepath.Join(dir, "pool.img")
	cfg.LoopSizeBytes = size
	if cfg.NodeName == "" {
		cfg.NodeName = "test-node"
	}
	if cfg.Runner == nil {
		cfg.Runner = &command.Host{}
	}
	pool, err := btrfs.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open btrfs pool: %v", err)
	}
	t.Cleanup(func() {
		if err := pool.Teardown(context.Background(), true); err != nil {
			t.Errorf("teardown pool: %v", err)
		}
	})
	return pool
}
