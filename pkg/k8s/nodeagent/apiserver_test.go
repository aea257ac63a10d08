package nodeagent

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// seen records the names an agent's informers delivered.
type seen struct {
	mu    sync.Mutex
	names map[string]bool
}

func (s *seen) add(obj any) {
	if o, ok := obj.(client.Object); ok {
		s.mu.Lock()
		s.names[o.GetName()] = true
		s.mu.Unlock()
	}
}

func (s *seen) list() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for k := range s.names {
		out[k] = true
	}
	return out
}

// startAgent runs one node agent in-process over a fake pool, the way
// cmd/csi-thin wires it (CacheOptions, Setup), and records every object
// its ThinVolume and ThinSnapshot informers receive.
func startAgent(t *testing.T, ctx context.Context, cfg *rest.Config, node string) (*fake.Backend, *seen) {
	t.Helper()
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:     s,
		Cache:      cache.Options{ByObject: CacheOptions(node)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}},
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	pool := fake.New(node, 100*backend.GiB)
	if _, err := Setup(mgr, pool, time.Hour, nil); err != nil {
		t.Fatal(err)
	}
	got := &seen{names: map[string]bool{}}
	for _, obj := range []client.Object{&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}} {
		inf, err := mgr.GetCache().GetInformer(ctx, obj)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc: got.add, UpdateFunc: func(_, o any) { got.add(o) }, DeleteFunc: got.add,
		}); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("agent %s: %v", node, err)
		}
	}()
	return pool, got
}

// TestAgentReceivesOnlyItsNode runs two node agents against a real
// kube-apiserver and checks that each receives only its own node's
// resources (the API server filters by label, not the agent), that a
// resource made before the label existed is labeled and served by its
// node's agent, and that both agents carry out their own resources.
func TestAgentReceivesOnlyItsNode(t *testing.T) {
	ctrl.SetLogger(klog.NewKlogr())
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := runtime.NewScheme()
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(api.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	vol := func(name, node string, labeled bool) *thinv1.ThinVolume {
		tv := newVolume(backend.VolumeIDFor(name), node, backend.GiB)
		tv.Generation = 0
		if labeled {
			tv.Labels = map[string]string{wellknown.LabelNode: node}
		}
		return tv
	}
	want := map[string]map[string]bool{"n1": {}, "n2": {}}
	objs := []client.Object{vol("a1", "n1", true), vol("a2", "n1", true), vol("b1", "n2", true), vol("legacy", "n1", false)}
	snap := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor("sb1"), Labels: map[string]string{wellknown.LabelNode: "n2"}},
		Spec:       thinv1.ThinSnapshotSpec{Node: "n2", SourceVolumeID: backend.VolumeIDFor("b1")},
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	objs = append(objs, snap)
	for _, o := range objs {
		switch o := o.(type) {
		case *thinv1.ThinVolume:
			want[o.Spec.Node][o.Name] = true
		case *thinv1.ThinSnapshot:
			want[o.Spec.Node][o.Name] = true
		}
	}
	pools := map[string]*fake.Backend{}
	got := map[string]*seen{}
	for _, n := range []string{"n1", "n2"} {
		pools[n], got[n] = startAgent(t, ctx, api.Config, n)
	}
	// Every resource becomes Ready on its own node's pool (the snapshot
	// once its source is).
	deadline := time.Now().Add(30 * time.Second)
	for _, o := range objs {
		if o == snap {
			if err := c.Create(ctx, snap); err != nil {
				t.Fatal(err)
			}
		}
		for {
			if err := c.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
				t.Fatal(err)
			}
			var phase thinv1.Phase
			switch o := o.(type) {
			case *thinv1.ThinVolume:
				phase = o.Status.Phase
			case *thinv1.ThinSnapshot:
				phase = o.Status.Phase
			}
			if phase == thinv1.PhaseReady {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still %q", o.GetName(), phase)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	legacy := backend.VolumeIDFor("legacy")
	if tv := objs[3].(*thinv1.ThinVolume); tv.Labels[wellknown.LabelNode] != "n1" {
		t.Errorf("unlabeled resource not labeled: %v", tv.Labels)
	}
	for node, names := range want {
		g := got[node].list()
		for name := range names {
			if !g[name] {
				t.Errorf("agent %s did not receive its %s", node, name)
			}
		}
		for name := range g {
			if !names[name] {
				t.Errorf("agent %s received %s of another node", node, name)
			}
		}
		vols, _ := pools[node].ListVolumes(ctx)
		for _, v := range vols {
			if !names[v.ID] {
				t.Errorf("pool of %s holds %s", node, v.ID)
			}
		}
	}
	if _, err := pools["n1"].GetVolume(ctx, legacy); err != nil {
		t.Errorf("legacy volume not made on n1: %v", err)
	}
}
