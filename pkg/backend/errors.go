package backend

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Backends wrap them with context
// (fmt.Errorf("lvcreate %s: %w", id, ErrNoSpace)); the CSI boundary maps
// them to gRPC codes with errors.Is.
var (
	// ErrNotFound: no volume or snapshot with that ID.
	ErrNotFound = errors.New("not found")
	// ErrExists: the ID exists with an incompatible spec (size, source,
	// access type): the CSI AlreadyExists case.
	ErrExists = errors.New("already exists with a different spec")
	// ErrNoSpace: the pool cannot hold the request now.
	ErrNoSpace = errors.New("insufficient space in pool")
	// ErrOutOfRange: a size the backend cannot honour (below the source,
	// above the maximum volume size, limit below the allocation unit).
	ErrOutOfRange = errors.New("size out of range")
	// ErrInvalid: malformed input (ID, parameter, mount option).
	ErrInvalid = errors.New("invalid argument")
	// ErrUnsupported: a capability this backend does not offer.
	ErrUnsupported = errors.New("not supported by this backend")
	// ErrBusy: the object is in use (e.g. snapshot being restored); retry.
	ErrBusy = errors.New("busy")
	// ErrPrecondition: the object is in a state that forbids the call
	// (e.g. a volume still has dependents the backend cannot outlive).
	ErrPrecondition = errors.New("failed precondition")
	// ErrInUse: the volume is mounted (staged or published) or held open
	// on its node, so deleting it would pull the storage from under a
	// live mount. Backends name the mount or holder in the message.
	ErrInUse = errors.New("in use on its node")
	// ErrUnavailable: the pool is unhealthy (metadata read-only, device gone).
	ErrUnavailable = errors.New("pool unavailable")
)

// MountedError is the ErrInUse of a volume that shows in this process's
// mount table: the node agent reads which paths hold it (a staging mount
// the kubelet left behind is one it may remove).
type MountedError struct {
	Volume, Node string
	// MountPoints are the mounts of the volume, as the mount table names them.
	MountPoints []string
}

func (e *MountedError) Error() string {
	return fmt.Sprintf("volume %s is mounted at %s (staged or published on node %s; unpublish and unstage it first): %v",
		e.Volume, strings.Join(e.MountPoints, ", "), e.Node, ErrInUse)
}

func (e *MountedError) Unwrap() error { return ErrInUse }
