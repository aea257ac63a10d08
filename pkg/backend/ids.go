package backend

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
)

// IDs are derived from the CSI request name, so a retried CreateVolume or
// CreateSnapshot (after a timeout or a crash of the driver) lands on the
// same object and never makes a second one. They are short, lowercase and
// valid as LV names, btrfs path components and Kubernetes object names, and
// anything that does not match the pattern is rejected before it can reach
// a path or a command line.
const (
	volumePrefix   = "v-"
	snapshotPrefix = "s-"
	hashHexLen     = 32
)

var (
	volumeIDPattern   = regexp.MustCompile(`^v-[0-9a-f]{32}$`)
	snapshotIDPattern = regexp.MustCompile(`^s-[0-9a-f]{32}$`)
)

// VolumeIDFor returns the volume ID for a CSI volume name.
func VolumeIDFor(name string) string { return volumePrefix + hashName("volume", name) }

// SnapshotIDFor returns the snapshot ID for a CSI snapshot name.
func SnapshotIDFor(name string) string { return snapshotPrefix + hashName("snapshot", name) }

func hashName(kind, name string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + name))
	return hex.EncodeToString(sum[:])[:hashHexLen]
}

// IsVolumeID reports whether id has the shape of a volume ID.
func IsVolumeID(id string) bool { return volumeIDPattern.MatchString(id) }

// IsSnapshotID reports whether id has the shape of a snapshot ID.
func IsSnapshotID(id string) bool { return snapshotIDPattern.MatchString(id) }

// CheckVolumeID returns ErrNotFound for anything that is not a volume ID:
// no such volume can exist, and the string must go no further.
func CheckVolumeID(id string) error {
	if !IsVolumeID(id) {
		return fmt.Errorf("volume %q: %w", id, ErrNotFound)
	}
	return nil
}

// CheckSnapshotID is CheckVolumeID for snapshots.
func CheckSnapshotID(id string) error {
	if !IsSnapshotID(id) {
		return fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	return nil
}
