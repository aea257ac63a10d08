// Package backend defines the storage contract that the CSI servers speak to.
//
// A Backend is one pool on one node (an LVM thin pool or a btrfs filesystem).
// The CSI servers translate requests into these calls and map the sentinel
// errors below to gRPC codes in exactly one place (package rpcerr); nothing
// in this package knows about gRPC, CSI or Kubernetes.
package backend

import (
	"context"
	"time"
)

// AccessType says how a volume is consumed on the node.
type AccessType string

const (
	// AccessMount is a filesystem mounted at the target path.
	AccessMount AccessType = "mount"
	// AccessBlock is a raw block device published as a device node.
	AccessBlock AccessType = "block"
)

// SourceKind names what a new volume is copied (thinly) from.
type SourceKind string

const (
	SourceNone     SourceKind = ""
	SourceSnapshot SourceKind = "snapshot"
	SourceVolume   SourceKind = "volume"
	// SourceExport: ID is an export handle (pkg/export.Handle): the
	// volume is rebuilt from an object store, on any node.
	SourceExport SourceKind = "export"
)

// Source is the optional origin of a volume: a restore or a clone.
type Source struct {
	Kind SourceKind `json:"kind,omitempty"`
	ID   string     `json:"id,omitempty"`
}

// VolumeRequest asks for a volume. ID is chosen by the caller (see ids.go)
// so that a retried request after a crash finds the half-made object again.
type VolumeRequest struct {
	ID   string
	Name string // the CSI request name, recorded for operators
	// RequiredBytes and LimitBytes are the CSI capacity range; 0 means unset.
	// The backend rounds up to its allocation unit and refuses a size it
	// cannot honour with ErrOutOfRange.
	RequiredBytes int64
	LimitBytes    int64
	Source        Source
	AccessType    AccessType
	// FsType is the filesystem the node formats (block-device backends) or
	// the filesystem the backend inherently provides (btrfs).
	FsType string
	// Parameters are the StorageClass parameters the backend understands;
	// the controller has validated their names already.
	Parameters map[string]string
	// Node is the node the volume must live on; empty lets the backend pick.
	Node string
}

// Condition is a volume's health in backend terms (CSI VolumeHealth).
type Condition struct {
	Abnormal bool `json:"abnormal"`
	// Reason is a short CamelCase cause (see the Reason* constants).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message"`
}

// Reasons for an abnormal Condition. ReasonMissing makes a volume
// INACCESSIBLE to CSI; the others make it DEGRADED.
const (
	ReasonMissing      = "StorageMissing"
	ReasonPoolFull     = "PoolFull"
	ReasonPoolReadOnly = "PoolReadOnly"
	ReasonPoolError    = "PoolError"
	// ReasonNeedsAttention: the backend could not finish an operation on
	// this object by itself (e.g. startup recovery failed on it); the
	// message says what, and an operator has to look.
	ReasonNeedsAttention = "NeedsAttention"
)

