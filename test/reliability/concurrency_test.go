package reliability

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

const parallel = 32

// TestConcurrentSameName: 32 simultaneous CreateVolume (and then
// CreateSnapshot) calls with one name, as a provisioner retrying after
// timeouts would send them, make exactly one object, and every caller
// gets its ID.
func TestConcurrentSameName(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	c := serve(t, pool)
	w := newWorld(t, pool)

	ids := make([]string, parallel)
	snapIDs := make([]string, parallel)
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		errs := make(chan error, parallel)
		for i := 0; i < parallel; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := f(i); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	run(func(i int) error {
		v, err := c.CreateVolume(context.Background(), "same-name", crashVolumeBytes)
		ids[i] = v.GetVolumeId()
		return err
	})
	run(func(i int) error {
		s, err := c.CreateSnapshot(context.Background(), "same-snap", ids[0])
		snapIDs[i] = s.GetSnapshotId()
		return err
	})
	for i := range ids {
		if ids[i] != backend.VolumeIDFor("same-name") || snapIDs[i] != backend.SnapshotIDFor("same-snap") {
			t.Fatalf("caller %d got volume %q snapshot %q", i, ids[i], snapIDs[i])
		}
	}
	w.volumes[ids[0]] = true
	w.snapshots[snapIDs[0]] = true
	checkWorld(t, w, c, "32 same-name creates")
}

// TestConcurrentMixed: 32 workers each create a volume, snapshot it,
// restore the snapshot, clone the volume, then delete a part of what they
// made, while readers list, get capacity and health all along. Run under
// -race; the final pool must hold exactly what the workers kept.
func TestConcurrentMixed(t *testing.T) {
	pool := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	c := serve(t, pool)
	w := newWorld(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	type kept struct{ volumes, snapshots []string }
	results := make([]kept, parallel)
	var wg sync.WaitGroup
	errs := make(chan error, 4*parallel)
	for i := 0; i < parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := mixedWorker(ctx, c, i, &results[i].volumes, &results[i].snapshots); err != nil {
				errs <- fmt.Errorf("worker %d: %w", i, err)
			}
		}()
	}
	stopReaders := make(chan struct{})
	var readers sync.WaitGroup
	reads := make([]int, 3)
	for r := 0; r < 3; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stopReaders:
					return
				default:
				}
				var err error
				switch r {
				case 0:
					_, err = c.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 5})
				case 1:
					_, err = c.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
				case 2:
					_, err = c.Controller.GetCapacity(ctx, &csi.GetCapacityRequest{})
				}
				if err != nil {
					errs <- fmt.Errorf("reader %d: %w", r, err)
					return
				}
				reads[r]++
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	elapsed := time.Since(start)
	close(stopReaders)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, k := range results {
		for _, id := range k.volumes {
			w.volumes[id] = true
		}
		for _, id := range k.snapshots {
			w.snapshots[id] = true
		}
	}
	checkWorld(t, w, c, "32 mixed workers")
	calls := parallel*5 + (parallel+2)/3 // 4 creates and 1 delete each, a 2nd delete on every third
	t.Logf("concurrency: %d workers, %d mutating calls in %s with %d concurrent reads; %d volumes and %d snapshots kept",
		parallel, calls, elapsed.Round(time.Millisecond), reads[0]+reads[1]+reads[2], len(w.volumes), len(w.snapshots))
}

// mixedWorker runs one worker's calls and reports what it kept.
func mixedWorker(ctx context.Context, c interface {
	CreateVolume(context.Context, string, int64) (*csi.Volume, error)
	CreateSnapshot(context.Context, string, string) (*csi.Snapshot, error)
	RestoreSnapshot(context.Context, string, string, int64) (*csi.Volume, error)
	CloneVolume(context.Context, string, string, int64) (*csi.Volume, error)
	DeleteVolume(context.Context, string) error
	DeleteSnapshot(context.Context, string) error
}, i int, volumes, snapshots *[]string) error {
	v, err := c.CreateVolume(ctx, fmt.Sprintf("mixed-%d", i), crashVolumeBytes)
	if err != nil {
		return err
	}
	s, err := c.CreateSnapshot(ctx, fmt.Sprintf("mixed-snap-%d", i), v.GetVolumeId())
	if err != nil {
		return err
	}
	r, err := c.RestoreSnapshot(ctx, fmt.Sprintf("mixed-restore-%d", i), s.GetSnapshotId(), crashVolumeBytes)
	if err != nil {
		return err
	}
	cl, err := c.CloneVolume(ctx, fmt.Sprintf("mixed-clone-%d", i), v.GetVolumeId(), crashVolumeBytes)
	if err != nil {
		return err
	}
	// Delete the source volume (its snapshot and copies must outlive it)
	// on even workers, the snapshot on odd ones, and the clone on every
	// third.
	keepVols := []string{r.GetVolumeId()}
	keepSnaps := []string{}
	if i%2 == 0 {
		if err := c.DeleteVolume(ctx, v.GetVolumeId()); err != nil {
			return err
		}
		keepSnaps = append(keepSnaps, s.GetSnapshotId())
	} else {
		if err := c.DeleteSnapshot(ctx, s.GetSnapshotId()); err != nil {
			return err
		}
		keepVols = append(keepVols, v.GetVolumeId())
	}
	if i%3 == 0 {
		if err := c.DeleteVolume(ctx, cl.GetVolumeId()); err != nil {
			return err
		}
	} else {
		keepVols = append(keepVols, cl.GetVolumeId())
	}
	*volumes, *snapshots = keepVols, keepSnaps
	return nil
}
