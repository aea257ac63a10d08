package controller

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// guardedBackend fails the fuzz run if the controller ever hands the
// backend an ID or source that is not well-formed: the backend turns
// them into paths and command arguments.
type guardedBackend struct {
	*fake.Backend
	t *testing.T
}

func (g guardedBackend) CreateVolume(ctx context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	if !backend.IsVolumeID(req.ID) || req.ID != backend.VolumeIDFor(req.Name) {
		g.t.Fatalf("backend got volume ID %q for name %q", req.ID, req.Name)
	}
	if req.Source.Kind != backend.SourceNone && !backend.IsVolumeID(req.Source.ID) && !backend.IsSnapshotID(req.Source.ID) {
		g.t.Fatalf("backend got source %+v", req.Source)
	}
	return g.Backend.CreateVolume(ctx, req)
}

func (g guardedBackend) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if !backend.IsSnapshotID(req.ID) {
		g.t.Fatalf("backend got snapshot ID %q", req.ID)
	}
	return g.Backend.CreateSnapshot(ctx, req)
}

// createVolumeCodes are the answers a CreateVolume may give to any input.
var createVolumeCodes = map[codes.Code]bool{
	codes.OK: true, codes.InvalidArgument: true, codes.NotFound: true, codes.OutOfRange: true,
	codes.ResourceExhausted: true, codes.AlreadyExists: true, codes.FailedPrecondition: true,
}

// FuzzCreateVolume sends arbitrary names, StorageClass parameters, sizes,
// filesystems, sources and mount flags through CreateVolume and
// CreateSnapshot. It must never panic, answer with a code outside the
// expected set, or pass a malformed ID to the backend; names beyond the
// CSI limit or with control characters are InvalidArgument.
func FuzzCreateVolume(f *testing.F) {
	f.Add("pvc-1", "csi.storage.k8s.io/pvc/name", "claim", int64(0), int64(0), "", "", "noatime", false)
	f.Add("../../etc", "../key", "/abs/value", int64(-1), int64(0), "ext4", "v-0123456789abcdef0123456789abcdef", "ro,dev", true)
	f.Add(strings.Repeat("n", 129), "k", strings.Repeat("v", 5000), int64(math.MaxInt64), int64(math.MaxInt64), "xfs", "s-0123456789abcdef0123456789abcdef", "-o", false)
	f.Add("a\x00b", "", "", int64(1), int64(1), "btrfs", "../v-x", "--", false)
	f.Add("name\nwith newline", "k\x00", "v", int64(1)<<62, int64(0), "ext4 -O", "s-", "commit=5", true)
	f.Add(strings.Repeat("é", 64), "csi.storage.k8s.io/provisioner-secret-name", "secret", int64(1<<30), int64(1<<29), "", "", "", false)
	f.Fuzz(func(t *testing.T, name, key, value string, required, limit int64, fsType, srcID, flag string, fromSnapshot bool) {
		s := New(guardedBackend{Backend: fake.New("n1", 100*backend.GiB), t: t})
		ctx := context.Background()
		vc := &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: []string{flag}}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}
		req := &csi.CreateVolumeRequest{
			Name: name, Parameters: map[string]string{key: value}, VolumeCapabilities: []*csi.VolumeCapability{vc},
			CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
		}
		if srcID != "" {
			if fromSnapshot {
				req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: srcID}}}
			} else {
				req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}
			}
		}
		resp, err := s.CreateVolume(ctx, req)
		code := status.Code(err)
		if !createVolumeCodes[code] {
			t.Fatalf("CreateVolume(%q): unexpected code %s: %v", name, code, err)
		}
		if badName(name) && code != codes.InvalidArgument {
			t.Fatalf("CreateVolume with name %q: %s, want InvalidArgument", name, code)
		}
		if err == nil {
			v := resp.GetVolume()
			if v.GetVolumeId() != backend.VolumeIDFor(name) || v.GetCapacityBytes() < required || (limit > 0 && v.GetCapacityBytes() > limit) {
				t.Fatalf("CreateVolume(%q, %d..%d) returned %v", name, required, limit, v)
			}
		}
		_, err = s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: srcID})
		if code := status.Code(err); code == codes.Unknown || code == codes.Internal {
			t.Fatalf("CreateSnapshot(%q, %q): %v", name, srcID, err)
		} else if badName(name) && code != codes.InvalidArgument {
			t.Fatalf("CreateSnapshot with name %q: %s, want InvalidArgument", name, code)
		}
	})
}

// badName: CSI caps strings at 128 bytes; control characters have no
// business in a name and would forge lines in logs.
func badName(name string) bool {
	if len(name) > 128 || !utf8.ValidString(name) {
		return true
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// FuzzPaginate: any starting token and max_entries give a page of the
// list or a clean error; following next tokens walks the whole list once.
func FuzzPaginate(f *testing.F) {
	f.Add("", int32(0), uint8(10))
	f.Add("v-00000000000000000000000000000000", int32(3), uint8(10))
	f.Add("not-a-token", int32(1), uint8(3))
	f.Add("../../", int32(-1), uint8(0))
	f.Add("v-ffffffffffffffffffffffffffffffff", int32(math.MaxInt32), uint8(255))
	f.Fuzz(func(t *testing.T, token string, maxEntries int32, n uint8) {
		items := make([]string, n)
		for i := range items {
			items[i] = backend.VolumeIDFor(fmt.Sprint(i))
		}
		key := func(s string) string { return s }
		page, next, err := paginate(append([]string(nil), items...), key, token, maxEntries)
		if err != nil {
			if c := status.Code(err); c != codes.Aborted && c != codes.InvalidArgument {
				t.Fatalf("paginate(%q, %d): code %s", token, maxEntries, c)
			}
			return
		}
		if maxEntries > 0 && len(page) > int(maxEntries) {
			t.Fatalf("page of %d entries, max %d", len(page), maxEntries)
		}
		// From the start, the tokens must visit every item exactly once.
		if token != "" || maxEntries <= 0 {
			return
		}
		seen := 0
		for pages := 0; ; pages++ {
			seen += len(page)
			if next == "" || pages > len(items) {
				break
			}
			if page, next, err = paginate(append([]string(nil), items...), key, next, maxEntries); err != nil {
				t.Fatalf("next token %q refused: %v", next, err)
			}
		}
		if seen != len(items) {
			t.Fatalf("paging by %d saw %d of %d items", maxEntries, seen, len(items))
		}
	})
}
