package router

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// stageCount is how many samples the registry the controller serves on
// /metrics holds for one operation and stage of csi_thin_router_stage_seconds.
func stageCount(t *testing.T, operation, stage string) uint64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "csi_thin_router_stage_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "operation") == operation && label(m, "stage") == stage {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// docs/kubernetes.md and docs/performance.md name the stages a routed
// create is split into; each create records each of them once, on the
// registry the controller serves.
func TestCreateRecordsEveryStage(t *testing.T) {
	h := newHarness(t, thinNode("n1", 100*backend.GiB, true, 0))
	h.onVol = ready(backend.GiB)
	h.onSnap = func(ts *thinv1.ThinSnapshot) { ts.Status.Phase, ts.Status.ReadyToUse = thinv1.PhaseReady, true }
	ops := []struct {
		operation string
		do        func() error
	}{
		{"create_volume", func() error {
			_, err := h.r.CreateVolume(h.ctx, backend.VolumeRequest{ID: volA, Name: "pvc-a", RequiredBytes: backend.GiB})
			return err
		}},
		{"create_snapshot", func() error {
			_, err := h.r.CreateSnapshot(h.ctx, backend.SnapshotRequest{ID: snapA, Name: "snap-a", SourceVolumeID: volA})
			return err
		}},
	}
	for _, op := range ops {
		before := map[string]uint64{}
		for _, stage := range []string{stagePlace, stageSubmit, stageNode} {
			before[stage] = stageCount(t, op.operation, stage)
		}
		if err := op.do(); err != nil {
			t.Fatalf("%s: %v", op.operation, err)
		}
		for stage, n := range before {
			if got := stageCount(t, op.operation, stage); got != n+1 {
				t.Errorf("csi_thin_router_stage_seconds{operation=%q,stage=%q}: %d samples after one create, want %d", op.operation, stage, got, n+1)
			}
		}
	}
}
