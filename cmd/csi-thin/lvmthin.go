package main

import (
	"context"
	"errors"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/exec"
)

// openLVMThin is wired once pkg/lvmthin lands.
func openLVMThin(ctx context.Context, o *options, runner exec.Runner, loopSize int64) (backend.Local, error) {
	return nil, errors.New("lvmthin backend is not built yet")
}
