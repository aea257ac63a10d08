// Package wellknown owns the names csi-thin shows to Kubernetes: the CSI
// driver name, the topology key, and the labels, annotations and finalizer
// it puts on objects. They are part of the driver's contract with a
// cluster (StorageClasses, PVs and selectors written by users carry them),
// so each is defined here once and changing one is a breaking change.
// The package imports nothing.
package wellknown

// DriverName is the CSI driver name: a StorageClass's provisioner, a PV's
// spec.csi.driver, the kubelet's plugin name.
const DriverName = "csi-thin.io"

// TopologyKey is the topology segment key naming a node: every volume is
// reachable only from the node that holds its pool.
const TopologyKey = "topology.csi-thin.io/node"

// Labels the controller puts on the ThinVolumes and ThinSnapshots it creates.
const (
	// LabelNode selects the resources of one node; the node agent's cache
	// watches only its own.
	LabelNode = "csi-thin.io/node"
	// LabelPVCName and LabelPVCNamespace record the claim a volume was made
	// for (from the provisioner's --extra-create-metadata), so that
	// `kubectl get thinvolumes -l` finds it.
	LabelPVCName      = "csi-thin.io/pvc-name"
	LabelPVCNamespace = "csi-thin.io/pvc-namespace"
	// LabelGroup selects the member ThinSnapshots of a group snapshot.
	LabelGroup = "csi-thin.io/group-snapshot"
)

// AnnotationReclaimPolicy records the reclaim policy of the PV last seen
// for a ThinVolume. A ThinVolume whose PV disappeared is deleted only if
// that PV said Delete or no PV was ever seen; a Retain PV's volume is kept
// (the administrator chose to keep the storage) and only reported.
const AnnotationReclaimPolicy = "csi-thin.io/reclaim-policy"

// FinalizerNodeCleanup is held by the node agent on every ThinVolume and
// ThinSnapshot until the storage behind it is gone from the node, so that
// deleting the resource never orphans a subvolume or LV.
const FinalizerNodeCleanup = "csi-thin.io/node-cleanup"

// AnnotationVolumeSnapshotNamespace and AnnotationVolumeSnapshotName name
// the VolumeSnapshot a ThinSnapshot was cut for (from the snapshotter's
// --extra-create-metadata), so the node agent can put its export's Events
// there too.
const (
	AnnotationVolumeSnapshotNamespace = "csi-thin.io/volumesnapshot-namespace"
	AnnotationVolumeSnapshotName      = "csi-thin.io/volumesnapshot-name"
)

// FinalizerExport is held by the node agent on a ThinSnapshot with
// spec.export until the snapshot's export is deleted from its object
// store (or kept as the parent of a later export), so that deleting the
// snapshot never orphans its export silently.
const FinalizerExport = "csi-thin.io/export"

// A cross-node copy (ThinVolume spec.source.node): the controller grants
// the target node's agent a one-time transfer token, and the address of
// the source node's agent, in these annotations of the ThinVolume. The
// token is useless to anyone but the target node (the source checks the
// puller's node certificate against the token's target) and good for one
// attempt within minutes.
const (
	AnnotationTransferToken  = "csi-thin.io/transfer-token"
	AnnotationTransferSource = "csi-thin.io/transfer-source-address"
)

// LabelTransferFor marks the ThinSnapshot the controller takes of a
// volume to copy it to another node: its value is the ID of the volume
// being made, with which the snapshot goes.
const LabelTransferFor = "csi-thin.io/transfer-for"
