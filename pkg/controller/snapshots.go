package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// CreateSnapshot implements csi.ControllerServer.
func (s *Server) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := checkName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	if err := checkParameterKeys("VolumeSnapshotClass", req.GetParameters(), volumeSnapshotParamKeys); err != nil {
		return nil, err
	}
	skipFreeze, err := skipFreeze(req.GetParameters())
	if err != nil {
		return nil, err
	}
	exportTo, err := exportTarget(req.GetParameters(), req.GetSecrets(), s.backend)
	if err != nil {
		return nil, err
	}
	id := backend.SnapshotIDFor(req.GetName())
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := s.backend.CreateSnapshot(ctx, backend.SnapshotRequest{ID: id, Name: req.GetName(), SourceVolumeID: req.GetSourceVolumeId(), SkipFreeze: skipFreeze, Export: exportTo,
		VolumeSnapshotNamespace: req.GetParameters()[provisionerParamPrefix+"volumesnapshot/namespace"],
		VolumeSnapshotName:      req.GetParameters()[provisionerParamPrefix+"volumesnapshot/name"]})
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func csiSnapshot(s *backend.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     s.ReadyToUse,
	}
}

// DeleteSnapshot implements csi.ControllerServer.
func (s *Server) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.backend.DeleteSnapshot(ctx, id); err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// GetSnapshot implements csi.ControllerServer.
func (s *Server) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	snap, err := s.getSnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

// ListSnapshots implements csi.ControllerServer.
func (s *Server) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var snaps []*backend.Snapshot
	switch {
	case req.GetSnapshotId() != "":
		snap, err := s.getSnapshot(ctx, req.GetSnapshotId())
		if err == nil && (req.GetSourceVolumeId() == "" || snap.SourceVolumeID == req.GetSourceVolumeId()) {
			snaps = append(snaps, snap)
		} else if err != nil && rpcerr.Code(err) != codes.NotFound {
			return nil, rpcerr.Status(err)
		}
	default:
		all, err := s.backend.ListSnapshots(ctx)
		if err != nil {
			return nil, rpcerr.Status(err)
		}
		for _, snap := range all {
			if req.GetSourceVolumeId() == "" || snap.SourceVolumeID == req.GetSourceVolumeId() {
				snaps = append(snaps, snap)
			}
		}
	}
	page, next, err := paginate(snaps, func(s *backend.Snapshot) string { return s.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, snap := range page {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(snap)})
	}
	return resp, nil
}

// volumePage is one page of all volumes, for ListVolumes and
// ControllerListVolumeHealth.
func (s *Server) volumePage(ctx context.Context, token string, maxEntries int32) ([]*backend.Volume, string, error) {
	vols, err := s.backend.ListVolumes(ctx)
	if err != nil {
		return nil, "", rpcerr.Status(err)
	}
	return paginate(vols, func(v *backend.Volume) string { return v.ID }, token, maxEntries)
}

// ListVolumes implements csi.ControllerServer.
func (s *Server) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	page, next, err := s.volumePage(ctx, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range page {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: csiVolume(v, nil)})
	}
	return resp, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer.
func (s *Server) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	page, next, err := s.volumePage(ctx, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, v := range page {
		resp.Entries = append(resp.Entries, VolumeHealth(v.ID, v.Condition))
	}
	return resp, nil
}

// getSnapshot looks a snapshot up; an export handle (a pre-provisioned
// VolumeSnapshotContent's, docs/mobility.md) is ready to use as it is: the
// controller does not read the object store (it has no access to the
// Secret), so a handle naming a missing export fails at the restore.
func (s *Server) getSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if !export.IsHandle(id) {
		return s.backend.GetSnapshot(ctx, id)
	}
	h, err := export.ParseHandle(id)
	if err != nil {
		return nil, fmt.Errorf("snapshot %.200q: %w", id, backend.ErrNotFound)
	}
	if e, ok := s.backend.(backend.SnapshotExporter); !ok || !e.ExportsSnapshots() {
		return nil, fmt.Errorf("snapshot %s: exports need the cluster mode: %w", id, backend.ErrNotFound)
	}
	volumeID, _, _ := export.ParseID(h.ExportID)
	// The creation time is not known without the store: the epoch says so.
	return &backend.Snapshot{ID: id, SourceVolumeID: volumeID, ReadyToUse: true, CreatedAt: time.Unix(0, 0).UTC()}, nil
}
