package node

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// The node RPCs as tables over fakeMounter: what each request mounts,
// formats or unmounts, and the gRPC code of each refusal, without root.
// The same paths on real mounts run in test/sanity, test/lvm and
// test/reliability.

var (
	dirVol   = backend.VolumeIDFor("dir")   // a directory volume (btrfs)
	devVol   = backend.VolumeIDFor("dev")   // a block-device volume formatted for mount access (LVM)
	xfsVol   = backend.VolumeIDFor("xfs")   // the same, created with fsType xfs
	blockVol = backend.VolumeIDFor("block") // raw block access
	rawVol2  = backend.VolumeIDFor("block2")
)

// rpcEnv is a node service over fake pools: one with directory targets,
// one with device targets, and the fake mount table they share.
type rpcEnv struct {
	dirs, devices *Server
	m             *fakeMounter
	dir           string // a temporary directory for staging and target paths
}

func newRPCEnv(t *testing.T) *rpcEnv {
	t.Helper()
	ctx := context.Background()
	dirPool := fake.New("n1", 10*backend.GiB)
	devPool := &devicePool{Backend: fake.New("n1", 10*backend.GiB),
		devices: map[string]string{devVol: "/dev/zero", xfsVol: "/dev/zero", blockVol: "/dev/null", rawVol2: "/dev/zero"}}
	for _, r := range []struct {
		pool backend.Backend
		req  backend.VolumeRequest
	}{
		{dirPool, backend.VolumeRequest{ID: dirVol}},
		{devPool, backend.VolumeRequest{ID: devVol}},
		{devPool, backend.VolumeRequest{ID: xfsVol, FsType: "xfs"}},
		{devPool, backend.VolumeRequest{ID: blockVol, AccessType: backend.AccessBlock}},
		{devPool, backend.VolumeRequest{ID: rawVol2, AccessType: backend.AccessBlock}},
	} {
		if _, err := r.pool.CreateVolume(ctx, r.req); err != nil {
			t.Fatal(err)
		}
	}
	m := newFakeMounter()
	return &rpcEnv{dirs: New(dirPool, Options{Mounter: m}), devices: New(devPool, Options{Mounter: m}), m: m, dir: t.TempDir()}
}

func (e *rpcEnv) path(name string) string { return filepath.Join(e.dir, name) }

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fsType string, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

const (
	rwo    = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rwop   = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	roOnce = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
)

// checkRPC compares a call's code and the mount calls it made.
func checkRPC(t *testing.T, err error, code codes.Code, m *fakeMounter, want []string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("code %s (%v), want %s", status.Code(err), err, code)
	}
	if got := m.Calls(); !slices.Equal(got, want) {
		t.Errorf("mount calls:\n got %q\nwant %q", got, want)
	}
}

func TestNodeStageVolume(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devices bool            // the pool with device targets
		before  func(e *rpcEnv) // the mount table the call finds
		req     func(e *rpcEnv) *csi.NodeStageVolumeRequest
		code    codes.Code
		want    func(e *rpcEnv) []string // mount calls
	}{
		{name: "directory volume: bind-mounted with nosuid and nodev added",
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "", "noatime")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"mount /fake/" + dirVol + " " + e.path("stage") + " bind,noatime,nosuid,nodev"}
			}},
		{name: "device volume: formatted ext4 by default, mounted with discard", devices: true,
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: devVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"format-and-mount /dev/zero " + e.path("stage") + " ext4 nosuid,nodev,discard " + strings.Join(formatOptions("ext4"), ",")}
			}},
		{name: "device volume: nodiscard turns discard off", devices: true,
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: devVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "ext4", "nodiscard")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"format-and-mount /dev/zero " + e.path("stage") + " ext4 nosuid,nodev " + strings.Join(formatOptions("ext4"), ",")}
			}},
		{name: "device volume: the volume's fsType (xfs) when the capability has none, with nouuid", devices: true,
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: xfsVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"format-and-mount /dev/zero " + e.path("stage") + " xfs nosuid,nodev,discard,nouuid " + strings.Join(formatOptions("xfs"), ",")}
			}},
		{name: "already staged: nothing is mounted again", devices: true,
			before: func(e *rpcEnv) { e.m.mounted("/dev/zero", e.path("stage"), "nosuid", "nodev", "discard") },
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: devVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			}},
		{name: "directory volume staged by a bind cut off before its flags: the remount finishes it",
			before: func(e *rpcEnv) { e.m.mounted("/fake/"+dirVol, e.path("stage")) },
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			},
			want: func(e *rpcEnv) []string { return []string{"remount " + e.path("stage") + " bind,remount,nosuid,nodev"} }},
		{name: "raw block: nothing to stage", devices: true,
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: blockVol, StagingTargetPath: e.path("stage"), VolumeCapability: blockCap(rwo)}
			}},
		{name: "a mount option off the allow-list: InvalidArgument, nothing mounted",
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "", "errors=panic")}
			},
			code: codes.InvalidArgument},
		{name: "a raw block volume asked for mount access: InvalidArgument, never formatted", devices: true,
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: blockVol, StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.InvalidArgument},
		{name: "unknown volume: NotFound",
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: backend.VolumeIDFor("none"), StagingTargetPath: e.path("stage"), VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.NotFound},
		{name: "relative staging path: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: dirVol, StagingTargetPath: "stage", VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.InvalidArgument},
		{name: "no capability: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodeStageVolumeRequest {
				return &csi.NodeStageVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage")}
			},
			code: codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRPCEnv(t)
			if tc.before != nil {
				tc.before(e)
			}
			s := e.dirs
			if tc.devices {
				s = e.devices
			}
			_, err := s.NodeStageVolume(context.Background(), tc.req(e))
			var want []string
			if tc.want != nil {
				want = tc.want(e)
			}
			checkRPC(t, err, tc.code, e.m, want)
		})
	}
}

