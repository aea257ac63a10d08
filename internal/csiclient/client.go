// Package csiclient is a small typed CSI client: it dials a driver's unix
// socket and speaks to it exactly as a container orchestrator would, so
// the demo and the benchmark measure the driver through its public API
// rather than through Go calls into its packages.
package csiclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Client is a connection to one CSI driver serving the Identity,
// Controller and Node services, and the GroupController where it offers one.
type Client struct {
	conn            *grpc.ClientConn
	Identity        csi.IdentityClient
	Controller      csi.ControllerClient
	Node            csi.NodeClient
	GroupController csi.GroupControllerClient
	// FsType is sent in every mount capability; empty lets the driver pick
	// (btrfs volumes are btrfs; block backends default to ext4).
	FsType string
}

// Dial connects to a unix:// endpoint (or a bare socket path). The
// connection is lazy: use WaitReady to know the driver is serving.
func Dial(endpoint string) (*Client, error) {
	target := endpoint
	if len(target) > 0 && target[0] == '/' {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial CSI endpoint %s: %w", endpoint, err)
	}
	return &Client{
		conn:            conn,
		Identity:        csi.NewIdentityClient(conn),
		Controller:      csi.NewControllerClient(conn),
		Node:            csi.NewNodeClient(conn),
		GroupController: csi.NewGroupControllerClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// WaitReady polls Probe until the driver reports ready or ctx ends. A
// driver that is still formatting its pool is not listening yet, so
// connection errors are retried too.
func (c *Client) WaitReady(ctx context.Context, poll time.Duration) error {
	var last error
	for {
		resp, err := c.Identity.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()):
			return nil
		case err == nil:
			last = errors.New("driver reports not ready")
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for driver: %w (last: %v)", ctx.Err(), last)
		case <-time.After(poll):
		}
	}
}
