package lvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mountutils "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/internal/tenant"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// openToTenant gives the tenant's uid the volume, as kubelet's fsGroup
// handling would.
func openToTenant(t *testing.T, path string) {
	t.Helper()
	if err := os.Chown(path, tenant.UID, tenant.UID); err != nil {
		t.Fatal(err)
	}
}

func dropCaches(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Logf("drop caches: %v", err)
	}
}

// TestHostileTenantLVM: an unprivileged uid inside its published volumes
// (ext4, xfs, raw block) on a dm-thin pool tries to escape: fill its
// volume and the pool, make device nodes (and expects nodev,nosuid where the
// StorageClass asks), and turn a raw block volume holding a crafted
// filesystem image into a filesystem volume. Each attempt is refused or
// contained, another tenant's data keeps its checksum, and the driver
// keeps serving.
func TestHostileTenantLVM(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not available")
	}
	b := loopPool(t, "csithin_hostile", 448*backend.MiB, nil) // room for mkfs.xfs's 300 MiB minimum
	cl := serveCSI(t, b)
	// Under emulation the whole test takes many minutes: one deadline for
	// all of it, longer than ctx's.
	c, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// The pods' directories: the tenant must be able to walk to its
	// mount, as in kubelet's pod directories.
	pods := t.TempDir()
	for _, d := range []string{filepath.Dir(pods), pods} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	podDir := func() string {
		t.Helper()
		d, err := os.MkdirTemp(pods, "pod-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}

	create := func(name, fsType string, size int64) string {
		t.Helper()
		cl.FsType = fsType
		defer func() { cl.FsType = "" }()
		v, err := cl.CreateVolume(c, name, size)
		if err != nil {
			t.Fatal(err)
		}
		return v.GetVolumeId()
	}
	attach := func(id string, flags ...string) *csiclient.Attachment {
		t.Helper()
		a, err := cl.Attach(c, id, podDir(), flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Detach(context.Background()) })
		openToTenant(t, a.TargetPath)
		return a
	}

	victim := attach(create("victim", "ext4", 64*backend.MiB))
	victimSum := writePattern(t, dataFile(victim.TargetPath), 8*backend.MiB, 31)
	intact := func(stage string) {
		t.Helper()
		dropCaches(t)
		if got := fileSum(t, dataFile(victim.TargetPath)); got != victimSum {
			t.Fatalf("%s: another tenant's data changed (checksum %s, want %s)", stage, got, victimSum)
		}
		if _, err := cl.Node.NodeGetCapabilities(c, &csi.NodeGetCapabilitiesRequest{}); err != nil {
			t.Fatalf("%s: the node stopped serving: %v", stage, err)
		}
		if _, err := cl.Controller.ControllerGetVolume(c, &csi.ControllerGetVolumeRequest{VolumeId: victim.VolumeID}); err != nil {
			t.Fatalf("%s: the controller stopped serving: %v", stage, err)
		}
	}

	t.Run("device nodes and setuid", func(t *testing.T) {
		for _, fs := range []string{"ext4", "xfs"} {
			size := int64(64 * backend.MiB)
			if fs == "xfs" {
				size = 320 * backend.MiB // mkfs.xfs's minimum
			}
			a := attach(create("dev-"+fs, fs, size)) // no mount options
			// No CAP_MKNOD: the kernel refuses a device node.
			if out, err := tenant.Run("mknod", filepath.Join(a.TargetPath, "disk"), "b", "7", "0"); err == nil || !strings.Contains(out, "Operation not permitted") {
				t.Errorf("%s: mknod by an unprivileged tenant: %v: %s, want EPERM", fs, err, out)
			}
			// Control: the tenant can write there, so the refusal above is
			// the kernel's, not a path it cannot reach.
			if out, err := tenant.Run("touch", filepath.Join(a.TargetPath, "mine")); err != nil {
				t.Fatalf("%s: the tenant cannot write its own volume: %v: %s", fs, err, out)
			}
			// A setuid file of its own is allowed, but the target the
			// pod sees is nosuid,nodev without the StorageClass asking.
			mis, err := mountutils.ParseMountInfo("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, mi := range mis {
				if mi.MountPoint == a.TargetPath {
					found = true
					opts := strings.Join(mi.MountOptions, ",")
					if !strings.Contains(","+opts+",", ",nodev,") || !strings.Contains(","+opts+",", ",nosuid,") {
						t.Errorf("%s: target mounted %s, want nodev and nosuid", fs, opts)
					}
				}
			}
			if !found {
				t.Errorf("%s: target %s not in the mount table", fs, a.TargetPath)
			}
		}
		intact("device nodes")
	})

	t.Run("mode conversion", func(t *testing.T) {
		resp, err := cl.Controller.CreateVolume(c, &csi.CreateVolumeRequest{Name: "raw", CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * backend.MiB},
			VolumeCapabilities: []*csi.VolumeCapability{blockCapability()}})
		if err != nil {
			t.Fatal(err)
		}
		raw := resp.GetVolume().GetVolumeId()
		dir := podDir()
		staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "block")
		if _, err := cl.Node.NodeStageVolume(c, &csi.NodeStageVolumeRequest{VolumeId: raw, StagingTargetPath: staging, VolumeCapability: blockCapability()}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Node.NodePublishVolume(c, &csi.NodePublishVolumeRequest{VolumeId: raw, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCapability()}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Unpublish(context.Background(), raw, target) })
		openToTenant(t, target)
		// The tenant writes a filesystem image of its choosing.
		if out, err := tenant.Run("mkfs.ext4", "-q", "-F", target); err != nil {
			t.Fatalf("tenant's mkfs on its own block device: %v: %s", err, out)
		}
		snap, err := cl.CreateSnapshot(c, "raw-snap", raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.RestoreSnapshot(c, "raw-as-fs", snap.GetSnapshotId(), 64*backend.MiB); status.Code(err) != codes.InvalidArgument {
			t.Errorf("restore of a raw block snapshot as a filesystem volume: %v, want InvalidArgument", err)
		}
		if _, err := cl.CloneVolume(c, "raw-clone-as-fs", raw, 64*backend.MiB); status.Code(err) != codes.InvalidArgument {
			t.Errorf("clone of a raw block volume as a filesystem volume: %v, want InvalidArgument", err)
		}
		// The other way round too.
		_, err = cl.Controller.CreateVolume(c, &csi.CreateVolumeRequest{Name: "fs-as-raw", VolumeCapabilities: []*csi.VolumeCapability{blockCapability()},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: victim.VolumeID}}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("clone of a filesystem volume as raw block: %v, want InvalidArgument", err)
		}
		// Same access type still works.
		_, err = cl.Controller.CreateVolume(c, &csi.CreateVolumeRequest{Name: "raw-restore", VolumeCapabilities: []*csi.VolumeCapability{blockCapability()},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}})
		if err != nil {
			t.Errorf("restore as raw block: %v", err)
		}
		vols, _ := b.ListVolumes(c)
		for _, v := range vols {
			if v.Name == "raw-as-fs" || v.Name == "raw-clone-as-fs" || v.Name == "fs-as-raw" {
				t.Errorf("a refused copy left volume %s", v.ID)
			}
		}
		intact("mode conversion")
	})

	t.Run("fill own volume", func(t *testing.T) {
		a := attach(create("small", "ext4", 32*backend.MiB))
		out, err := tenant.Run("dd", "if=/dev/zero", "of="+filepath.Join(a.TargetPath, "fill"), "bs=1M", "count=64", "conv=fsync")
		if err == nil || !strings.Contains(out, "No space left") {
			t.Errorf("writing 64 MiB into a 32 MiB volume: %v: %s, want ENOSPC", err, out)
		}
		intact("own volume full")
	})

	t.Run("fill the pool", func(t *testing.T) {
		capacity, err := b.Capacity(c, "")
		if err != nil {
			t.Fatal(err)
		}
		// Three volumes, each half the free space (thin volumes promise
		// more than the pool has): writing them full runs the pool out
		// of space.
		size := capacity.AvailableBytes / 2 / backend.MiB * backend.MiB
		var ids []string
		var atts []*csiclient.Attachment
		for _, name := range []string{"big-1", "big-2", "big-3"} {
			id := create(name, "ext4", size)
			ids = append(ids, id)
			atts = append(atts, attach(id))
		}
		var out string
		for _, a := range atts {
			out, err = tenant.Run("dd", "if=/dev/zero", "of="+filepath.Join(a.TargetPath, "fill"), "bs=1M",
				"count="+strconv.FormatInt(size/backend.MiB, 10), "conv=fsync")
			t.Logf("tenant filling %s: %v: %s", a.VolumeID, err, strings.TrimSpace(out))
		}
		if err == nil {
			t.Errorf("the tenant wrote more than the pool holds: %s", out)
		}
		intact("pool full")
		// The guard holds: no new volume on a full pool.
		if _, err := cl.CreateVolume(c, "after-full", 8*backend.MiB); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("CreateVolume on a full pool: %v, want ResourceExhausted", err)
		}
		// The operator's way out still works: detach and delete.
		for i, a := range atts {
			if err := a.Detach(c); err != nil {
				t.Fatalf("detach the tenant's volume from a full pool: %v", err)
			}
			if err := cl.DeleteVolume(c, ids[i]); err != nil {
				t.Fatalf("delete the tenant's volume from a full pool: %v", err)
			}
		}
		intact("after the delete")
	})
}