func TestNodePublishVolume(t *testing.T) {
	for _, tc := range []struct {
		name    string
		devices bool
		before  func(e *rpcEnv)
		req     func(e *rpcEnv) *csi.NodePublishVolumeRequest
		code    codes.Code
		want    func(e *rpcEnv) []string
		// check looks at the host side (the target made for the bind).
		check func(t *testing.T, e *rpcEnv)
	}{
		{name: "filesystem: the staged mount is bind-mounted at a new target directory",
			before: func(e *rpcEnv) { e.m.mounted("/fake/"+dirVol, e.path("stage"), "nosuid", "nodev") },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("pod/mount"),
					VolumeCapability: mountCap(rwo, "", "noatime", "discard")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"mount " + e.path("stage") + " " + e.path("pod/mount") + " bind,noatime,nosuid,nodev"}
			},
			check: func(t *testing.T, e *rpcEnv) {
				if fi, err := os.Stat(e.path("pod/mount")); err != nil || !fi.IsDir() {
					t.Errorf("target directory: %v", err)
				}
			}},
		{name: "filesystem read-only: ro from the request",
			before: func(e *rpcEnv) { e.m.mounted("/fake/"+dirVol, e.path("stage")) },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, ""), Readonly: true}
			},
			want: func(e *rpcEnv) []string {
				return []string{"mount " + e.path("stage") + " " + e.path("t") + " bind,ro,nosuid,nodev"}
			}},
		{name: "filesystem read-only: ro from the reader-only access mode",
			before: func(e *rpcEnv) { e.m.mounted("/fake/"+dirVol, e.path("stage")) },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(roOnce, "")}
			},
			want: func(e *rpcEnv) []string {
				return []string{"mount " + e.path("stage") + " " + e.path("t") + " bind,ro,nosuid,nodev"}
			}},
		{name: "filesystem not staged: FailedPrecondition, nothing mounted",
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.FailedPrecondition},
		{name: "filesystem without a staging path: FailedPrecondition",
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, TargetPath: e.path("t"), VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.FailedPrecondition},
		{name: "filesystem with a mount option off the allow-list: InvalidArgument",
			before: func(e *rpcEnv) { e.m.mounted("/fake/"+dirVol, e.path("stage")) },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, "", "suid")}
			},
			code: codes.InvalidArgument},
		{name: "single writer published elsewhere: FailedPrecondition",
			before: func(e *rpcEnv) {
				e.m.mounted("/fake/"+dirVol, e.path("stage"))
				e.m.mounted(e.path("stage"), e.path("other"), "bind")
			},
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwop, "")}
			},
			code: codes.FailedPrecondition},
		{name: "already published: nothing is mounted again",
			before: func(e *rpcEnv) {
				e.m.mounted("/fake/"+dirVol, e.path("stage"))
				e.m.mounted(e.path("stage"), e.path("t"), "bind", "nosuid", "nodev")
			},
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, "")}
			}},
		{name: "published read-write by a bind cut off before ro: the remount adds ro",
			before: func(e *rpcEnv) {
				e.m.mounted("/fake/"+dirVol, e.path("stage"))
				e.m.mounted(e.path("stage"), e.path("t"), "bind", "nosuid", "nodev")
			},
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, ""), Readonly: true}
			},
			want: func(e *rpcEnv) []string { return []string{"remount " + e.path("t") + " bind,remount,nosuid,nodev,ro"} }},
		{name: "raw block: the device node is bind-mounted onto a new file", devices: true,
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: blockVol, TargetPath: e.path("pod/dev"), VolumeCapability: blockCap(rwo)}
			},
			want: func(e *rpcEnv) []string { return []string{"mount /dev/null " + e.path("pod/dev") + " bind"} },
			check: func(t *testing.T, e *rpcEnv) {
				if fi, err := os.Stat(e.path("pod/dev")); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("block target file: %v", err)
				}
			}},
		{name: "raw block single writer, device published elsewhere: FailedPrecondition", devices: true,
			before: func(e *rpcEnv) { e.m.mounted("/dev/null", e.path("other")) },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: blockVol, TargetPath: e.path("t"), VolumeCapability: blockCap(rwop)}
			},
			code: codes.FailedPrecondition},
		{name: "raw block single writer, another device published: accepted", devices: true,
			before: func(e *rpcEnv) { e.m.mounted("/dev/zero", e.path("other")) },
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: blockVol, TargetPath: e.path("t"), VolumeCapability: blockCap(rwop)}
			},
			want: func(e *rpcEnv) []string { return []string{"mount /dev/null " + e.path("t") + " bind"} }},
		{name: "raw block on a directory volume: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, TargetPath: e.path("t"), VolumeCapability: blockCap(rwo)}
			},
			code: codes.InvalidArgument},
		{name: "a filesystem volume asked for raw block: InvalidArgument", devices: true,
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: devVol, TargetPath: e.path("t"), VolumeCapability: blockCap(rwo)}
			},
			code: codes.InvalidArgument},
		{name: "the bind mount fails: Internal",
			before: func(e *rpcEnv) {
				e.m.mounted("/fake/"+dirVol, e.path("stage"))
				e.m.failing = os.ErrPermission
			},
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: e.path("t"),
					VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.Internal,
			want: func(e *rpcEnv) []string {
				return []string{"mount " + e.path("stage") + " " + e.path("t") + " bind,nosuid,nodev"}
			}},
		{name: "relative target path: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodePublishVolumeRequest {
				return &csi.NodePublishVolumeRequest{VolumeId: dirVol, StagingTargetPath: e.path("stage"), TargetPath: "t",
					VolumeCapability: mountCap(rwo, "")}
			},
			code: codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRPCEnv(t)
			if tc.before != nil {
				tc.before(e)
			}
			s := e.dirs
			if tc.devices {
				s = e.devices
			}
			_, err := s.NodePublishVolume(context.Background(), tc.req(e))
			var want []string
			if tc.want != nil {
				want = tc.want(e)
			}
			checkRPC(t, err, tc.code, e.m, want)
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

