// Package sanity runs the upstream CSI conformance suite (csi-sanity, from
// csi-test) against a real local pool: the driver is started in-process on
// a unix socket exactly as in production, with both services.
package sanity

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// Options adjust the suite for a backend.
type Options struct {
	// VolumeSize is the size of test volumes (default 64 MiB).
	VolumeSize int64
	// AccessType is "mount" (default) or "block".
	AccessType string
	// Parameters are StorageClass parameters for test volumes.
	Parameters map[string]string
}

// Run starts the driver over pool and runs csi-sanity against it.
func Run(t *testing.T, pool backend.Local, opts Options) {
	dir := t.TempDir()
	endpoint := "unix://" + filepath.Join(dir, "csi.sock")
	ctrl := controller.New(pool)
	dcfg := driver.Config{
		Endpoint:   endpoint,
		Identity:   driver.NewIdentity(pool.Health, driver.WithController),
		Controller: ctrl,
		Node:       node.New(pool, node.Options{MaxVolumes: 1000}),
	}
	if groups := ctrl.Groups(); groups != nil {
		dcfg.GroupController = groups
	}
	d, err := driver.New(dcfg)
	if err != nil {
		t.Fatalf("start driver: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver: %v", err)
		}
	})

	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = opts.VolumeSize
	if cfg.TestVolumeSize == 0 {
		cfg.TestVolumeSize = 64 * backend.MiB
	}
	cfg.TestVolumeExpandSize = 2 * cfg.TestVolumeSize
	cfg.TestVolumeAccessType = opts.AccessType
	cfg.TestVolumeParameters = opts.Parameters
	cfg.IdempotentCount = 2
	cfg.TestNodeVolumeAttachLimit = true
	cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.CreateStagingDir = cfg.CreateTargetDir
	cfg.CheckPath = checkPath
	sanity.Test(t, cfg)
}

// checkPath tells csi-sanity what is at a path, to verify that unpublish
// removes the target.
func checkPath(p string) (sanity.PathKind, error) {
	fi, err := os.Lstat(p)
	switch {
	case os.IsNotExist(err):
		return sanity.PathIsNotFound, nil
	case err != nil:
		return "", err
	case fi.IsDir():
		return sanity.PathIsDir, nil
	case fi.Mode().IsRegular() || fi.Mode()&os.ModeDevice != 0:
		return sanity.PathIsFile, nil
	}
	return sanity.PathIsOther, nil
}
