// Package driver wires the CSI services into one gRPC server on a unix
// socket: Identity always, Controller and Node when given. It holds no
// storage logic; that lives behind backend.Backend.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/unixsock"
)

// Version is set at build time with -ldflags.
var Version = "dev"

// Config is what one csi-thin process serves.
type Config struct {
	// Endpoint is unix:///path/to/csi.sock.
	Endpoint   string
	Identity   csi.IdentityServer
	Controller csi.ControllerServer // nil: no controller service
	Node       csi.NodeServer       // nil: no node service
	// GroupController serves VolumeGroupSnapshot; nil: not offered. An
	// *Identity then advertises it.
	GroupController csi.GroupControllerServer
	// Ready, when set, gates every call but the Identity service's: until
	// it returns true they fail Unavailable (the CO retries). The socket
	// can then be served from the start, so that a sidecar that connects
	// early waits on Probe instead of on a socket nobody accepts on.
	Ready func() bool
}

// Driver is a running (or ready) CSI gRPC server.
type Driver struct {
	cfg    Config
	server *grpc.Server
	lis    net.Listener
}

// New validates the config and listens on the endpoint. The socket is made
// accessible to its owner only: anything that can reach it can create and
// delete volumes.
func New(cfg Config) (*Driver, error) {
	if cfg.Identity == nil {
		return nil, errors.New("driver: identity server is required")
	}
	path, err := SocketPath(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	lis, err := unixsock.ListenPrivate(path)
	if err != nil {
		return nil, err
	}
	interceptors := []grpc.UnaryServerInterceptor{recoverPanics, logCalls}
	if cfg.Ready != nil {
		interceptors = append(interceptors, untilReady(cfg.Ready))
	}
	server := grpc.NewServer(grpc.ChainUnaryInterceptor(interceptors...))
	csi.RegisterIdentityServer(server, cfg.Identity)
	if cfg.Controller != nil {
		csi.RegisterControllerServer(server, cfg.Controller)
	}
	if cfg.Node != nil {
		csi.RegisterNodeServer(server, cfg.Node)
	}
	if cfg.GroupController != nil {
		csi.RegisterGroupControllerServer(server, cfg.GroupController)
		if i, ok := cfg.Identity.(*Identity); ok {
			i.groupController = true
		}
	}
	return &Driver{cfg: cfg, server: server, lis: lis}, nil
}

// SocketPath returns the filesystem path of a unix:// endpoint.
func SocketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix:// sockets are served", endpoint)
	}
	p := u.Host + u.Path // the host part is non-empty for unix://relative/path

	if p == "" || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("endpoint %q: empty or invalid path", endpoint)
	}
	return p, nil
}

// Run serves until ctx ends, then stops gracefully: in-flight calls finish
// (each is bounded by its own deadline) and new ones are refused.
func (d *Driver) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- d.server.Serve(d.lis) }()
	klog.InfoS("CSI server listening", "endpoint", d.cfg.Endpoint, "controller", d.cfg.Controller != nil, "node", d.cfg.Node != nil, "version", Version)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		klog.InfoS("CSI server stopping", "endpoint", d.cfg.Endpoint)
		d.server.GracefulStop()
		return nil
	}
}

// Stop stops the server at once.
func (d *Driver) Stop() { d.server.Stop() }