// Volume is a provisioned volume as the backend knows it.
type Volume struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	SizeBytes  int64             `json:"sizeBytes"`
	Source     Source            `json:"source"`
	AccessType AccessType        `json:"accessType"`
	FsType     string            `json:"fsType,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
	Node       string            `json:"node"`
	CreatedAt  time.Time         `json:"createdAt"`
	Condition  Condition         `json:"condition"`
}

// SnapshotRequest asks for a read-only point-in-time copy of a volume.
type SnapshotRequest struct {
	ID             string
	Name           string
	SourceVolumeID string
	// SkipFreeze: take the snapshot without freezing the source's mounted
	// filesystem (VolumeSnapshotClass parameter freeze: "false").
	SkipFreeze bool
	// GroupID and GroupSize: the snapshot is a member of that group
	// snapshot of GroupSize members (groupsnapshot.go); empty for a
	// snapshot of its own.
	GroupID   string
	GroupSize int
	// VolumeSnapshotNamespace and VolumeSnapshotName name the Kubernetes
	// VolumeSnapshot the request is for, when the CO says (for Events).
	VolumeSnapshotNamespace, VolumeSnapshotName string
	// Export, when set, asks for the snapshot to be exported to the object
	// store its Secret describes (only a backend that implements
	// SnapshotExporter honours it).
	Export *ExportTarget
}

// ExportTarget names the Secret (pkg/export's keys) of the object store a
// snapshot is exported to: a reference, never the values.
type ExportTarget struct {
	SecretNamespace, SecretName string
	// Retain keeps the export when the snapshot is deleted.
	Retain bool
}

// SnapshotExporter is a backend that exports snapshots whose request sets
// Export (the cluster's router: the node agent holding the snapshot
// exports it). A bare pool does not.
type SnapshotExporter interface {
	ExportsSnapshots() bool
}

// NodeCopier is a backend that can make a clone or a restore on another
// node than its source's by copying the source's data there (the
// cluster's router with transfers on). A pool does not: a thin snapshot
// stays in its pool.
type NodeCopier interface {
	CopiesAcrossNodes() bool
}

// Snapshot is a read-only thin snapshot of a volume.
type Snapshot struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	SizeBytes      int64     `json:"sizeBytes"`
	Node           string    `json:"node"`
	CreatedAt      time.Time `json:"createdAt"`
	ReadyToUse     bool      `json:"readyToUse"`
	// GroupID and GroupSize are set on the members of a group snapshot.
	GroupID   string `json:"groupID,omitempty"`
	GroupSize int    `json:"groupSize,omitempty"`
}

// Capacity is what a pool can still hand out.
type Capacity struct {
	// TotalBytes is the physical size of the pool.
	TotalBytes int64
	// UsedBytes is physically allocated data.
	UsedBytes int64
	// ProvisionedBytes is the sum of the virtual sizes of all volumes.
	ProvisionedBytes int64
	// AvailableBytes is the largest new volume the backend would accept now:
	// min(physically free, TotalBytes*overprovision - ProvisionedBytes),
	// and zero once a fullness guard trips.
	AvailableBytes int64
	// MaximumVolumeBytes is the largest single volume ever creatable.
	MaximumVolumeBytes int64
	// DataPercent and MetadataPercent are pool fill levels (0..100).
	DataPercent     float64
	MetadataPercent float64
}

// Health is the pool's state for Probe and VolumeCondition.
type Health struct {
	Healthy bool
	Message string
}

// Target is what the node stages: a directory to bind-mount (btrfs
// subvolume) or a block device to format/mount or publish raw.
type Target struct {
	Path     string
	IsDevice bool
}

// Usage is the space accounting of one volume, when the backend knows it
// better than statfs on the mount (a btrfs subvolume shares its
// filesystem's statfs with every other volume in the pool).
type Usage struct {
	CapacityBytes  int64
	UsedBytes      int64
	AvailableBytes int64
}

// Backend is one storage pool. Every method is idempotent: creating what
// exists with a compatible spec returns it, deleting what is gone succeeds.
// Implementations serialise conflicting mutations themselves.
type Backend interface {
	// Kind is "btrfs" or "lvmthin".
	Kind() string
	// Health reports whether the pool can serve requests.
	Health(ctx context.Context) Health
	// Capacity reports pool space; node selects a pool when a backend
	// routes to several nodes and is empty in single-pool backends.
	Capacity(ctx context.Context, node string) (Capacity, error)

	// CreateVolume makes a volume, empty or a thin copy of req.Source. A
	// copy keeps its source's access type: a request that changes it is
	// ErrInvalid, because a raw block volume may hold a filesystem image
	// its tenant crafted, which the node would fsck and mount (lvmthin
	// records the type on snapshots; btrfs serves filesystems only).
	CreateVolume(ctx context.Context, req VolumeRequest) (*Volume, error)
	// DeleteVolume removes a volume. A volume that is mounted (staged or
	// published) or held open on its node is ErrInUse, naming the mount,
	// and nothing is removed.
	DeleteVolume(ctx context.Context, id string) error
	GetVolume(ctx context.Context, id string) (*Volume, error)
	ListVolumes(ctx context.Context) ([]*Volume, error)
	// ExpandVolume grows a volume to at least sizeBytes and returns it.
	ExpandVolume(ctx context.Context, id string, sizeBytes int64) (*Volume, error)

	CreateSnapshot(ctx context.Context, req SnapshotRequest) (*Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	GetSnapshot(ctx context.Context, id string) (*Snapshot, error)
	ListSnapshots(ctx context.Context) ([]*Snapshot, error)
}

// Local is a Backend whose pool is on this node, so the Node service can
// reach the storage itself.
type Local interface {
	Backend
	// Target returns what NodeStageVolume mounts for a volume.
	Target(ctx context.Context, id string) (Target, error)
	// Usage reports per-volume space; ErrUnsupported means "statfs the
	// mount instead".
	Usage(ctx context.Context, id string) (Usage, error)
	// NodeName is the node this pool lives on.
	NodeName() string
}
