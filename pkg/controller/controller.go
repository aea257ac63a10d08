// Package controller is the CSI Controller service. It validates requests,
// picks the node from topology, and hands the storage work to a
// backend.Backend: a local pool in all-in-one mode, or the Kubernetes
// router that forwards to node agents. It never execs and never touches a
// node itself.
package controller

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/keylock"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Kubernetes metadata the external-provisioner adds with
// --extra-create-metadata; recorded with the volume, not validated.
const provisionerParamPrefix = "csi.storage.k8s.io/"

// Server is the CSI Controller service.
type Server struct {
	csi.UnimplementedControllerServer
	backend backend.Backend
	// locks serialise calls per volume/snapshot ID: every Create is keyed
	// by the ID derived from its name, so duplicates wait and then see the
	// first call's result instead of racing it.
	locks *keylock.Locks
}

// New returns a controller over b.
func New(b backend.Backend) *Server {
	return &Server{backend: b, locks: keylock.New()}
}

func (s *Server) lock(ctx context.Context, id string) (func(), error) {
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "operation on %s still in progress: %v", id, err)
	}
	return unlock, nil
}

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (s *Server) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	out := make([]*csi.ControllerServiceCapability, 0, len(controllerCaps))
	for _, c := range controllerCaps {
		out = append(out, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: out}, nil
}