func TestNodeUnpublishVolume(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(e *rpcEnv)
		req    func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest
		code   codes.Code
		want   func(e *rpcEnv) []string
	}{
		{name: "a published target is unmounted and removed",
			before: func(e *rpcEnv) {
				if err := os.Mkdir(e.path("t"), 0o750); err != nil {
					panic(err)
				}
				e.m.mounted(e.path("stage"), e.path("t"), "bind")
			},
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{VolumeId: dirVol, TargetPath: e.path("t")}
			},
			want: func(e *rpcEnv) []string { return []string{"cleanup " + e.path("t")} }},
		{name: "an absent target is success",
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{VolumeId: dirVol, TargetPath: e.path("t")}
			},
			want: func(e *rpcEnv) []string { return []string{"cleanup " + e.path("t")} }},
		{name: "an unknown volume's target is cleaned up too (the pool may have lost it)",
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{VolumeId: backend.VolumeIDFor("gone"), TargetPath: e.path("t")}
			},
			want: func(e *rpcEnv) []string { return []string{"cleanup " + e.path("t")} }},
		{name: "relative target path: InvalidArgument, nothing unmounted",
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{VolumeId: dirVol, TargetPath: "t"}
			},
			code: codes.InvalidArgument},
		{name: "no volume id: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{TargetPath: e.path("t")}
			},
			code: codes.InvalidArgument},
		{name: "no target path: InvalidArgument",
			req: func(e *rpcEnv) *csi.NodeUnpublishVolumeRequest {
				return &csi.NodeUnpublishVolumeRequest{VolumeId: dirVol}
			},
			code: codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRPCEnv(t)
			if tc.before != nil {
				tc.before(e)
			}
			_, err := e.dirs.NodeUnpublishVolume(context.Background(), tc.req(e))
			var want []string
			if tc.want != nil {
				want = tc.want(e)
			}
			checkRPC(t, err, tc.code, e.m, want)
			if mounted, _ := e.m.IsMountPoint(e.path("t")); mounted && tc.code == codes.OK {
				t.Errorf("target still mounted")
			}
			if _, err := os.Stat(e.path("t")); err == nil && tc.code == codes.OK {
				t.Errorf("target still exists")
			}
		})
	}
}
