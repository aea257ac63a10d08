package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	toolscache "k8s.io/client-go/tools/cache"
)

// TestBurstBench is the cluster benchmark of `make bench-cluster`: it
// measures, never asserts, how fast claims become Bound, and asserts only
// that everything worked and nothing is left behind.
//
//  1. burst: E2E_BENCH_BURST claims created at once, then as many clones
//     of them at once; rate = claims / (last Bound - first create).
//  2. sequential: claims one after another, empty and as clones of a
//     source with 1 GiB written, PVC -> Bound p50 each.
//  3. stages: where a create's time goes, from the driver's own histograms
//     (csi_thin_router_stage_seconds, csi_thin_agent_stage_seconds and the
//     CreateVolume RPC as the provisioner sees it), scraped through the API
//     server before and after each phase (the bursts, the sequential empty
//     creates, the sequential clones), so only that phase counts.
//  4. everything deleted: the time, and the node's pool left empty.
//
// Results go to stdout and to $E2E_BENCH_OUT (a file) when set.
func TestBurstBench(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("E2E_BENCH_BURST"))
	if n <= 0 {
		t.Skip("cluster benchmark: make bench-cluster (sets E2E_BENCH_BURST)")
	}
	c := newCluster(t)
	r := &benchReport{}
	before := c.scrapeDriver(t)

	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("burst-%d", i)
	}
	clock := c.startBoundClock(t)
	burstStart := time.Now()
	api0, cpu0 := c.scrapeAPIServer(t), c.sampleCPU(t)
	elapsed, lat := c.burst(t, clock, names, nil)
	cpu1, api1 := c.sampleCPU(t), c.scrapeAPIServer(t)
	r.add("burst: %d claims created at once: all Bound in %s = %.1f claims/s (PVC -> Bound p50 %s, max %s)",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), pct(lat, 50), pct(lat, 100))

	clones := make([]string, n)
	for i := range clones {
		clones[i] = fmt.Sprintf("burst-clone-%d", i)
	}
	elapsed, lat = c.burst(t, clock, clones, func(i int) pvcOpt { return fromPVC(names[i]) })
	cpu2, api2 := c.sampleCPU(t), c.scrapeAPIServer(t)
	burstsEnd := time.Now()
	r.add("burst: %d clones created at once: all Bound in %s = %.1f clones/s (PVC -> Bound p50 %s, max %s)",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), pct(lat, 50), pct(lat, 100))

	burstDone := c.scrapeDriver(t)

	// Room for 1 GiB of data; 41 claims of this size and the bursts' fit
	// the e2e pool's 64 GiB at an overprovision ratio of 1.
	const seqSize = "1088Mi"
	empty := c.sequential(t, clock, "seq-empty", 20, seqSize, nil)
	emptyDone := c.scrapeDriver(t)
	c.createPVC(t, "seq-source", classImmediate, seqSize)
	c.waitBound(t, "seq-source", 2*time.Minute)
	c.runPod(t, "seq-fill", "dd if=/dev/urandom of=/seq-source/data bs=1M count=1024 conv=fsync 2>&1 | tail -1", "seq-source")
	cloneStart := c.scrapeDriver(t)
	cloned := c.sequential(t, clock, "seq-clone", 20, seqSize, fromPVC("seq-source"))
	cloneDone := c.scrapeDriver(t)
	r.add("sequential: PVC -> Bound p50 %s empty, %s as a clone of a source with 1 GiB written (%.2fx)",
		pct(empty, 50), pct(cloned, 50), float64(pct(cloned, 50))/float64(pct(empty, 50)))

	// What each burst cost the machine and the API server, per claim.
	r.addCPU("the claims' burst", cpu0, cpu1, n, 14)
	r.addCPU("the clones' burst", cpu1, cpu2, n, 14)
	r.addAPI("the claims' burst", api0, api1, n, 12)
	r.addAPI("the clones' burst", api1, api2, n, 12)
	r.addEvents(t, c, "both bursts", burstStart, burstsEnd, 2*n)
	// Where a create's time goes, per phase: the bursts, and the
	// sequential empty and clone creates on their own (the clone's extra
	// time shows in the stage that grows).
	r.stages("the bursts", before, burstDone)
	r.stages("20 sequential empty creates", burstDone, emptyDone)
	r.stages("20 sequential clones of the 1 GiB source", cloneStart, cloneDone)

	claims, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testNothingLeft(t, c)
	r.add("delete: all %d claims deleted, their PVs and csi-thin resources gone and the pool empty after %s",
		len(claims.Items), time.Since(start).Round(time.Millisecond))
	r.write(t)
}

