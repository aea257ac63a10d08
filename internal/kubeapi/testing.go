package kubeapi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-thin/csi-thin/internal/testenv"
)

// ForTest starts a Server for one test (stopped at its end) with the
// chart's CRDs, or skips the test (fails it in CI) without the binaries.
func ForTest(t testing.TB) *Server {
	t.Helper()
	if _, _, err := Binaries(); err != nil {
		testenv.Missing(t, err.Error())
	}
	dir, err := os.MkdirTemp("", "kubeapi-")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(context.Background(), dir, CRDDir(t))
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		os.RemoveAll(dir)
	})
	return s
}

// CRDDir is the chart's CRD directory of the module the test runs in.
func CRDDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "charts", "csi-thin", "files", "crds")
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}
