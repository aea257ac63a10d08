package trim

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// fakeTrim is the FITRIM seam: it returns bytes per path, fails where
// told, and fails the test if two trims overlap.
type fakeTrim struct {
	bytes    map[string]uint64
	fail     map[string]error
	inFlight atomic.Int32
	calls    []string
	t        *testing.T
}

func (f *fakeTrim) trim(path string) (uint64, error) {
	if f.inFlight.Add(1) != 1 {
		f.t.Errorf("two trims at once (at %s)", path)
	}
	defer f.inFlight.Add(-1)
	time.Sleep(time.Millisecond)
	f.calls = append(f.calls, path)
	return f.bytes[path], f.fail[path]
}

func TestRunTrimsEachIntervalWithJitter(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC))
	ft := &fakeTrim{t: t, bytes: map[string]uint64{"/a": 1 << 20, "/b": 2 << 20}}
	rounds := make(chan []Result, 4)
	var round []Result
	tr := &Trimmer{
		Interval: time.Hour,
		Find: func(context.Context) ([]Target, error) {
			return []Target{{VolumeID: "v-a", Path: "/a"}, {VolumeID: "v-b", Path: "/b"}}, nil
		},
		Report: func(_ context.Context, r Result) {
			round = append(round, r)
			if len(round) == 2 {
				rounds <- round
				round = nil
			}
		},
		Clock:  clk,
		Trim:   ft.trim,
		Jitter: func() float64 { return 0.5 }, // +5% of the interval
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- tr.Run(ctx) }()

	for round := 1; round <= 2; round++ {
		waitForTimer(t, clk)
		clk.Step(time.Hour + 3*time.Minute - time.Nanosecond)
		select {
		case <-rounds:
			t.Fatalf("round %d ran before interval + jitter", round)
		case <-time.After(50 * time.Millisecond):
		}
		clk.Step(time.Nanosecond)
		select {
		case got := <-rounds:
			if got[0].Bytes != 1<<20 || got[1].Bytes != 2<<20 || got[0].Err != nil || got[1].Err != nil {
				t.Fatalf("round %d: %+v", round, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d did not run at interval + jitter", round)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(ft.calls) != 4 {
		t.Fatalf("trims: %v, want /a and /b twice", ft.calls)
	}
}

// waitForTimer waits until Run waits on the fake clock.
func waitForTimer(t *testing.T, clk *testingclock.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("the trimmer never waited for its interval")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunOffAtZeroInterval(t *testing.T) {
	tr := &Trimmer{Find: func(context.Context) ([]Target, error) {
		t.Error("a trimmer with interval 0 listed filesystems")
		return nil, nil
	}}
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestRunOnceSkipsBusyVolumesAndGoesOnAfterAFailure(t *testing.T) {
	ft := &fakeTrim{t: t,
		bytes: map[string]uint64{"/pool": 5 << 20, "/ok": 64 << 20},
		fail:  map[string]error{"/broken": errors.New("EIO")},
	}
	var locked []string
	tr := &Trimmer{
		Find: func(context.Context) ([]Target, error) {
			return []Target{{VolumeID: "v-busy", Path: "/busy"}, {VolumeID: "v-broken", Path: "/broken"},
				{VolumeID: "v-ok", Path: "/ok"}, {Path: "/pool"}}, nil
		},
		Lock: func(id, path string) (func(), bool) {
			if id == "v-busy" {
				return nil, false
			}
			locked = append(locked, id+" "+path)
			return func() { locked = append(locked, "unlock "+id) }, true
		},
		Trim: ft.trim,
	}
	volBytes := testutil.ToFloat64(trimmedBytes.WithLabelValues("volume"))
	poolBytes := testutil.ToFloat64(trimmedBytes.WithLabelValues("pool"))
	skipped := testutil.ToFloat64(trims.WithLabelValues("volume", "skipped"))
	failed := testutil.ToFloat64(trims.WithLabelValues("volume", "failed"))

	res, err := tr.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 || !res[0].Skipped || res[1].Err == nil || res[2].Bytes != 64<<20 || res[3].Bytes != 5<<20 {
		t.Fatalf("results: %+v", res)
	}
	if want := []string{"/broken", "/ok", "/pool"}; len(ft.calls) != 3 || ft.calls[0] != want[0] || ft.calls[1] != want[1] || ft.calls[2] != want[2] {
		t.Fatalf("trimmed %v, want %v (the busy volume skipped)", ft.calls, want)
	}
	// Each volume's locks are held around its own trim only; the pool's
	// filesystem takes none.
	if want := []string{"v-broken /broken", "unlock v-broken", "v-ok /ok", "unlock v-ok"}; len(locked) != 4 || locked[0] != want[0] || locked[1] != want[1] || locked[2] != want[2] || locked[3] != want[3] {
		t.Fatalf("locks: %v, want %v", locked, want)
	}
	if d := testutil.ToFloat64(trimmedBytes.WithLabelValues("volume")) - volBytes; d != 64<<20 {
		t.Errorf("volume bytes metric grew by %v, want %d", d, 64<<20)
	}
	if d := testutil.ToFloat64(trimmedBytes.WithLabelValues("pool")) - poolBytes; d != 5<<20 {
		t.Errorf("pool bytes metric grew by %v, want %d", d, 5<<20)
	}
	if d := testutil.ToFloat64(trims.WithLabelValues("volume", "skipped")) - skipped; d != 1 {
		t.Errorf("skipped metric grew by %v", d)
	}
	if d := testutil.ToFloat64(trims.WithLabelValues("volume", "failed")) - failed; d != 1 {
		t.Errorf("failed metric grew by %v", d)
	}
}

func TestPoolFinderOnlyWithoutOnlineDiscard(t *testing.T) {
	for _, tc := range []struct {
		name  string
		super []string
		want  int
	}{
		{"btrfs default on a discarding device", []string{"rw", "discard=async", "space_cache=v2"}, 0},
		{"btrfs discard (sync)", []string{"rw", "discard"}, 0},
		{"btrfs nodiscard", []string{"rw", "space_cache=v2", "subvolid=5"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mounts := func() ([]mount.MountInfo, error) {
				return []mount.MountInfo{
					{MountPoint: "/", Major: 8, Minor: 1, SuperOptions: []string{"rw"}},
					{MountPoint: "/var/lib/csi-thin/btrfs", Major: 0, Minor: 50, SuperOptions: tc.super},
				}, nil
			}
			got, err := Pool("/var/lib/csi-thin/btrfs/", mounts)(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want || tc.want == 1 && (got[0].Path != "/var/lib/csi-thin/btrfs" || got[0].VolumeID != "") {
				t.Fatalf("got %+v, want %d pool target(s)", got, tc.want)
			}
		})
	}
	if _, err := Pool("/nowhere", func() ([]mount.MountInfo, error) { return nil, nil })(context.Background()); err == nil {
		t.Fatal("a pool path that is no mount point was accepted")
	}
}

// volumes is a pool whose volumes' targets are given device paths.
type volumes map[string]backend.Target

func (v volumes) ListVolumes(context.Context) ([]*backend.Volume, error) {
	var out []*backend.Volume
	for id := range v {
		vol := &backend.Volume{ID: id, AccessType: backend.AccessMount}
		if id == "v-raw" {
			vol.AccessType = backend.AccessBlock
		}
		out = append(out, vol)
	}
	return out, nil
}

func (v volumes) Target(_ context.Context, id string) (backend.Target, error) {
	t, ok := v[id]
	if !ok {
		return backend.Target{}, backend.ErrNotFound
	}
	return t, nil
}

func TestBlockVolumesFinder(t *testing.T) {
	// Two loop device nodes stand for two volumes' devices: real block
	// device nodes (attached or not) with known numbers.
	dev0, dev1 := blockDevice(t, "/dev/loop0"), blockDevice(t, "/dev/loop1")
	pool := volumes{
		"v-nodiscard": {Path: "/dev/loop0", IsDevice: true},
		"v-discard":   {Path: "/dev/loop1", IsDevice: true},
		"v-raw":       {Path: "/dev/loop1", IsDevice: true},
		"v-inactive":  {Path: "/dev/csi-thin-test-no-such-device", IsDevice: true},
		"v-dir":       {Path: "/tmp"},
	}
	mounts := func() ([]mount.MountInfo, error) {
		return []mount.MountInfo{
			{MountPoint: "/stage/0", Major: dev0[0], Minor: dev0[1], SuperOptions: []string{"rw"}},
			{MountPoint: "/pod/0", Major: dev0[0], Minor: dev0[1], SuperOptions: []string{"rw"}},
			{MountPoint: "/stage/1", Major: dev1[0], Minor: dev1[1], SuperOptions: []string{"rw", "discard"}},
		}, nil
	}
	got, err := BlockVolumes(pool, mounts)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != (Target{VolumeID: "v-nodiscard", Path: "/stage/0"}) {
		t.Fatalf("got %+v, want only v-nodiscard through its first mount", got)
	}
}

// blockDevice returns the major and minor number of a block device node.
func blockDevice(t *testing.T, path string) [2]int {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		testenv.Missing(t, "block device node "+path)
	}
	return [2]int{int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))}
}
