package lvm

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Filesystem helpers that format and mount the way the node does on first
// stage: ext4 without discard at mkfs time and with all inode tables and
// the journal written now (so that later data% numbers measure data, not
// lazy initialisation), mounted with online discard; xfs clones with
// nouuid (a clone carries its origin's UUID).

func formatExt4(t *testing.T, dev string) {
	t.Helper()
	run(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev)
}

func formatXFS(t *testing.T, dev string) {
	t.Helper()
	run(t, "mkfs.xfs", "-q", "-f", "-K", dev)
}

// mount mounts dev on a fresh directory, unmounted again at cleanup.
func mount(t *testing.T, dev, fstype, opts string) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "mount", "-t", fstype, "-o", opts, dev, dir)
	t.Cleanup(func() {
		if err := unmountWhenIdle(dir); err != nil && !errors.Is(err, syscall.EINVAL) { // EINVAL: the test unmounted it
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

func umount(t *testing.T, dir string) {
	t.Helper()
	if err := unmountWhenIdle(dir); err != nil {
		t.Fatal(err)
	}
}

// unmountWhenIdle unmounts dir, waiting out a brief EBUSY. Tests run in
// parallel and every fork (any test's exec) copies this process's file table
// until the child execs; in the slow VM a child forked while a test still had
// a file open here can hold it for a moment after the test closed it.
func unmountWhenIdle(dir string) error {
	var err error
	for range 50 {
		if err = syscall.Unmount(dir, 0); !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	return nil
}

// The tests compare contents with CRC-64 (ECMA), not SHA-256: nothing
// here is an adversary's data, and under the VM's emulation SHA-256 runs
// at ~20 MB/s against ~185 MB/s for CRC-64, while the stream and transfer
// tests read 512 MiB devices again and again (minutes of the suite).
var sumTable = crc64.MakeTable(crc64.ECMA)

func newSum() hash.Hash64 { return crc64.New(sumTable) }

// writePattern writes size bytes of a reproducible pattern (a random MiB
// stamped with its index, so no two MiB are alike) to path, syncs it and
// returns its checksum.
func writePattern(t *testing.T, path string, size int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := copyPattern(f, size, seed)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("sync %s: %v", path, err)
	}
	return sum
}

func copyPattern(w io.Writer, size int64, seed uint64) (string, error) {
	const block = 1 << 20
	buf := make([]byte, block)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
	}
	h := newSum()
	mw := io.MultiWriter(w, h)
	for off := int64(0); off < size; off += block {
		binary.LittleEndian.PutUint64(buf, uint64(off/block))
		n := min(int64(block), size-off)
		if _, err := mw.Write(buf[:n]); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileSum is the checksum of the file (or device) at path, whole.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := newSum()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// deviceSum is the checksum of the first n bytes of a block device (or a
// file), which must have them.
func deviceSum(t *testing.T, dev string, n int64) string {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := newSum()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func dataFile(dir string) string { return filepath.Join(dir, "data.bin") }
