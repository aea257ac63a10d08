package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// recorder keeps "Kind/name reason" of every Event.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) Eventf(regarding, _ runtime.Object, _, reason, _, _ string, _ ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := regarding.(client.Object)
	r.events = append(r.events, fmt.Sprintf("%T/%s %s", o, o.GetName(), reason))
}

func (r *recorder) has(e string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.events, e)
}

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func thinNode(name string, age time.Duration) *thinv1.ThinNode {
	t := metav1.NewTime(now.Add(-age))
	return &thinv1.ThinNode{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: thinv1.ThinNodeStatus{Healthy: true, UpdateTime: &t}}
}

func volume(name, node string) *thinv1.ThinVolume {
	return &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: backend.VolumeIDFor(name), Labels: map[string]string{wellknown.LabelNode: node},
			Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec:   thinv1.ThinVolumeSpec{Node: node, Name: "pv-" + name, RequiredBytes: backend.GiB, AccessType: thinv1.AccessMount},
		Status: thinv1.ThinVolumeStatus{Phase: thinv1.PhaseReady},
	}
}

// TestScanMarksLostNodes: a live node's volume is untouched; a silent
// agent's and a deleted node's volumes become Lost with Events on the
// volume, its PV and its PVC and a metric; a volume being deleted on a
// deleted node loses its finalizer (no agent will ever remove it), while
// one on a node that still exists keeps it (its agent finishes the job
// when it returns).
func TestScanMarksLostNodes(t *testing.T) {
	live, silent, deleted := volume("live", "n1"), volume("silent", "n2"), volume("deleted", "n3")
	dying := volume("dying", "n3")
	dyingSilent := volume("dying-silent", "n2")
	ts := metav1.NewTime(now.Add(-time.Minute))
	dying.DeletionTimestamp, dyingSilent.DeletionTimestamp = &ts, &ts
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "data", UID: "pvc-uid"}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: silent.Spec.Name}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "csi-thin.io", VolumeHandle: silent.Name}},
		ClaimRef:               &corev1.ObjectReference{Namespace: "app", Name: "data", UID: "pvc-uid"},
	}}
	group := func(name, node string) *thinv1.ThinGroupSnapshot {
		return &thinv1.ThinGroupSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(now.Add(-time.Hour)), Finalizers: []string{wellknown.FinalizerNodeCleanup}},
			Spec: thinv1.ThinGroupSnapshotSpec{Node: node, SourceVolumeIDs: []string{"v-" + strings.Repeat("a", 32)}}, Status: thinv1.ThinGroupSnapshotStatus{Phase: thinv1.PhaseReady}}
	}
	liveGroup, lostGroup := group("g-live", "n1"), group("g-lost", "n3")
	c := fake.NewClientBuilder().WithScheme(scheme(t)).
		WithObjects(live, silent, deleted, dying, dyingSilent, pv, pvc, liveGroup, lostGroup,
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
			thinNode("n1", 10*time.Second), thinNode("n2", 6*time.Minute), thinNode("n3", time.Hour)).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinGroupSnapshot{}, &thinv1.ThinNode{}).Build()
	rec := &recorder{}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d := &Detector{Client: c, API: c, Recorder: rec, Now: func() time.Time { return now }, Metrics: m}
	ctx := context.Background()
	for range 2 { // a second scan changes nothing
		if err := d.Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	get := func(tv *thinv1.ThinVolume) *thinv1.ThinVolume {
		got := &thinv1.ThinVolume{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(tv), got); err != nil {
			t.Fatalf("get %s: %v", tv.Name, err)
		}
		return got
	}
	if got := get(live); got.Status.Phase != thinv1.PhaseReady {
		t.Errorf("live node's volume: %s", got.Status.Phase)
	}
	// Group snapshots are judged like the rest: the deleted node's is Lost
	// (so that deleting it does not wait for an agent that never comes).
	for _, g := range []struct {
		obj  *thinv1.ThinGroupSnapshot
		want thinv1.Phase
	}{{liveGroup, thinv1.PhaseReady}, {lostGroup, thinv1.PhaseLost}} {
		got := &thinv1.ThinGroupSnapshot{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(g.obj), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != g.want {
			t.Errorf("group snapshot on %s: phase %s, want %s", g.obj.Spec.Node, got.Status.Phase, g.want)
		}
	}
	if !rec.has("*v1alpha1.ThinGroupSnapshot/g-lost NodeLost") {
		t.Errorf("no NodeLost event on the lost group snapshot: %v", rec.events)
	}
	for _, tv := range []*thinv1.ThinVolume{silent, deleted} {
		got := get(tv)
		cond := apimeta.FindStatusCondition(got.Status.Conditions, thinv1.ConditionReady)
		if got.Status.Phase != thinv1.PhaseLost || cond == nil || cond.Reason != thinv1.ReasonNodeLost {
			t.Errorf("%s on %s: status %+v", tv.Spec.Name, tv.Spec.Node, got.Status)
		}
		if !rec.has("*v1alpha1.ThinVolume/" + tv.Name + " NodeLost") {
			t.Errorf("no NodeLost event on %s: %v", tv.Spec.Name, rec.events)
		}
	}
	if !rec.has("*v1.PersistentVolume/"+pv.Name+" NodeLost") || !rec.has("*v1.PersistentVolumeClaim/data NodeLost") {
		t.Errorf("no NodeLost event on the PV and PVC: %v", rec.events)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(dying), &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
		t.Errorf("deleted volume of a deleted node still there: %v", err)
	}
	if got := get(dyingSilent); len(got.Finalizers) != 1 {
		t.Errorf("deleted volume of a silent (existing) node lost its finalizer")
	}
	if v := testutil.ToFloat64(m.vols.WithLabelValues("n2")); v != 2 {
		t.Errorf("lost_volumes{node=n2} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.vols.WithLabelValues("n1")); v != 0 {
		t.Errorf("lost_volumes{node=n1} = %v, want 0", v)
	}
}

// TestOrphansCollected: past the grace period, a volume whose PV never
// appeared, or whose Delete PV is gone, is deleted with an Event; one whose
// Retain PV is gone is kept and reported; one with its PV is kept and
// remembers the PV's policy; a young one is left alone.
func TestOrphansCollected(t *testing.T) {
	old := metav1.NewTime(now.Add(-time.Hour))
	mk := func(name, policy string) *thinv1.ThinVolume {
		tv := volume(name, "n1")
		tv.CreationTimestamp = old
		if policy != "" {
			tv.Annotations = map[string]string{wellknown.AnnotationReclaimPolicy: policy}
		}
		return tv
	}
	never, deleted, retained, bound := mk("never", ""), mk("deleted", "Delete"), mk("retained", "Retain"), mk("bound", "")
	young := volume("young", "n1")
	young.CreationTimestamp = metav1.NewTime(now.Add(-time.Minute))
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: bound.Spec.Name}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
		PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "csi-thin.io", VolumeHandle: bound.Name}},
	}}
	c := fake.NewClientBuilder().WithScheme(scheme(t)).
		WithObjects(never, deleted, retained, bound, young, pv, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, thinNode("n1", time.Second)).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinNode{}).Build()
	rec := &recorder{}
	d := &Detector{Client: c, API: c, Recorder: rec, Now: func() time.Time { return now }, CollectOrphans: true}
	ctx := context.Background()
	if err := d.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tv := range []*thinv1.ThinVolume{never, deleted} {
		got := &thinv1.ThinVolume{}
		// The fake client keeps a deleted object with a finalizer, as the
		// API server does, until the node agent releases it.
		if err := c.Get(ctx, client.ObjectKeyFromObject(tv), got); err != nil || got.DeletionTimestamp == nil {
			t.Errorf("orphan %s not deleted: %v", tv.Spec.Name, err)
		}
		if !rec.has("*v1alpha1.ThinVolume/" + tv.Name + " OrphanDeleted") {
			t.Errorf("no OrphanDeleted event for %s", tv.Spec.Name)
		}
	}
	for _, tv := range []*thinv1.ThinVolume{retained, bound, young} {
		got := &thinv1.ThinVolume{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(tv), got); err != nil || got.DeletionTimestamp != nil {
			t.Errorf("%s deleted: %v", tv.Spec.Name, err)
		}
		if tv == bound && got.Annotations[wellknown.AnnotationReclaimPolicy] != "Retain" {
			t.Errorf("bound volume's reclaim policy not recorded: %v", got.Annotations)
		}
	}
	if !rec.has("*v1alpha1.ThinVolume/" + retained.Name + " Orphaned") {
		t.Errorf("retained orphan not reported: %v", rec.events)
	}
}

