// Package reliability proves that csi-thin survives what production
// throws at it, on a real btrfs pool on a loop device: SIGKILL at every
// step of every mutating call, failing, hanging and garbling storage
// tools, concurrent callers, a full pool, and hostile input. The LVM
// thin counterparts live in ./lvm and run in the VM of test/vm.
package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

func TestMain(m *testing.M) {
	harness.MaybeServe(openBtrfsChild)
	os.Exit(m.Run())
}

// childConfig is what a driver child needs to reopen the test's pool: the
// filesystem stays mounted on its loop device across child restarts, as a
// node's pool stays across driver restarts.
type childConfig struct {
	PoolPath string `json:"poolPath"`
	NodeName string `json:"nodeName"`
}

func openBtrfsChild(ctx context.Context, config string, runner command.Runner) (backend.Local, error) {
	var c childConfig
	if err := json.Unmarshal([]byte(config), &c); err != nil {
		return nil, fmt.Errorf("child config %q: %w", config, err)
	}
	return btrfs.Open(ctx, btrfs.Config{PoolPath: c.PoolPath, NodeName: c.NodeName, Runner: runner})
}

func childConfigOf(t testing.TB, pool *btrfs.Pool) string {
	t.Helper()
	b, err := json.Marshal(childConfig{PoolPath: pool.MountPath(), NodeName: pool.NodeName()})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
