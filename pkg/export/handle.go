package export

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// HandlePrefix starts a snapshot handle that names an export instead of a
// snapshot on a node.
const HandlePrefix = "export:"

// Handle is what a pre-provisioned VolumeSnapshotContent's snapshotHandle
// says to restore from an export: the Secret of its store (by reference:
// CreateVolume gets no snapshotter secrets, so the handle carries it) and
// the export ID. Its text form is
// export:<secret namespace>/<secret name>/<volume ID>/<snapshot ID>.
type Handle struct {
	SecretNamespace, SecretName string
	// ExportID is <volume ID>/<snapshot ID>.
	ExportID string
}

// String is the handle's text form.
func (h Handle) String() string {
	return HandlePrefix + h.SecretNamespace + "/" + h.SecretName + "/" + h.ExportID
}

// IsHandle says whether a snapshot ID is meant as an export handle (it may
// still be malformed: ParseHandle).
func IsHandle(id string) bool { return strings.HasPrefix(id, HandlePrefix) }

// ParseHandle reads an export handle, refusing any other shape.
func ParseHandle(s string) (Handle, error) {
	rest, ok := strings.CutPrefix(s, HandlePrefix)
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 4 {
		return Handle{}, fmt.Errorf("%w: export handle %.200q: want %s<secret namespace>/<secret name>/<volume ID>/<snapshot ID>", ErrInvalid, s, HandlePrefix)
	}
	if errs := validation.IsDNS1123Label(parts[0]); len(errs) > 0 {
		return Handle{}, fmt.Errorf("%w: export handle %.200q: secret namespace %q: %s", ErrInvalid, s, parts[0], strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(parts[1]); len(errs) > 0 {
		return Handle{}, fmt.Errorf("%w: export handle %.200q: secret name %q: %s", ErrInvalid, s, parts[1], strings.Join(errs, "; "))
	}
	id := parts[2] + "/" + parts[3]
	if _, _, err := ParseID(id); err != nil {
		return Handle{}, fmt.Errorf("export handle %.200q: %w", s, err)
	}
	return Handle{SecretNamespace: parts[0], SecretName: parts[1], ExportID: id}, nil
}