// CreateVolume implements csi.ControllerServer.
func (s *Server) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := checkName(req.GetName()); err != nil {
		return nil, err
	}
	access, fsType, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	params, err := splitParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	src, err := sourceOf(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	id := backend.VolumeIDFor(req.GetName())
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	node, err := s.placement(ctx, src, req.GetAccessibilityRequirements())
	if err != nil {
		return nil, err
	}
	vol, err := s.backend.CreateVolume(ctx, backend.VolumeRequest{
		ID: id, Name: req.GetName(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes:    req.GetCapacityRange().GetLimitBytes(),
		Source:        src, AccessType: access, FsType: fsType,
		Parameters: params, Node: node,
	})
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.CreateVolumeResponse{Volume: csiVolume(vol, req.GetVolumeContentSource())}, nil
}

// placement decides the node of a new volume, for every mode: a clone or
// restore lives where its source lives (thin snapshots cannot cross
// nodes) unless the CO requires other nodes and the backend copies across
// nodes (backend.NodeCopier: then the CO's choice wins, and the router
// copies the source there or says why it cannot); otherwise the CO's
// preferred topology wins. The backend is held to the answer
// (backend.VolumeRequest.Node): a local pool refuses another node
// (backend.CheckPlacement), the router checks a copy's node against its
// source and fills in a node the CO left open.
func (s *Server) placement(ctx context.Context, src backend.Source, topo *csi.TopologyRequirement) (string, error) {
	sourceNode := ""
	local, isLocal := s.backend.(backend.Local)
	switch {
	case src.Kind == backend.SourceExport:
		// Any node can restore an export (the router places it like a new
		// volume); a single pool cannot restore one at all.
		if e, ok := s.backend.(backend.SnapshotExporter); !ok || !e.ExportsSnapshots() {
			return "", status.Errorf(codes.InvalidArgument, "content source %s: restoring an export needs the cluster mode (the node agents restore); this driver runs on a single pool", src.ID)
		}
	case src.Kind != backend.SourceNone && isLocal:
		// A local pool is on one node, so its source lives there, and its
		// CreateVolume reports a missing source itself. Looking the source
		// up here would cost a storage round trip per clone (an lvs on
		// LVM: a quarter of a clone's time, see docs/performance.md).
		sourceNode = local.NodeName()
	case src.Kind == backend.SourceSnapshot:
		snap, err := s.backend.GetSnapshot(ctx, src.ID)
		if err != nil {
			return "", rpcerr.Status(fmt.Errorf("source snapshot: %w", err))
		}
		sourceNode = snap.Node
	case src.Kind == backend.SourceVolume:
		vol, err := s.backend.GetVolume(ctx, src.ID)
		if err != nil {
			return "", rpcerr.Status(fmt.Errorf("source volume: %w", err))
		}
		sourceNode = vol.Node
	}
	requisite := nodesOf(topo.GetRequisite())
	if sourceNode != "" {
		if len(requisite) > 0 && !slices.Contains(requisite, sourceNode) {
			if c, ok := s.backend.(backend.NodeCopier); ok && c.CopiesAcrossNodes() {
				if preferred := nodesOf(topo.GetPreferred()); len(preferred) > 0 {
					return preferred[0], nil
				}
				return requisite[0], nil
			}
			return "", status.Errorf(codes.FailedPrecondition,
				"the source of this clone/restore lives on node %q, but the volume must be placed on %v: "+
					"thin snapshots cannot cross nodes; use a StorageClass with volumeBindingMode: Immediate "+
					"for clones and restores, or schedule the pod onto %q", sourceNode, requisite, sourceNode)
		}
		return sourceNode, nil
	}
	if preferred := nodesOf(topo.GetPreferred()); len(preferred) > 0 {
		return preferred[0], nil
	}
	if len(requisite) > 0 {
		return requisite[0], nil
	}
	return "", nil
}

func nodesOf(topos []*csi.Topology) []string {
	var out []string
	for _, t := range topos {
		if n := t.GetSegments()[wellknown.TopologyKey]; n != "" {
			out = append(out, n)
		}
	}
	return out
}

func sourceOf(cs *csi.VolumeContentSource) (backend.Source, error) {
	switch {
	case cs == nil:
		return backend.Source{}, nil
	case cs.GetSnapshot() != nil:
		id := cs.GetSnapshot().GetSnapshotId()
		if id == "" {
			return backend.Source{}, status.Error(codes.InvalidArgument, "content source snapshot id is required")
		}
		if export.IsHandle(id) {
			if _, err := export.ParseHandle(id); err != nil {
				return backend.Source{}, status.Errorf(codes.InvalidArgument, "content source snapshot: %v", err)
			}
			return backend.Source{Kind: backend.SourceExport, ID: id}, nil
		}
		if !backend.IsSnapshotID(id) {
			return backend.Source{}, status.Errorf(codes.NotFound, "source snapshot %q not found", id)
		}
		return backend.Source{Kind: backend.SourceSnapshot, ID: id}, nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		if id == "" {
			return backend.Source{}, status.Error(codes.InvalidArgument, "content source volume id is required")
		}
		if !backend.IsVolumeID(id) {
			return backend.Source{}, status.Errorf(codes.NotFound, "source volume %q not found", id)
		}
		return backend.Source{Kind: backend.SourceVolume, ID: id}, nil
	}
	return backend.Source{}, status.Error(codes.InvalidArgument, "unsupported volume content source")
}

// splitParameters checks the StorageClass parameters and records the
// provisioner's PVC/PV metadata under their own names. csi-thin has no
// parameters of its own: the filesystem is csi.storage.k8s.io/fstype,
// which the external-provisioner turns into the capability's fsType, and
// sizes come from the PVC. So every other key is a mistake (a typo, or a
// parameter of another driver) and is refused rather than ignored; keys
// in the csi.storage.k8s.io/ namespace belong to the CO's sidecars and
// pass, as CSI leaves them to the CO.
func splitParameters(in map[string]string) (map[string]string, error) {
	if err := checkParameterKeys("StorageClass", in, volumeParamKeys); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range in {
		switch strings.TrimPrefix(k, provisionerParamPrefix) {
		case "pvc/name", "pvc/namespace", "pv/name", "pvc/uid":
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// The keys a StorageClass or VolumeSnapshotClass may carry, for the
// error that refuses any other.
var (
	volumeParamKeys = []string{provisionerParamPrefix + "fstype",
		provisionerParamPrefix + "pvc/name", provisionerParamPrefix + "pvc/namespace", provisionerParamPrefix + "pv/name"}
	snapshotParamKeys = []string{ParamFreeze, provisionerParamPrefix + "volumesnapshot/name",
		provisionerParamPrefix + "volumesnapshot/namespace", provisionerParamPrefix + "volumesnapshotcontent/name"}
	// A VolumeSnapshotClass may also export (a group snapshot may not).
	volumeSnapshotParamKeys = append(slices.Clip(snapshotParamKeys), ParamExportSecretName, ParamExportSecretNamespace, ParamExportRetain)
	groupSnapshotParamKeys  = append(slices.Clip(snapshotParamKeys), ParamGroupDeletionPolicy)
)

// checkParameterKeys refuses parameter keys outside the sidecars'
// namespace, naming them (sorted) and the accepted ones.
func checkParameterKeys(class string, in map[string]string, accepted []string) error {
	var unknown []string
	for k := range in {
		if !strings.HasPrefix(k, provisionerParamPrefix) && !slices.Contains(accepted, k) {
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	return status.Errorf(codes.InvalidArgument,
		"unknown %s parameter %s: csi-thin accepts %s and the other %s* keys of the Kubernetes sidecars",
		class, strings.Join(unknown, ", "), strings.Join(accepted, ", "), provisionerParamPrefix)
}

func csiVolume(v *backend.Volume, src *csi.VolumeContentSource) *csi.Volume {
	out := &csi.Volume{
		VolumeId:      v.ID,
		CapacityBytes: v.SizeBytes,
		ContentSource: src,
	}
	if v.Node != "" {
		out.AccessibleTopology = []*csi.Topology{{Segments: map[string]string{wellknown.TopologyKey: v.Node}}}
	}
	if src == nil {
		out.ContentSource = contentSource(v.Source)
	}
	return out
}

func contentSource(s backend.Source) *csi.VolumeContentSource {
	switch s.Kind {
	case backend.SourceSnapshot:
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.ID}}}
	case backend.SourceVolume:
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: s.ID}}}
	}
	return nil
}

