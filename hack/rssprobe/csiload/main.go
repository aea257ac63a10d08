// Command csiload drives a csi-thin controller and node plugin through
// their CSI sockets, as the sidecars and the kubelet would: each round
// creates a volume through the controller (which the node agent then
// creates through its ThinVolume), snapshots it, clones the snapshot,
// stages and publishes the volume on the node, writes a file into it, and
// undoes everything. hack/rss-node.sh runs it so that the node plugin's
// memory is measured under real work.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/csi-thin/csi-thin/internal/csiclient"
)

func main() {
	controller := flag.String("controller", "", "the controller's CSI endpoint")
	node := flag.String("node", "", "the node plugin's CSI endpoint")
	dir := flag.String("dir", "", "directory for staging and target paths")
	rounds := flag.Int("rounds", 20, "rounds in all")
	parallel := flag.Int("parallel", 4, "rounds at a time")
	flag.Parse()
	if err := run(*controller, *node, *dir, *rounds, *parallel); err != nil {
		fmt.Fprintln(os.Stderr, "csiload:", err)
		os.Exit(1)
	}
}

func run(controllerEP, nodeEP, dir string, rounds, parallel int) error {
	if controllerEP == "" || nodeEP == "" || dir == "" {
		return errors.New("-controller, -node and -dir are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctl, err := csiclient.Dial(controllerEP)
	if err != nil {
		return err
	}
	defer ctl.Close()
	nod, err := csiclient.Dial(nodeEP)
	if err != nil {
		return err
	}
	defer nod.Close()
	for _, c := range []*csiclient.Client{ctl, nod} {
		if err := c.WaitReady(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for i := range rounds {
		g.Go(func() error { return round(ctx, ctl, nod, filepath.Join(dir, fmt.Sprint(i)), fmt.Sprintf("rss-%d", i)) })
	}
	return g.Wait()
}

func round(ctx context.Context, ctl, nod *csiclient.Client, dir, name string) error {
	const size = 64 << 20
	v, err := ctl.CreateVolume(ctx, name, size)
	if err != nil {
		return fmt.Errorf("create volume %s: %w", name, err)
	}
	s, err := ctl.CreateSnapshot(ctx, name+"-snap", v.GetVolumeId())
	if err != nil {
		return fmt.Errorf("create snapshot of %s: %w", v.GetVolumeId(), err)
	}
	clone, err := ctl.RestoreSnapshot(ctx, name+"-restore", s.GetSnapshotId(), size)
	if err != nil {
		return fmt.Errorf("restore %s: %w", s.GetSnapshotId(), err)
	}
	a, err := nod.Attach(ctx, v.GetVolumeId(), dir, nil)
	if err != nil {
		return fmt.Errorf("attach %s: %w", v.GetVolumeId(), err)
	}
	if err := os.WriteFile(filepath.Join(a.TargetPath, "data"), make([]byte, 1<<20), 0o600); err != nil {
		return fmt.Errorf("write into %s: %w", v.GetVolumeId(), err)
	}
	if err := a.Detach(ctx); err != nil {
		return fmt.Errorf("detach %s: %w", v.GetVolumeId(), err)
	}
	if err := ctl.DeleteVolume(ctx, clone.GetVolumeId()); err != nil {
		return fmt.Errorf("delete %s: %w", clone.GetVolumeId(), err)
	}
	if err := ctl.DeleteSnapshot(ctx, s.GetSnapshotId()); err != nil {
		return fmt.Errorf("delete %s: %w", s.GetSnapshotId(), err)
	}
	if err := ctl.DeleteVolume(ctx, v.GetVolumeId()); err != nil {
		return fmt.Errorf("delete %s: %w", v.GetVolumeId(), err)
	}
	return nil
}
