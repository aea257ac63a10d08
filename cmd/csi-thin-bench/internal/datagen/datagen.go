// Package datagen writes and checks large files of deterministic
// pseudo-random data. Random data defeats compression and deduplication
// anywhere in the stack, so space figures measure real allocation; a
// seeded stream makes the expected checksum known without keeping a copy.
package datagen

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
)

// chunk is the write size: large enough that syscalls do not dominate.
const chunk = 4 << 20

// WriteFile creates path with size bytes from the stream of seed, fsyncs
// it, and returns the data's sha256 in hex.
func WriteFile(ctx context.Context, path string, size int64, seed uint64) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	sum, err := Write(ctx, f, size, seed)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", path, err)
	}
	return sum, nil
}

// Write writes size bytes of the stream of seed to w and returns their
// sha256 in hex. It stops early when ctx ends.
func Write(ctx context.Context, w io.Writer, size int64, seed uint64) (string, error) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	h := sha256.New()
	buf := make([]byte, chunk)
	for left := size; left > 0; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n := int(min(int64(len(buf)), left))
		src.Read(buf[:n])
		h.Write(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return "", err
		}
		left -= int64(n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// HashFile returns the sha256 of a file in hex.
func HashFile(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, chunk)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Overwrite replaces the first size bytes of an existing file in place
// (no truncation, so the rest keeps sharing extents with its origin) with
// the stream of seed, and fsyncs it.
func Overwrite(ctx context.Context, path string, size int64, seed uint64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if _, err := Write(ctx, f, size, seed); err != nil {
		return fmt.Errorf("overwrite %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}