// DeleteVolume implements csi.ControllerServer; deleting what is gone succeeds.
func (s *Server) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.backend.DeleteVolume(ctx, id); err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (s *Server) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	vol, err := s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	access, fsType, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if access != vol.AccessType {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume is %s access, not %s", vol.AccessType, access)}, nil
	}
	if fsType != "" && vol.FsType != "" && fsType != vol.FsType {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume has filesystem %s, not %s", vol.FsType, fsType)}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ControllerGetVolume implements csi.ControllerServer.
func (s *Server) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	vol, err := s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.ControllerGetVolumeResponse{Volume: csiVolume(vol, nil), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (s *Server) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	vol, err := s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: VolumeHealth(vol.ID, vol.Condition)}, nil
}

// VolumeHealth renders a backend condition as CSI volume health: an empty
// list is healthy.
func VolumeHealth(id string, c backend.Condition) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: id}
	if c.Abnormal {
		kind := csi.VolumeHealthErrorType_DEGRADED
		if c.Reason == backend.ReasonMissing {
			kind = csi.VolumeHealthErrorType_INACCESSIBLE
		}
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{Status: kind, Reason: c.Reason, Message: c.Message})
	}
	return h
}

// ControllerExpandVolume implements csi.ControllerServer.
func (s *Server) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	rng := req.GetCapacityRange()
	if rng == nil || (rng.GetRequiredBytes() <= 0 && rng.GetLimitBytes() <= 0) {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	if rng.GetRequiredBytes() < 0 || rng.GetLimitBytes() < 0 || (rng.GetLimitBytes() > 0 && rng.GetRequiredBytes() > rng.GetLimitBytes()) {
		return nil, status.Error(codes.OutOfRange, "invalid capacity range")
	}
	size := rng.GetRequiredBytes()
	if size == 0 {
		size = rng.GetLimitBytes()
	}
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := s.backend.ExpandVolume(ctx, id, size)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	if rng.GetLimitBytes() > 0 && vol.SizeBytes > rng.GetLimitBytes() {
		return nil, status.Errorf(codes.OutOfRange, "volume is %d bytes, above the limit %d", vol.SizeBytes, rng.GetLimitBytes())
	}
	return &csi.ControllerExpandVolumeResponse{
		CapacityBytes:         vol.SizeBytes,
		NodeExpansionRequired: needsNodeExpansion(vol),
	}, nil
}

// needsNodeExpansion: a filesystem on a block device must be grown by the
// node; a btrfs subvolume's limit is all there is, and raw block has no
// filesystem.
func needsNodeExpansion(v *backend.Volume) bool {
	return v.AccessType == backend.AccessMount && v.FsType != "btrfs"
}

// GetCapacity implements csi.ControllerServer.
func (s *Server) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, _, err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
			return nil, err
		}
	}
	node := req.GetAccessibleTopology().GetSegments()[wellknown.TopologyKey]
	c, err := s.backend.Capacity(ctx, node)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: c.AvailableBytes,
		MaximumVolumeSize: wrapInt64(min(c.AvailableBytes, c.MaximumVolumeBytes)),
	}, nil
}
