package reliability

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// serve runs the driver in this process over pool, on a unix socket as in
// production, and returns a client; both stop when the test ends.
func serve(t testing.TB, pool backend.Local) *csiclient.Client {
	t.Helper()
	endpoint := "unix://" + filepath.Join(t.TempDir(), "csi.sock")
	d, err := driver.New(driver.Config{
		Endpoint:   endpoint,
		Identity:   driver.NewIdentity(pool.Health, driver.WithController),
		Controller: controller.New(pool),
		Node:       node.New(pool, node.Options{}),
	})
	if err != nil {
		t.Fatalf("start driver: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	c, err := csiclient.Dial(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	return c
}
