package lifecycle

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
)

// A volume whose node agent found it abnormal is told to its claim (and
// PV) once, however many scans follow; when it is healthy again the claim
// is told that too, once.
func TestHealthReachesTheClaim(t *testing.T) {
	sick := volume("sick", "n1")
	apimeta.SetStatusCondition(&sick.Status.Conditions, metav1.Condition{Type: thinv1.ConditionHealthy, Status: metav1.ConditionFalse,
		Reason: "StorageMissing", Message: "subvolume missing", LastTransitionTime: metav1.NewTime(now.Add(-time.Minute))})
	fine := volume("fine", "n1")
	apimeta.SetStatusCondition(&fine.Status.Conditions, metav1.Condition{Type: thinv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: "Healthy", Message: "ok"})
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "data", UID: "pvc-uid"}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: sick.Spec.Name}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "csi-thin.io", VolumeHandle: sick.Name}},
		ClaimRef:               &corev1.ObjectReference{Namespace: "app", Name: "data", UID: "pvc-uid"},
	}}
	c := fake.NewClientBuilder().WithScheme(scheme(t)).
		WithObjects(sick, fine, pv, pvc, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, thinNode("n1", 10*time.Second)).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinGroupSnapshot{}, &thinv1.ThinNode{}).Build()
	rec := &recorder{}
	d := &Detector{Client: c, API: c, Recorder: rec, Now: func() time.Time { return now }}
	ctx := context.Background()
	count := func(e string) int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		n := 0
		for _, got := range rec.events {
			if got == e {
				n++
			}
		}
		return n
	}
	for range 3 {
		if err := d.Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []string{"*v1.PersistentVolumeClaim/data " + ReasonVolumeConditionAbnormal, "*v1.PersistentVolume/" + pv.Name + " " + ReasonVolumeConditionAbnormal} {
		if n := count(e); n != 1 {
			t.Errorf("%q posted %d times over three scans, want once (events %v)", e, n, rec.events)
		}
	}
	if count("*v1.PersistentVolumeClaim/data "+ReasonVolumeConditionNormal) != 0 || len(rec.events) != 2 {
		t.Errorf("events %v: want only the abnormal condition, on the PV and the PVC", rec.events)
	}

	// Healthy again: told once, and the record of the report is gone.
	got := &thinv1.ThinVolume{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(sick), got); err != nil {
		t.Fatal(err)
	}
	apimeta.SetStatusCondition(&got.Status.Conditions, metav1.Condition{Type: thinv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: "Healthy", Message: "ok"})
	if err := c.Status().Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := count("*v1.PersistentVolumeClaim/data " + ReasonVolumeConditionNormal); n != 1 {
		t.Errorf("healthy again told %d times, want once (events %v)", n, rec.events)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(sick), got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Annotations[annotationHealthReported]; ok {
		t.Errorf("annotations %v: the report of a condition that ended is still recorded", got.Annotations)
	}
}
