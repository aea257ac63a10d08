package csiclient

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// mountCapability is what a Kubernetes PVC with volumeMode Filesystem and
// ReadWriteOnce asks for.
func (c *Client) mountCapability(flags []string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: c.FsType, MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// CreateVolume makes an empty volume of at least sizeBytes.
func (c *Client) CreateVolume(ctx context.Context, name string, sizeBytes int64) (*csi.Volume, error) {
	return c.createVolume(ctx, name, sizeBytes, nil)
}

// CloneVolume makes a volume whose content is a copy of sourceVolumeID.
func (c *Client) CloneVolume(ctx context.Context, name, sourceVolumeID string, sizeBytes int64) (*csi.Volume, error) {
	return c.createVolume(ctx, name, sizeBytes, &csi.VolumeContentSource{
		Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: sourceVolumeID}},
	})
}

// RestoreSnapshot makes a volume whose content is snapshotID's.
func (c *Client) RestoreSnapshot(ctx context.Context, name, snapshotID string, sizeBytes int64) (*csi.Volume, error) {
	return c.createVolume(ctx, name, sizeBytes, &csi.VolumeContentSource{
		Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshotID}},
	})
}

func (c *Client) createVolume(ctx context.Context, name string, sizeBytes int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	resp, err := c.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: sizeBytes},
		VolumeCapabilities:  []*csi.VolumeCapability{c.mountCapability(nil)},
		VolumeContentSource: src,
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	return resp.GetVolume(), nil
}

// DeleteVolume deletes a volume; deleting one that is gone succeeds.
func (c *Client) DeleteVolume(ctx context.Context, volumeID string) error {
	if _, err := c.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volumeID}); err != nil {
		return fmt.Errorf("DeleteVolume %s: %w", volumeID, err)
	}
	return nil
}

// CreateSnapshot snapshots a volume.
func (c *Client) CreateSnapshot(ctx context.Context, name, sourceVolumeID string) (*csi.Snapshot, error) {
	resp, err := c.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: sourceVolumeID})
	if err != nil {
		return nil, fmt.Errorf("CreateSnapshot %s of %s: %w", name, sourceVolumeID, err)
	}
	return resp.GetSnapshot(), nil
}

// DeleteSnapshot deletes a snapshot; deleting one that is gone succeeds.
func (c *Client) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	if _, err := c.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapshotID}); err != nil {
		return fmt.Errorf("DeleteSnapshot %s: %w", snapshotID, err)
	}
	return nil
}

// CreateGroupSnapshot snapshots the volumes together, as one instant.
func (c *Client) CreateGroupSnapshot(ctx context.Context, name string, sourceVolumeIDs []string) (*csi.VolumeGroupSnapshot, error) {
	resp, err := c.GroupController.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: name, SourceVolumeIds: sourceVolumeIDs})
	if err != nil {
		return nil, fmt.Errorf("CreateVolumeGroupSnapshot %s of %v: %w", name, sourceVolumeIDs, err)
	}
	return resp.GetGroupSnapshot(), nil
}

// DeleteGroupSnapshot deletes a group snapshot and its members (their IDs
// are part of the request, as CSI requires); deleting one that is gone
// succeeds.
func (c *Client) DeleteGroupSnapshot(ctx context.Context, groupSnapshotID string, snapshotIDs []string) error {
	req := &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: groupSnapshotID, SnapshotIds: snapshotIDs}
	if _, err := c.GroupController.DeleteVolumeGroupSnapshot(ctx, req); err != nil {
		return fmt.Errorf("DeleteVolumeGroupSnapshot %s: %w", groupSnapshotID, err)
	}
	return nil
}
