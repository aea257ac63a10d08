package scale

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
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
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/k8s/router"
)

const volumesPerNode = 3

func newScheme(t *testing.T) *kruntime.Scheme {
	s := kruntime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse) / (1 << 20)
}

// TestManyNodeAgents runs SCALE_NODES (default 20) node agents and one
// router against a real API server, creates volumesPerNode volumes per
// node through the router, and checks that each agent received exactly
// its own node's ThinVolumes. It prints the CreateVolume latency through
// the router and the heap per agent and of the router (SCALE: lines, for
// docs/performance.md); it asserts none of them.
func TestManyNodeAgents(t *testing.T) {
	n := 20
	if v := os.Getenv("SCALE_NODES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("SCALE_NODES=%q", v)
		}
	}
	ctrl.SetLogger(klog.NewKlogr())
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newScheme(t)
	c, err := client.New(api.Config, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}

	base := heapMiB()
	var mgrs []ctrl.Manager
	received := make([]map[string]bool, n)
	var mu sync.Mutex
	var errs atomic.Int32
	for i := range n {
		node := fmt.Sprintf("node-%03d", i)
		if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}); err != nil {
			t.Fatal(err)
		}
		mgr, err := ctrl.NewManager(api.Config, ctrl.Options{
			Scheme:     s,
			Cache:      cache.Options{ByObject: nodeagent.CacheOptions(node)},
			Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}},
			Metrics:    metricsserver.Options{BindAddress: "0"},
			Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nodeagent.Setup(mgr, fake.New(node, 1000*backend.GiB), nodeagent.DefaultStatusInterval, nil); err != nil {
			t.Fatal(err)
		}
		mgrs = append(mgrs, mgr)
		received[i] = map[string]bool{}
		inf, err := mgr.GetCache().GetInformer(ctx, &thinv1.ThinVolume{})
		if err != nil {
			t.Fatal(err)
		}
		seen := received[i]
		add := func(obj any) {
			if o, ok := obj.(client.Object); ok {
				mu.Lock()
				seen[o.GetName()] = true
				mu.Unlock()
			}
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }}); err != nil {
			t.Fatal(err)
		}
		go func() {
			if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
				errs.Add(1)
				t.Errorf("agent %s: %v", node, err)
			}
		}()
	}
	for _, m := range mgrs {
		if !m.GetCache().WaitForCacheSync(ctx) {
			t.Fatal("agent cache not synced")
		}
	}
	agentsHeap := heapMiB() - base

	rmgr, err := ctrl.NewManager(api.Config, ctrl.Options{Scheme: s, Metrics: metricsserver.Options{BindAddress: "0"},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(ctx, rmgr.GetClient(), rmgr.GetAPIReader(), rmgr.GetCache(), router.Config{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = rmgr.Start(ctx) }()
	if !rmgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("router cache not synced")
	}

	// Volumes on every node, 8 calls at a time (the provisioner's default
	// worker count is higher, but this machine has 2 cores).
	var lat []time.Duration
	var lmu sync.Mutex
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		for j := range volumesPerNode {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				node := fmt.Sprintf("node-%03d", i)
				id := backend.VolumeIDFor(fmt.Sprintf("%s-%d", node, j))
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
				defer ccancel()
				t0 := time.Now()
				if _, err := r.CreateVolume(cctx, backend.VolumeRequest{ID: id, Node: node, RequiredBytes: backend.GiB, AccessType: backend.AccessMount}); err != nil {
					t.Errorf("create on %s: %v", node, err)
					return
				}
				lmu.Lock()
				lat = append(lat, time.Since(t0))
				lmu.Unlock()
			}()
		}
	}
	wg.Wait()
	total := time.Since(start)
	routerHeap := heapMiB() - base - agentsHeap
	if t.Failed() {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }

	// Each agent received exactly its own node's volumes.
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	minRecv, maxRecv := 1<<30, 0
	for i := range n {
		node := fmt.Sprintf("node-%03d", i)
		want := map[string]bool{}
		for j := range volumesPerNode {
			want[backend.VolumeIDFor(fmt.Sprintf("%s-%d", node, j))] = true
		}
		for name := range received[i] {
			if !want[name] {
				t.Errorf("agent %s received %s of another node", node, name)
			}
		}
		for name := range want {
			if !received[i][name] {
				t.Errorf("agent %s did not receive its %s", node, name)
			}
		}
		minRecv, maxRecv = min(minRecv, len(received[i])), max(maxRecv, len(received[i]))
	}
	t.Logf("SCALE: nodes=%d volumes=%d create p50=%v p99=%v max=%v total=%v (%.1f/s)", n, len(lat),
		pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond),
		total.Round(time.Millisecond), float64(len(lat))/total.Seconds())
	t.Logf("SCALE: nodes=%d ThinVolumes received per agent min=%d max=%d (own: %d)", n, minRecv, maxRecv, volumesPerNode)
	t.Logf("SCALE: nodes=%d heap in use: agents %.1f MiB (%.2f MiB per agent), router %.1f MiB", n, agentsHeap, agentsHeap/float64(n), routerHeap)
}
