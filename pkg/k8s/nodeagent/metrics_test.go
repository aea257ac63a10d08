package nodeagent

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
)

func TestPoolMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewPoolMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe("n1")(thinv1.ThinNodeStatus{Backend: "btrfs", DataPercent: 42.5, MetadataPercent: 3, ProvisionedBytes: 7, AvailableBytes: 9, Healthy: true, Volumes: 2})
	want := `
# HELP csi_thin_pool_data_percent Pool data fill level, percent.
# TYPE csi_thin_pool_data_percent gauge
csi_thin_pool_data_percent{backend="btrfs",node="n1"} 42.5
# HELP csi_thin_pool_available_bytes Largest new volume the pool accepts now.
# TYPE csi_thin_pool_available_bytes gauge
csi_thin_pool_available_bytes{backend="btrfs",node="n1"} 9
# HELP csi_thin_pool_healthy 1 when the pool can serve requests.
# TYPE csi_thin_pool_healthy gauge
csi_thin_pool_healthy{backend="btrfs",node="n1"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"csi_thin_pool_data_percent", "csi_thin_pool_available_bytes", "csi_thin_pool_healthy"); err != nil {
		t.Error(err)
	}
}
