package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// HealthFunc reports whether the storage behind this process is usable.
type HealthFunc func(ctx context.Context) backend.Health

// Identity is the CSI Identity service.
type Identity struct {
	csi.UnimplementedIdentityServer
	health     HealthFunc
	controller bool
	// groupController: the GroupController service is served (set by New).
	groupController bool
}

// ControllerService says whether a process serves, and so advertises, the
// CSI Controller service.
type ControllerService bool

const (
	WithController    ControllerService = true
	WithoutController ControllerService = false
)

// NewIdentity returns the identity service.
func NewIdentity(health HealthFunc, controller ControllerService) *Identity {
	return &Identity{health: health, controller: bool(controller)}
}

// GetPluginInfo implements csi.IdentityServer.
func (i *Identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: wellknown.DriverName, VendorVersion: Version}, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (i *Identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	caps := []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}
	if i.controller {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}})
	}
	if i.groupController {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe implements csi.IdentityServer: ready only while the pool is.
func (i *Identity) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if i.health == nil {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
	}
	h := i.health(ctx)
	if !h.Healthy {
		klog.InfoS("probe: pool not ready", "reason", h.Message)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(h.Healthy)}, nil
}