// TestNeverMadeOfDeletedNodeCollected: a volume asked of a node that was
// then deleted from the cluster before making it (its claim deleted too,
// so no create retries it) is collected after the grace period, and its
// finalizer released: nothing is left. A volume that node made is kept.
func TestNeverMadeOfDeletedNodeCollected(t *testing.T) {
	old := metav1.NewTime(now.Add(-time.Hour))
	unmade, made := volume("unmade", "gone"), volume("made", "gone")
	unmade.CreationTimestamp, made.CreationTimestamp = old, old
	unmade.Finalizers = []string{wellknown.FinalizerNodeCleanup}
	made.Finalizers = []string{wellknown.FinalizerNodeCleanup}
	made.Status.Phase, made.Status.SizeBytes = thinv1.PhaseReady, 1<<30
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(unmade, made).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinNode{}).Build()
	rec := &recorder{}
	d := &Detector{Client: c, API: c, Recorder: rec, Now: func() time.Time { return now }, CollectOrphans: true}
	ctx := context.Background()
	for range 2 { // marked Lost and deleted, then its finalizer released
		if err := d.Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(unmade), &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
		t.Errorf("never-made volume of a deleted node still there: %v", err)
	}
	if !rec.has("*v1alpha1.ThinVolume/" + unmade.Name + " OrphanDeleted") {
		t.Errorf("no OrphanDeleted event: %v", rec.events)
	}
	got := &thinv1.ThinVolume{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(made), got); err != nil || got.DeletionTimestamp != nil || got.Status.Phase != thinv1.PhaseLost {
		t.Errorf("made volume of a deleted node: %v, deleting %v, phase %s; want it kept, Lost", err, got.DeletionTimestamp, got.Status.Phase)
	}
}

func TestScanInterval(t *testing.T) {
	tests := []struct {
		name      string
		interval  time.Duration
		lostAfter time.Duration
		want      time.Duration
	}{
		{"defaults", 0, 0, DefaultInterval},
		{"a long lost-after keeps the default", 0, time.Hour, DefaultInterval},
		{"a short lost-after is checked six times within it", 0, time.Minute, 10 * time.Second},
		{"an interval set wins", 5 * time.Second, time.Hour, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Detector{Interval: tt.interval, LostAfter: tt.lostAfter}
			if got := d.interval(); got != tt.want {
				t.Errorf("interval() = %v, want %v", got, tt.want)
			}
		})
	}
}
