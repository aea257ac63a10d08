package nodeagent

import (
	"testing"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// The agent's sweep writes a volume's Healthy condition only when the
// pool's view changed, with an Event each time; a volume the pool lost
// altogether is abnormal (StorageMissing).
func TestVolumeHealthSweep(t *testing.T) {
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	e.reconcileVolume(vol1)
	h := &VolumeHealth{Client: e.c, Pool: e.pool, Recorder: e.rec}
	drain := func() {
		for len(e.rec.Events) > 0 {
			<-e.rec.Events
		}
	}
	drain()
	sweep := func(want int, status metav1.ConditionStatus, reason string) {
		t.Helper()
		n, err := h.Sweep(e.ctx)
		if err != nil || n != want {
			t.Fatalf("sweep changed %d, %v; want %d", n, err, want)
		}
		c := apimeta.FindStatusCondition(e.volume(vol1).Status.Conditions, thinv1.ConditionHealthy)
		if c == nil || c.Status != status || c.Reason != reason {
			t.Fatalf("Healthy condition %+v, want %s %s", c, status, reason)
		}
	}
	sweep(0, metav1.ConditionTrue, "Healthy")

	e.pool.mu.Lock()
	e.pool.vols[vol1].Condition = backend.Condition{Abnormal: true, Reason: backend.ReasonPoolFull, Message: "pool 99% full"}
	e.pool.mu.Unlock()
	sweep(1, metav1.ConditionFalse, backend.ReasonPoolFull)
	e.event("VolumeConditionAbnormal")
	sweep(0, metav1.ConditionFalse, backend.ReasonPoolFull)

	e.pool.mu.Lock()
	e.pool.vols[vol1].Condition = backend.Condition{Message: "ok"}
	e.pool.mu.Unlock()
	sweep(1, metav1.ConditionTrue, "Healthy")
	e.event("VolumeConditionNormal")

	e.pool.mu.Lock()
	delete(e.pool.vols, vol1)
	e.pool.mu.Unlock()
	sweep(1, metav1.ConditionFalse, backend.ReasonMissing)
}