// stages adds where the creates between two scrapes spent their time, from
// the driver's own histograms: p50 of each stage, interpolated in the
// buckets like histogram_quantile.
func (r *benchReport) stages(phase string, before, after map[string]*dto.MetricFamily) {
	r.add("stages of a create, %s (p50):", phase)
	for _, op := range []string{"create_volume", "create_snapshot"} {
		for _, s := range []struct{ metric, stage string }{
			{"csi_thin_router_stage_seconds", "place"}, {"csi_thin_router_stage_seconds", "submit"},
			{"csi_thin_agent_stage_seconds", "finalizer"}, {"csi_thin_agent_stage_seconds", "recheck"},
			{"csi_thin_agent_stage_seconds", "backend"}, {"csi_thin_agent_stage_seconds", "status"},
			{"csi_thin_router_stage_seconds", "node"},
		} {
			if q, count, ok := quantileDelta(before, after, s.metric, map[string]string{"operation": op, "stage": s.stage}, 0.5); ok {
				r.add("  %-15s %-7s %-9s p50 %6.1f ms over %d", op, strings.TrimSuffix(strings.TrimPrefix(s.metric, "csi_thin_"), "_stage_seconds"), s.stage, q*1000, count)
			}
		}
	}
	for _, m := range []string{"CreateVolume", "CreateSnapshot"} {
		if q, count, ok := quantileDelta(before, after, "csi_thin_csi_rpc_duration_seconds", map[string]string{"method": "/csi.v1.Controller/" + m, "code": "OK"}, 0.5); ok {
			r.add("  CSI %-14s (what the provisioner times) p50 %6.1f ms over %d", m, q*1000, count)
		}
	}
}

// boundClock notes when each claim of the namespace is first seen Bound,
// from an informer (a bare watch may end early; the informer re-watches).
type boundClock struct {
	mu      sync.Mutex
	bound   map[string]time.Time
	changed chan struct{}
	stop    context.CancelFunc
}

func (c *cluster) startBoundClock(t *testing.T) *boundClock {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &boundClock{bound: map[string]time.Time{}, changed: make(chan struct{}, 1), stop: cancel}
	factory := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithNamespace(c.ns))
	inf := factory.Core().V1().PersistentVolumeClaims().Informer()
	note := func(obj any) {
		pvc, ok := obj.(*corev1.PersistentVolumeClaim)
		if !ok || pvc.Status.Phase != corev1.ClaimBound {
			return
		}
		b.mu.Lock()
		if _, seen := b.bound[pvc.Name]; !seen {
			b.bound[pvc.Name] = time.Now()
		}
		b.mu.Unlock()
		select {
		case b.changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: note, UpdateFunc: func(_, obj any) { note(obj) },
	}); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	t.Cleanup(cancel)
	return b
}

// wait returns when every named claim has been seen Bound, with the times.
func (b *boundClock) wait(ctx context.Context, names []string) (map[string]time.Time, error) {
	for {
		b.mu.Lock()
		got := map[string]time.Time{}
		for _, n := range names {
			if at, ok := b.bound[n]; ok {
				got[n] = at
			}
		}
		b.mu.Unlock()
		if len(got) == len(names) {
			return got, nil
		}
		select {
		case <-b.changed:
		case <-ctx.Done():
			return got, fmt.Errorf("%d of %d claims Bound: %w", len(got), len(names), ctx.Err())
		}
	}
}

