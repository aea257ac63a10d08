package reliability

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// poolState is everything a crash could leave behind, read from the
// kernel and the filesystem rather than from the driver.
type poolState struct {
	Volumes   []string // subvolumes under csi-thin/volumes
	Snapshots []string // subvolumes under csi-thin/snapshots
	Staging   []string // anything in csi-thin/staging
	Records   []string // committed records (<id>.json) of volumes and snapshots
	Groups    []string // committed records of group snapshots (no subvolume of their own)
	Leftovers []string // torn temps or delete markers in meta
	Other     []string // subvolumes elsewhere under csi-thin
	// WritableSnapshots are snapshots whose ro flag is off.
	WritableSnapshots []string
	// StaleQgroups are level-0 qgroups whose subvolume no longer exists,
	// and level-1 qgroups (a volume's limit) whose volume no longer exists
	// and that the driver has not scheduled for removal either.
	StaleQgroups []string
	// PoolMounts counts mount entries of the pool's device (1: the pool).
	PoolMounts int
	// LoopDevices counts loop devices backed by the pool's file.
	LoopDevices int
	// QgroupLimits maps a volume subvolume to the max_referenced of its
	// level-1 qgroup (1/<subvolume id>), which holds the volume's limit.
	QgroupLimits map[string]int64
}

var host = &command.Host{}

func inspectPool(t testing.TB, pool *btrfs.Pool) poolState {
	t.Helper()
	ctx := context.Background()
	mnt := pool.MountPath()
	base := filepath.Join(mnt, "csi-thin")
	var st poolState
	st.QgroupLimits = map[string]int64{}

	if _, err := host.Run(ctx, "btrfs", "filesystem", "sync", mnt); err != nil {
		t.Fatalf("sync pool: %v", err)
	}
	res, err := host.Run(ctx, "btrfs", "subvolume", "list", mnt)
	if err != nil {
		t.Fatalf("list subvolumes: %v", err)
	}
	live := map[string]string{} // qgroup id → path
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		// "ID 257 gen 12 top level 5 path csi-thin/volumes/v-…"
		f := strings.Fields(line)
		if len(f) < 9 {
			continue
		}
		path := strings.Join(f[8:], " ")
		live["0/"+f[1]] = path
		dir, name := filepath.Split(path)
		switch dir {
		case "csi-thin/volumes/":
			st.Volumes = append(st.Volumes, name)
		case "csi-thin/snapshots/":
			st.Snapshots = append(st.Snapshots, name)
			out, err := host.Run(ctx, "btrfs", "property", "get", "-ts", filepath.Join(mnt, path), "ro")
			if err != nil {
				t.Fatalf("read ro flag of %s: %v", path, err)
			}
			if strings.TrimSpace(string(out.Stdout)) != "ro=true" {
				st.WritableSnapshots = append(st.WritableSnapshots, name)
			}
		default:
			if strings.HasPrefix(path, "csi-thin/") {
				st.Other = append(st.Other, path)
			}
		}
	}
	st.Staging = names(t, filepath.Join(base, "staging"))
	for _, n := range names(t, filepath.Join(base, "meta")) {
		if id, ok := strings.CutSuffix(n, ".json"); ok && backend.IsGroupSnapshotID(id) {
			st.Groups = append(st.Groups, id)
		} else if ok {
			st.Records = append(st.Records, id)
		} else {
			st.Leftovers = append(st.Leftovers, n)
		}
	}

	// Pending first: listing them reaps what can go, which a listing of
	// the qgroups taken before would still show.
	pending := map[string]bool{}
	for _, q := range pool.PendingQgroups() {
		pending[q] = true
	}
	res, err = host.Run(ctx, "btrfs", "qgroup", "show", "--raw", "-r", "-e", mnt)
	if err != nil {
		t.Fatalf("show qgroups: %v", err)
	}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !(strings.HasPrefix(f[0], "0/") || strings.HasPrefix(f[0], "1/")) {
			continue
		}
		path, ok := live["0/"+strings.SplitN(f[0], "/", 2)[1]]
		if !ok && f[0] != "0/5" {
			if !pending[f[0]] {
				st.StaleQgroups = append(st.StaleQgroups, f[0])
			}
			continue
		}
		if !strings.HasPrefix(f[0], "1/") {
			continue
		}
		if dir, name := filepath.Split(path); dir == "csi-thin/volumes/" && f[3] != "none" {
			n, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				t.Fatalf("qgroup %s limit %q: %v", f[0], f[3], err)
			}
			st.QgroupLimits[name] = n
		}
	}

	dev := pool.LoopDevice()
	st.PoolMounts = countMountsOf(t, dev)
	st.LoopDevices = countLoopDevicesLike(t, dev)
	for _, l := range [][]string{st.Volumes, st.Snapshots, st.Staging, st.Records, st.StaleQgroups} {
		sort.Strings(l)
	}
	return st
}

func names(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// countMountsOf counts /proc/self/mountinfo entries whose source is dev.
func countMountsOf(t testing.TB, dev string) int {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "... - fstype source superopts"
		_, after, ok := strings.Cut(sc.Text(), " - ")
		if f := strings.Fields(after); ok && len(f) >= 2 && f[1] == dev {
			n++
		}
	}
	return n
}

// countLoopDevicesLike counts loop devices with the same backing file as
// dev: a restart that attached the pool file again would leak one.
func countLoopDevicesLike(t testing.TB, dev string) int {
	t.Helper()
	backing := func(name string) string {
		b, _ := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
		return strings.TrimSpace(string(b))
	}
	want := backing(filepath.Base(dev))
	if want == "" {
		t.Fatalf("pool device %s has no backing file", dev)
	}
	n := 0
	matches, _ := filepath.Glob("/sys/block/loop*")
	for _, m := range matches {
		if backing(filepath.Base(m)) == want {
			n++
		}
	}
	return n
}

// record is the part of a btrfs record the tests read.
type record struct {
	Volume *struct {
		SizeBytes int64 `json:"sizeBytes"`
	} `json:"volume"`
}

func readRecord(t testing.TB, pool *btrfs.Pool, id string) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pool.MountPath(), "csi-thin", "meta", id+".json"))
	if err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return r
}

func volumeDir(pool *btrfs.Pool, id string) string {
	return filepath.Join(pool.MountPath(), "csi-thin", "volumes", id)
}

func snapshotDir(pool *btrfs.Pool, id string) string {
	return filepath.Join(pool.MountPath(), "csi-thin", "snapshots", id)
}
