package csiclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Stage mounts a volume at a node-global staging path (kubelet's
// .../globalmount). flags are StorageClass mountOptions.
func (c *Client) Stage(ctx context.Context, volumeID, stagingPath string, flags []string) error {
	_, err := c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: volumeID, StagingTargetPath: stagingPath, VolumeCapability: c.mountCapability(flags),
	})
	if err != nil {
		return fmt.Errorf("NodeStageVolume %s at %s: %w", volumeID, stagingPath, err)
	}
	return nil
}

// Publish bind-mounts a staged volume at a pod's target path.
func (c *Client) Publish(ctx context.Context, volumeID, stagingPath, targetPath string, flags []string) error {
	_, err := c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: volumeID, StagingTargetPath: stagingPath, TargetPath: targetPath,
		VolumeCapability: c.mountCapability(flags),
	})
	if err != nil {
		return fmt.Errorf("NodePublishVolume %s at %s: %w", volumeID, targetPath, err)
	}
	return nil
}

// Unpublish undoes Publish.
func (c *Client) Unpublish(ctx context.Context, volumeID, targetPath string) error {
	if _, err := c.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: targetPath}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume %s at %s: %w", volumeID, targetPath, err)
	}
	return nil
}

// Unstage undoes Stage.
func (c *Client) Unstage(ctx context.Context, volumeID, stagingPath string) error {
	if _, err := c.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID, StagingTargetPath: stagingPath}); err != nil {
		return fmt.Errorf("NodeUnstageVolume %s at %s: %w", volumeID, stagingPath, err)
	}
	return nil
}

// Attachment is a volume staged and published under one directory, the
// way kubelet lays it out: <dir>/globalmount and <dir>/mount.
type Attachment struct {
	c           *Client
	VolumeID    string
	StagingPath string
	// TargetPath is where the volume's files are.
	TargetPath string
}

// Attach stages and publishes volumeID under dir (created if missing).
// On failure it undoes what it did.
func (c *Client) Attach(ctx context.Context, volumeID, dir string, flags []string) (*Attachment, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("attach dir: %w", err)
	}
	a := &Attachment{c: c, VolumeID: volumeID, StagingPath: filepath.Join(dir, "globalmount"), TargetPath: filepath.Join(dir, "mount")}
	if err := c.Stage(ctx, volumeID, a.StagingPath, flags); err != nil {
		return nil, err
	}
	if err := c.Publish(ctx, volumeID, a.StagingPath, a.TargetPath, flags); err != nil {
		return nil, errors.Join(err, c.Unstage(context.WithoutCancel(ctx), volumeID, a.StagingPath))
	}
	return a, nil
}

// Detach unpublishes and unstages; both are idempotent, so Detach may be
// called again after a partial failure.
func (a *Attachment) Detach(ctx context.Context) error {
	if err := a.c.Unpublish(ctx, a.VolumeID, a.TargetPath); err != nil {
		return err
	}
	return a.c.Unstage(ctx, a.VolumeID, a.StagingPath)
}