// burst creates the claims at once (opt(i) may make claim i a clone) and
// returns the time until the last is Bound and each one's PVC -> Bound.
func (c *cluster) burst(t *testing.T, clock *boundClock, names []string, opt func(int) pvcOpt) (time.Duration, []time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	created := make([]time.Time, len(names))
	failed := make([]error, len(names))
	start := time.Now()
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			var opts []pvcOpt
			if opt != nil {
				opts = append(opts, opt(i))
			}
			created[i] = time.Now()
			_, failed[i] = c.kube.CoreV1().PersistentVolumeClaims(c.ns).Create(ctx, c.claim(name, classImmediate, "64Mi", opts...), metav1.CreateOptions{})
		})
	}
	wg.Wait()
	if err := errors.Join(failed...); err != nil {
		t.Fatalf("create claims: %v", err)
	}
	bound, err := clock.wait(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	lat := make([]time.Duration, 0, len(names))
	for i, name := range names {
		lat = append(lat, bound[name].Sub(created[i]))
		if bound[name].After(last) {
			last = bound[name]
		}
	}
	return last.Sub(start), lat
}

// sequential creates n claims one after another, each after the previous
// is Bound, and returns each one's PVC -> Bound.
func (c *cluster) sequential(t *testing.T, clock *boundClock, prefix string, n int, size string, opt pvcOpt) []time.Duration {
	t.Helper()
	var lat []time.Duration
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		var opts []pvcOpt
		if opt != nil {
			opts = append(opts, opt)
		}
		start := time.Now()
		c.createPVC(t, name, classImmediate, size, opts...)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		bound, err := clock.wait(ctx, []string{name})
		cancel()
		if err != nil {
			t.Fatalf("claim %s: %v: %s", name, err, c.eventsFor(name))
		}
		lat = append(lat, bound[name].Sub(start))
	}
	return lat
}

// sampleCPU reads every host process's CPU time (the cluster's processes
// run on this host).
func (c *cluster) sampleCPU(t *testing.T) cpuSample {
	t.Helper()
	s, err := sampleCPU()
	if err != nil {
		t.Fatalf("sample CPU: %v", err)
	}
	return s
}

// scrapeDriver reads the /metrics of every csi-thin pod (controller and
// node agents) through the API server's pod proxy, merged by family.
func (c *cluster) scrapeDriver(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	ctx := context.Background()
	pods, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list driver pods: %v", err)
	}
	all := map[string]*dto.MetricFamily{}
	for _, p := range pods.Items {
		if !servesMetrics(&p) {
			continue // the snapshot-controller
		}
		raw, err := c.kube.CoreV1().RESTClient().Get().Namespace(c.driver).Resource("pods").
			Name(p.Name + ":9809").SubResource("proxy").Suffix("metrics").DoRaw(ctx)
		if err != nil {
			t.Fatalf("metrics of pod %s: %v", p.Name, err)
		}
		fams := parseMetrics(t, "pod "+p.Name, raw)
		for name, f := range fams {
			if have, ok := all[name]; ok {
				have.Metric = append(have.Metric, f.Metric...)
			} else {
				all[name] = f
			}
		}
	}
	return all
}

// servesMetrics: the pod runs the csi-thin binary, whose /metrics is the
// container port named metrics (9809).
func servesMetrics(p *corev1.Pod) bool {
	for _, c := range p.Spec.Containers {
		if slices.ContainsFunc(c.Ports, func(port corev1.ContainerPort) bool { return port.Name == "metrics" && port.ContainerPort == 9809 }) {
			return true
		}
	}
	return false
}

