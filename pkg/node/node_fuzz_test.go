package node

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// FuzzMountFlags: whatever flags a StorageClass or capability carries,
// the accepted ones come out of the option builders as separate,
// allow-listed options that survive being comma-joined for mount(8):
// no option can smuggle in another (",dev"), or an argument ("-o", "--").
func FuzzMountFlags(f *testing.F) {
	for _, pair := range [][2]string{
		{"noatime", "ro"}, {"ro,dev", "nosuid"}, {"-o", "exec"}, {"--", "bind"}, {"commit=5", "data=journal"},
		{"commit=5,dev=/dev/sda", ""}, {"errors=remount-ro", "allocsize=64k"}, {"nodiscard", "nouuid"},
		{"ro\x00rw", "x"}, {"context=system_u:object_r", "uid=0"}, {"discard", " noatime"}, {"logbufs=8", "barrier=1"},
	} {
		f.Add(pair[0], pair[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		flags := []string{a, b}
		if err := checkMountFlags(flags); err != nil {
			if status.Code(toStatus(err)) != codes.InvalidArgument {
				t.Fatalf("refused %q with %v, want InvalidArgument", flags, err)
			}
			return
		}
		for _, fl := range flags {
			key, _, hasValue := strings.Cut(fl, "=")
			if !(allowedFlags[fl] || hasValue && allowedKeys[key] != nil) {
				t.Fatalf("flag %q accepted but not allow-listed", fl)
			}
		}
		for _, opts := range [][]string{stageOptions("ext4", flags), stageOptions("xfs", flags), withoutDiscardFlags(flags)} {
			for _, o := range opts {
				if o == "" || strings.ContainsAny(o, ", \t\n\x00") || strings.HasPrefix(o, "-") {
					t.Fatalf("option %q from flags %q could inject into mount(8)", o, flags)
				}
			}
			if joined := strings.Join(opts, ","); len(opts) > 0 && len(strings.Split(joined, ",")) != len(opts) {
				t.Fatalf("options %q do not survive comma-joining", opts)
			}
		}
	})
}

func toStatus(err error) error {
	if errorsIsInvalid(err) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return err
}

func errorsIsInvalid(err error) bool {
	return strings.Contains(err.Error(), backend.ErrInvalid.Error())
}

// FuzzNodePaths sends hostile staging, target and volume paths through
// every Node call, with a fake mounter and a fake pool. A path that is
// not absolute and clean must be refused with InvalidArgument; anything
// accepted must stay under the directory the paths were rooted in, and
// so must every mount the node asks for. (Stats and expand answer
// NotFound instead, as CSI prescribes for a path with no volume.) Paths that reach the filesystem
// (stage, publish, unpublish, unstage create and remove directories) are
// rooted in a temporary directory; stats and expand only read, and get
// the raw input as well.
func FuzzNodePaths(f *testing.F) {
	for _, s := range []string{"pod/mount", "../../etc", "a/../../../b", "a//b", "a/./b", "a\x00b", "/abs",
		strings.Repeat("d/", 3000), "-o", "--bind", "a/b/", ".", "..", "", "globalmount/../mount"} {
		f.Add(s)
	}
	root := f.TempDir()
	f.Fuzz(func(t *testing.T, suffix string) {
		pool := fake.New("n1", 10*backend.GiB)
		vol, err := pool.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("v"), Name: "v", RequiredBytes: backend.GiB, AccessType: backend.AccessMount})
		if err != nil {
			t.Fatal(err)
		}
		fm := mount.NewFakeMounter(nil)
		s := New(pool, Options{Mounter: NewMounter(fm, utilexec.New())})
		ctx := context.Background()
		rooted := root + "/" + suffix
		vc := &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}
		staging := filepath.Join(root, "staging")
		calls := map[string]func() (string, error){
			"stage": func() (string, error) {
				_, err := s.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.ID, StagingTargetPath: rooted, VolumeCapability: vc})
				return rooted, err
			},
			"publish": func() (string, error) {
				_, err := s.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.ID, StagingTargetPath: staging, TargetPath: rooted, VolumeCapability: vc})
				return rooted, err
			},
			"unpublish": func() (string, error) {
				_, err := s.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.ID, TargetPath: rooted})
				return rooted, err
			},
			"unstage": func() (string, error) {
				_, err := s.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.ID, StagingTargetPath: rooted})
				return rooted, err
			},
			"stats": func() (string, error) {
				_, err := s.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.ID, VolumePath: suffix})
				return suffix, err
			},
			"expand": func() (string, error) {
				_, err := s.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.ID, VolumePath: suffix})
				return suffix, err
			},
		}
		for name, call := range calls {
			path, err := call()
			want := codes.InvalidArgument
			if name == "stats" || name == "expand" {
				want = codes.NotFound // CSI (and csi-sanity) want NotFound for a path with no volume
			}
			if code := status.Code(err); checkPath(path) != nil && code != want && code != codes.InvalidArgument {
				t.Fatalf("%s with path %.200q: %.300v, want %s", name, path, err, want)
			}
		}
		for _, mp := range fm.GetLog() {
			if mp.Target != filepath.Clean(mp.Target) || !strings.HasPrefix(mp.Target+"/", root+"/") {
				t.Fatalf("mounter asked to %s at %q, outside %s", mp.Action, mp.Target, root)
			}
		}
	})
}
