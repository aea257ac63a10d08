package e2e

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// TestChartTrimInterval: the node agents get node.trimInterval (default
// 24h: it trims only filesystems that do not discard online), 0 turns it
// off, and what Go's time.ParseDuration would refuse is refused.
func TestChartTrimInterval(t *testing.T) {
	for set, want := range map[string]string{"": "--trim-interval=24h", "0": "--trim-interval=0", "90m": "--trim-interval=90m"} {
		var args []string
		if set != "" {
			args = []string{"--set-string", "node.trimInterval=" + set}
		}
		ds := decode[appsv1.DaemonSet](t, render(t, args...), "DaemonSet/csi-thin-node-default")
		if got := ds.Spec.Template.Spec.Containers[0].Args; !slices.Contains(got, want) {
			t.Errorf("node.trimInterval=%q: args lack %s: %v", set, want, got)
		}
	}
	for _, bad := range [][]string{
		{"--set-string", "node.trimInterval=1d"},
		{"--set-string", "node.trimInterval=-1h"},
		{"--set-string", "node.trimInterval=daily"},
		{"--set", "node.trimInterval=5"},
	} {
		if _, err := helm(t, append([]string{"template", "x", chartDir, "--kube-version", "1.34.0"}, bad...)...); err == nil {
			t.Errorf("values %v accepted", bad)
		}
	}
}

func TestChartLeftoverStagingGrace(t *testing.T) {
	for set, want := range map[string]string{"": "--leftover-staging-grace=2m", "30s": "--leftover-staging-grace=30s"} {
		var args []string
		if set != "" {
			args = []string{"--set-string", "node.leftoverStagingGrace=" + set}
		}
		ds := decode[appsv1.DaemonSet](t, render(t, args...), "DaemonSet/csi-thin-node-default")
		if got := ds.Spec.Template.Spec.Containers[0].Args; !slices.Contains(got, want) {
			t.Errorf("node.leftoverStagingGrace=%q: args lack %s: %v", set, want, got)
		}
	}
	for _, bad := range []string{"0", "2", "two minutes", "-1m"} {
		if _, err := helm(t, "template", "x", chartDir, "--kube-version", "1.34.0", "--set-string", "node.leftoverStagingGrace="+bad); err == nil {
			t.Errorf("node.leftoverStagingGrace=%q accepted", bad)
		}
	}
}
