package driver

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// The GroupController service is advertised exactly when it is served.
func TestGroupControllerAdvertisedWhenServed(t *testing.T) {
	for _, served := range []bool{false, true} {
		id := NewIdentity(nil, WithController)
		cfg := Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), Identity: id}
		if served {
			cfg.GroupController = &csi.UnimplementedGroupControllerServer{}
		}
		if _, err := New(cfg); err != nil {
			t.Fatal(err)
		}
		resp, err := id.GetPluginCapabilities(context.Background(), &csi.GetPluginCapabilitiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		advertised := false
		for _, c := range resp.GetCapabilities() {
			if c.GetService().GetType() == csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE {
				advertised = true
			}
		}
		if advertised != served {
			t.Errorf("served %v, advertised %v", served, advertised)
		}
	}
}
