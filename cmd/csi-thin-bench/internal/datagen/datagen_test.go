package datagen

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
)

func TestStreamIsDeterministicAndChecksumMatchesFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "data")
	const size = chunk + 12345 // a partial last chunk
	sum, err := WriteFile(ctx, path, size, 7)
	if err != nil {
		t.Fatal(err)
	}
	got, err := HashFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if got != sum {
		t.Errorf("file hashes to %s, writer reported %s", got, sum)
	}
	var a, b bytes.Buffer
	sa, _ := Write(ctx, &a, 1000, 7)
	sb, _ := Write(ctx, &b, 1000, 8)
	if sa == sb || bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("different seeds gave the same data")
	}
	if again, _ := Write(ctx, &bytes.Buffer{}, 1000, 7); again != sa {
		t.Error("same seed gave different data")
	}
}
