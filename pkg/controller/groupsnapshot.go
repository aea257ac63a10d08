package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// GroupServer is the CSI GroupController service (VolumeGroupSnapshot):
// it validates requests, checks that the members share one node, and
// hands the work to the backend's GroupSnapshotter.
type GroupServer struct {
	csi.UnimplementedGroupControllerServer
	s      *Server
	groups backend.GroupSnapshotter
}

// Groups returns the GroupController over the same backend and locks as
// s, or nil when the backend takes no group snapshots (then the driver
// does not advertise the service).
func (s *Server) Groups() *GroupServer {
	g, ok := s.backend.(backend.GroupSnapshotter)
	if !ok {
		return nil
	}
	return &GroupServer{s: s, groups: g}
}

// GroupControllerGetCapabilities implements csi.GroupControllerServer.
func (g *GroupServer) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

// CreateVolumeGroupSnapshot implements csi.GroupControllerServer.
func (g *GroupServer) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if err := checkName(req.GetName()); err != nil {
		return nil, err
	}
	sources := req.GetSourceVolumeIds()
	if len(sources) == 0 {
		return nil, status.Error(codes.InvalidArgument, "source volume ids are required")
	}
	for i, id := range sources {
		if id == "" {
			return nil, status.Errorf(codes.InvalidArgument, "source volume id %d is empty", i)
		}
		if slices.Contains(sources[:i], id) {
			return nil, status.Errorf(codes.InvalidArgument, "source volume %s is listed twice", id)
		}
	}
	if err := checkParameterKeys("VolumeGroupSnapshotClass", req.GetParameters(), groupSnapshotParamKeys); err != nil {
		return nil, err
	}
	if err := checkGroupDeletionPolicy(req.GetParameters()); err != nil {
		return nil, err
	}
	skip, err := skipFreeze(req.GetParameters())
	if err != nil {
		return nil, err
	}
	id := backend.GroupSnapshotIDFor(req.GetName())
	unlock, err := g.s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := g.oneNode(ctx, sources); err != nil {
		return nil, err
	}
	group, err := g.groups.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: id, Name: req.GetName(), SourceVolumeIDs: sources, SkipFreeze: skip})
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: csiGroupSnapshot(group)}, nil
}

// oneNode refuses members on different nodes, naming each node's
// volumes: a group is taken at one instant only within one pool.
func (g *GroupServer) oneNode(ctx context.Context, sources []string) error {
	byNode := map[string][]string{}
	for _, id := range sources {
		v, err := g.s.backend.GetVolume(ctx, id)
		if err != nil {
			return rpcerr.Status(fmt.Errorf("source volume: %w", err))
		}
		byNode[v.Node] = append(byNode[v.Node], id)
	}
	if len(byNode) < 2 {
		return nil
	}
	var parts []string
	for _, node := range slices.Sorted(func(yield func(string) bool) {
		for n := range byNode {
			if !yield(n) {
				return
			}
		}
	}) {
		parts = append(parts, fmt.Sprintf("node %q: %s", node, strings.Join(byNode[node], ", ")))
	}
	return status.Errorf(codes.FailedPrecondition, "a group snapshot's volumes must be on one node, these are on %d: %s", len(byNode), strings.Join(parts, "; "))
}

// DeleteVolumeGroupSnapshot implements csi.GroupControllerServer. The
// members are deleted with the group; snapshot_ids needs no checking, as
// the group knows its members.
func (g *GroupServer) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot id is required")
	}
	unlock, err := g.s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := g.groups.DeleteGroupSnapshot(ctx, id); err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// GetVolumeGroupSnapshot implements csi.GroupControllerServer.
func (g *GroupServer) GetVolumeGroupSnapshot(ctx context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot id is required")
	}
	group, err := g.groups.GetGroupSnapshot(ctx, id)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	if want := req.GetSnapshotIds(); len(want) > 0 {
		have := make([]string, 0, len(group.Snapshots))
		for _, s := range group.Snapshots {
			have = append(have, s.ID)
		}
		for _, sid := range want {
			if !slices.Contains(have, sid) {
				return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is not a member of group snapshot %s (members: %s)", sid, id, strings.Join(have, ", "))
			}
		}
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: csiGroupSnapshot(group)}, nil
}

func csiGroupSnapshot(g *backend.GroupSnapshot) *csi.VolumeGroupSnapshot {
	out := &csi.VolumeGroupSnapshot{
		GroupSnapshotId: g.ID,
		CreationTime:    timestamppb.New(g.CreatedAt),
		ReadyToUse:      g.ReadyToUse,
	}
	for _, s := range g.Snapshots {
		m := csiSnapshot(s)
		m.GroupSnapshotId = g.ID
		out.Snapshots = append(out.Snapshots, m)
	}
	return out
}

// ParamGroupDeletionPolicy is a VolumeGroupSnapshotClass parameter
// accepted and not acted on: Kubernetes' upstream storage e2e framework
// writes the class's deletionPolicy into its parameters too (its group
// snapshot specs run against csi-thin in make test-e2e). The snapshot
// controller acts on the class's own deletionPolicy field; the copy must
// still name a policy, so a typo is refused like any bad parameter.
const ParamGroupDeletionPolicy = "deletionPolicy"

func checkGroupDeletionPolicy(params map[string]string) error {
	switch v, ok := params[ParamGroupDeletionPolicy]; {
	case !ok, v == "Delete", v == "Retain":
		return nil
	default:
		return status.Errorf(codes.InvalidArgument, "VolumeGroupSnapshotClass parameter %s=%.64q: want \"Delete\" or \"Retain\" (the class's own deletionPolicy decides)", ParamGroupDeletionPolicy, v)
	}
}