// quantileDelta is the q-quantile of the observations a histogram got
// between two scrapes, summed over the series matching labels, linearly
// interpolated inside the bucket it falls in (as PromQL's
// histogram_quantile does).
func quantileDelta(before, after map[string]*dto.MetricFamily, name string, labels map[string]string, q float64) (float64, uint64, bool) {
	buckets := func(fams map[string]*dto.MetricFamily) (map[float64]uint64, uint64) {
		out := map[float64]uint64{}
		var count uint64
		f, ok := fams[name]
		if !ok {
			return out, 0
		}
		for _, m := range f.Metric {
			if !matches(m, labels) || m.Histogram == nil {
				continue
			}
			count += m.Histogram.GetSampleCount()
			for _, b := range m.Histogram.Bucket {
				out[b.GetUpperBound()] += b.GetCumulativeCount()
			}
		}
		return out, count
	}
	b0, c0 := buckets(before)
	b1, c1 := buckets(after)
	count := c1 - c0
	if count == 0 {
		return 0, 0, false
	}
	bounds := make([]float64, 0, len(b1))
	for ub := range b1 {
		bounds = append(bounds, ub)
	}
	sort.Float64s(bounds)
	rank := q * float64(count)
	lower, below := 0.0, uint64(0)
	for _, ub := range bounds {
		cum := b1[ub] - b0[ub]
		if float64(cum) >= rank {
			if math.IsInf(ub, 1) {
				return lower, count, true
			}
			in := cum - below
			if in == 0 {
				return ub, count, true
			}
			return lower + (ub-lower)*(rank-float64(below))/float64(in), count, true
		}
		lower, below = ub, cum
	}
	return lower, count, true
}

func matches(m *dto.Metric, labels map[string]string) bool {
	for k, v := range labels {
		if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == k && l.GetValue() == v }) {
			return false
		}
	}
	return true
}

// pct is the p-th percentile (0-100) of the durations, rounded to ms.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	return s[i].Round(time.Millisecond)
}

type benchReport struct{ lines []string }

func (r *benchReport) add(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *benchReport) write(t *testing.T) {
	text := strings.Join(r.lines, "\n") + "\n"
	fmt.Print("CLUSTER-BENCH:\n" + text)
	if out := os.Getenv("E2E_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(text), 0o644); err != nil {
			t.Errorf("write %s: %v", out, err)
		}
	}
}

func TestQuantileDelta(t *testing.T) {
	hist := func(counts ...uint64) map[string]*dto.MetricFamily {
		bounds := []float64{0.01, 0.02, 0.05, math.Inf(1)}
		h := &dto.Histogram{SampleCount: new(uint64)}
		for i, c := range counts {
			h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: &bounds[i], CumulativeCount: &c})
			*h.SampleCount = c
		}
		op, stage, v1, v2 := "operation", "stage", "create_volume", "node"
		return map[string]*dto.MetricFamily{"m": {Metric: []*dto.Metric{{
			Label: []*dto.LabelPair{{Name: &op, Value: &v1}, {Name: &stage, Value: &v2}}, Histogram: h}}}}
	}
	sel := map[string]string{"stage": "node"}
	for _, tc := range []struct {
		name          string
		before, after map[string]*dto.MetricFamily
		q, want       float64
		count         uint64
	}{
		// 10 new observations, 4 up to 0.02 and 6 in (0.02, 0.05]: the
		// 5th is the first of those six, 1/6 of the way in.
		{"within a bucket", hist(0, 0, 0, 0), hist(0, 4, 10, 10), 0.5, 0.025, 10},
		// Only what came after the first scrape counts.
		{"delta", hist(100, 100, 100, 100), hist(100, 110, 110, 110), 0.5, 0.015, 10},
		{"beyond the last bound", hist(0, 0, 0, 0), hist(0, 0, 0, 2), 0.5, 0.05, 2},
	} {
		got, count, ok := quantileDelta(tc.before, tc.after, "m", sel, tc.q)
		if !ok || count != tc.count || math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: got %v over %d (ok %v), want %v over %d", tc.name, got, count, ok, tc.want, tc.count)
		}
	}
	if _, _, ok := quantileDelta(hist(1, 1, 1, 1), hist(1, 1, 1, 1), "m", sel, 0.5); ok {
		t.Error("no new observations gave a quantile")
	}
	if _, _, ok := quantileDelta(hist(0, 0, 0, 0), hist(0, 4, 10, 10), "m", map[string]string{"stage": "place"}, 0.5); ok {
		t.Error("a selector matching no series gave a quantile")
	}
}
