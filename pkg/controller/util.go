package controller

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// maxNameBytes is CSI's size limit for strings; a name is stored in
// records and logs, so a longer one is refused rather than truncated.
const maxNameBytes = 128

// checkName refuses names a CO would never send: empty, over the CSI
// limit, not UTF-8, or with control characters (which would forge log
// lines). Any other name is safe: only its hash reaches the storage.
func checkName(name string) error {
	switch {
	case name == "":
		return status.Error(codes.InvalidArgument, "name is required")
	case len(name) > maxNameBytes:
		return status.Errorf(codes.InvalidArgument, "name is %d bytes, longer than CSI's %d", len(name), maxNameBytes)
	case !utf8.ValidString(name):
		return status.Error(codes.InvalidArgument, "name is not valid UTF-8")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return status.Errorf(codes.InvalidArgument, "name %q contains control characters", name)
	}
	return nil
}

func wrapInt64(n int64) *wrapperspb.Int64Value { return wrapperspb.Int64(n) }

// paginate pages a list by ID: the token is the first ID of the next page,
// so a page boundary survives creates and deletes between calls (an item
// deleted meanwhile is simply not returned). items must be sorted by key.
func paginate[T any](items []T, key func(T) string, token string, maxEntries int32) ([]T, string, error) {
	if maxEntries < 0 {
		return nil, "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	if !sort.SliceIsSorted(items, func(i, j int) bool { return key(items[i]) < key(items[j]) }) {
		sort.Slice(items, func(i, j int) bool { return key(items[i]) < key(items[j]) })
	}
	start := 0
	if token != "" {
		if !backend.IsVolumeID(token) && !backend.IsSnapshotID(token) {
			return nil, "", status.Errorf(codes.Aborted, "invalid starting token %q", token)
		}
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) >= token })
	}
	end := len(items)
	if maxEntries > 0 && start+int(maxEntries) < end {
		end = start + int(maxEntries)
	}
	next := ""
	if end < len(items) {
		next = key(items[end])
	}
	return items[start:end], next, nil
}

// checkCapabilities validates the requested capabilities and returns the
// single access type and filesystem they ask for. Local volumes live on
// one node, so multi-node access modes are refused.
func checkCapabilities(caps []*csi.VolumeCapability) (backend.AccessType, string, error) {
	if len(caps) == 0 {
		return "", "", status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	var access backend.AccessType
	fsType := ""
	for _, c := range caps {
		var a backend.AccessType
		switch {
		case c.GetBlock() != nil:
			a = backend.AccessBlock
		case c.GetMount() != nil:
			a = backend.AccessMount
			if fs := c.GetMount().GetFsType(); fs != "" {
				if fsType != "" && fs != fsType {
					return "", "", status.Errorf(codes.InvalidArgument, "conflicting filesystems %q and %q", fsType, fs)
				}
				fsType = fs
			}
		default:
			return "", "", status.Error(codes.InvalidArgument, "access type (mount or block) is required")
		}
		if access != "" && a != access {
			return "", "", status.Error(codes.InvalidArgument, "mount and block access cannot be mixed")
		}
		access = a
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		case csi.VolumeCapability_AccessMode_UNKNOWN:
			return "", "", status.Error(codes.InvalidArgument, "access mode is required")
		default:
			return "", "", status.Errorf(codes.InvalidArgument, "access mode %s is not supported: volumes are local to one node", c.GetAccessMode().GetMode())
		}
	}
	return access, fsType, nil
}
