// Package registration registers the CSI node plugin with the kubelet, in
// place of the node-driver-registrar sidecar: a gRPC server on a socket in
// the kubelet's plugins_registry directory that the kubelet's plugin
// watcher finds, asks for the driver's name and CSI endpoint, and tells
// whether registration worked.
package registration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/csi-thin/csi-thin/pkg/unixsock"
)

// SupportedVersions are the CSI versions the kubelet may use to talk to
// the plugin (the kubelet only knows 1.x).
var SupportedVersions = []string{"1.0.0"}

// Server answers the kubelet's plugin watcher.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	// DriverName is the CSI driver name (csi-thin.io).
	DriverName string
	// Endpoint is the CSI socket's path as the kubelet sees it on the host.
	Endpoint string
	// Socket is where this server listens, normally
	// <kubelet-dir>/plugins_registry/<driver>-reg.sock.
	Socket string
	// Failed is called when the kubelet reports that registration failed
	// (the caller usually exits so the pod restarts and tries again).
	Failed func(error)
	// Registered is called when the kubelet reports success; may be nil.
	Registered func()
}

// GetInfo implements registerapi.RegistrationServer.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(2).InfoS("kubelet asked for plugin info", "driver", s.DriverName, "endpoint", s.Endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.DriverName,
		Endpoint:          s.Endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus implements registerapi.RegistrationServer.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !st.PluginRegistered {
		err := fmt.Errorf("kubelet refused to register %s: %s", s.DriverName, st.Error)
		klog.ErrorS(err, "plugin registration failed", "driver", s.DriverName)
		if s.Failed != nil {
			s.Failed(err)
		}
		return &registerapi.RegistrationStatusResponse{}, nil
	}
	klog.InfoS("registered with the kubelet", "driver", s.DriverName, "endpoint", s.Endpoint)
	if s.Registered != nil {
		s.Registered()
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Run serves until ctx ends, then removes the socket: the kubelet notices
// and deregisters the plugin (it registers again when a new socket shows up).
func (s *Server) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(s.Socket), 0o750); err != nil {
		return fmt.Errorf("registration dir: %w", err)
	}
	// Whoever can connect can claim to be the kubelet and hear where the
	// CSI socket is: the socket is the kubelet's (root's) alone from its
	// first moment, whatever the umask. A stale socket is replaced.
	lis, err := unixsock.ListenPrivate(s.Socket)
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.InfoS("waiting for the kubelet to register the plugin", "socket", s.Socket)
	select {
	case err = <-errc:
	case <-ctx.Done():
		srv.Stop()
		// A Serve that starts after Stop closes the listener itself:
		// wait for it, so that nothing of this run outlives it.
		<-errc
		err = nil
	}
	lis.Close() // already closed by Serve; removes the socket if it is still ours
	return err
}
