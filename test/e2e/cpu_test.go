package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuSample is the CPU time every process on the host has used, with what
// the process is (cpuRole), and when it was read. The test cluster's
// control plane, kubelets, sidecars and driver all run on this host, so
// the difference of two samples says who spent a phase's CPU.
type cpuSample struct {
	at time.Time
	// pids seen, with their CPU at the sample (cpuSince compares two by
	// process: one that exited in between would make a sum go down).
	pids map[int]pidCPU
}

type pidCPU struct {
	role  string
	start string // starttime since boot: tells a reused PID apart
	cpu   time.Duration
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

func sampleCPU() (cpuSample, error) {
	s := cpuSample{at: time.Now(), pids: map[int]pidCPU{}}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return s, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cpu, comm, start, ok := readStatCPU(d)
		if !ok {
			continue // exited while we read
		}
		role := cpuRole(comm, d)
		s.pids[pid] = pidCPU{role: role, start: start, cpu: cpu}
	}
	return s, nil
}

// readStatCPU returns utime+stime, comm and starttime from
// /proc/PID/stat. comm is in parentheses and may hold spaces, so fields
// are counted after the last ')'.
func readStatCPU(dir string) (cpu time.Duration, comm, start string, ok bool) {
	raw, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return 0, "", "", false
	}
	open, closing := bytes.IndexByte(raw, '('), bytes.LastIndexByte(raw, ')')
	if open < 0 || closing < open {
		return 0, "", "", false
	}
	fields := strings.Fields(string(raw[closing+1:]))
	// After comm: state(3) ... utime(14) stime(15) ... starttime(22),
	// so indexes 11, 12 and 19.
	if len(fields) < 20 {
		return 0, "", "", false
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, "", "", false
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, string(raw[open+1 : closing]), fields[19], true
}

// cpuRole names a process for the report: its comm, except that the
// csi-thin binary is told apart by its --mode (controller or node agent)
// and the kernel's workers are one role (a kworker's comm names the work
// it runs at the moment, e.g. kworker/u8:4-btrfs-endio-meta: the pool's
// I/O and the kernel's own housekeeping).
func cpuRole(comm, dir string) string {
	if strings.HasPrefix(comm, "kworker/") {
		return "kworker"
	}
	if comm != "csi-thin" {
		return comm
	}
	cmdline, _ := os.ReadFile(dir + "/cmdline")
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if mode, ok := strings.CutPrefix(string(arg), "--mode="); ok {
			return "csi-thin " + mode
		}
	}
	return comm
}

// cpuSince is the CPU each role used from before to after: for a process
// in both samples its growth, for one new in after its whole time.
// Processes that exited in between are not counted (their CPU is lost).
func cpuSince(before, after cpuSample) map[string]time.Duration {
	out := map[string]time.Duration{}
	for pid, a := range after.pids {
		used := a.cpu
		if b, ok := before.pids[pid]; ok && b.start == a.start {
			used -= b.cpu
		}
		if used > 0 {
			out[a.role] += used
		}
	}
	return out
}

// addCPU adds to the report the CPU each role used between two samples,
// the largest first and per item (claim) of the phase, and the total
// against the wall-clock time × cores (how close the phase came to using
// the whole machine).
func (r *benchReport) addCPU(phase string, before, after cpuSample, items, top int) {
	used := cpuSince(before, after)
	var total time.Duration
	for _, d := range used {
		total += d
	}
	wall := after.at.Sub(before.at)
	capacity := wall * time.Duration(runtime.NumCPU())
	r.add("CPU, %s: %.1f s used of %.1f s wall x %d cores (%.0f%%)", phase,
		total.Seconds(), wall.Seconds(), runtime.NumCPU(), 100*total.Seconds()/capacity.Seconds())
	var parts []string
	for _, role := range ranked(used, top) {
		parts = append(parts, fmt.Sprintf("%s %.2f s (%.0f ms per item)", role, used[role].Seconds(), float64(used[role].Milliseconds())/float64(items)))
	}
	r.add("  by process: %s", strings.Join(parts, ", "))
}

// ranked is the keys of m, the largest value first (ties by name), at
// most top of them (top <= 0: all).
func ranked[V cmp.Ordered](m map[string]V, top int) []string {
	keys := slices.Sorted(maps.Keys(m))
	slices.SortStableFunc(keys, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	if top > 0 && len(keys) > top {
		keys = keys[:top]
	}
	return keys
}

// perItem lists the keys of counts, the largest first, each with its
// count divided by items.
func perItem[V int | float64](counts map[string]V, items, top int) string {
	var parts []string
	for _, k := range ranked(counts, top) {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, float64(counts[k])/float64(items)))
	}
	return strings.Join(parts, ", ")
}

func TestCPUSample(t *testing.T) {
	dir := t.TempDir()
	// comm with a space and a ')' in it: fields count after the last ')'.
	stat := "4242 (csi thin) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 777 0 0\n"
	if err := os.WriteFile(dir+"/stat", []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	cpu, comm, start, ok := readStatCPU(dir)
	if !ok || comm != "csi thin) x" || cpu != 3*time.Second || start != "777" {
		t.Fatalf("readStatCPU = %v %q %q %v, want 3s \"csi thin) x\" 777 true", cpu, comm, start, ok)
	}
	if got := cpuRole("kworker/u8:4-btrfs-endio-meta", dir); got != "kworker" {
		t.Errorf("cpuRole of a kworker = %q, want kworker", got)
	}
	if err := os.WriteFile(dir+"/cmdline", []byte("/csi-thin\x00--mode=controller\x00--v=2\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := cpuRole("csi-thin", dir); got != "csi-thin controller" {
		t.Errorf("cpuRole = %q, want csi-thin controller", got)
	}

	before := cpuSample{pids: map[int]pidCPU{
		1: {"etcd", "10", time.Second}, 2: {"kubelet", "10", 2 * time.Second}, 3: {"gone", "10", time.Second},
		5: {"mkfs", "10", 9 * time.Second}}}
	after := cpuSample{pids: map[int]pidCPU{
		1: {"etcd", "10", 3 * time.Second}, 2: {"kubelet", "10", 2 * time.Second}, 4: {"etcd", "20", time.Second},
		5: {"mkfs", "30", time.Second}}}
	got := cpuSince(before, after)
	want := map[string]time.Duration{"etcd": 3 * time.Second, "mkfs": time.Second}
	if !maps.Equal(got, want) {
		t.Errorf("cpuSince = %v, want %v (etcd: 2s grown + 1s new; kubelet idle; the exited one not counted; PID 5 reused: its new process's whole 1s)", got, want)
	}

	self, err := sampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := self.pids[os.Getpid()]; !ok {
		t.Errorf("sampleCPU did not see this test's own process %d", os.Getpid())
	}
}

// apiCounts is a scrape of the API server's counters: requests by verb
// and resource, watch events sent by resource.
type apiCounts struct{ requests, watchEvents map[string]float64 }

func (c *cluster) scrapeAPIServer(t *testing.T) apiCounts {
	t.Helper()
	raw, err := c.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("API server metrics: %v", err)
	}
	return apiCountsOf(parseMetrics(t, "the API server", raw))
}

func apiCountsOf(fams map[string]*dto.MetricFamily) apiCounts {
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.Label {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	out := apiCounts{requests: map[string]float64{}, watchEvents: map[string]float64{}}
	for _, m := range fams["apiserver_request_total"].GetMetric() {
		resource := label(m, "resource")
		if sub := label(m, "subresource"); sub != "" {
			resource += "/" + sub
		}
		out.requests[label(m, "verb")+" "+resource] += m.GetCounter().GetValue()
	}
	for _, m := range fams["apiserver_watch_events_total"].GetMetric() {
		// Labelled by resource since Kubernetes 1.32, by kind before.
		what := label(m, "resource")
		if what == "" {
			what = label(m, "kind")
		}
		out.watchEvents[what] += m.GetCounter().GetValue()
	}
	return out
}

// addAPI adds to the report the requests the API server served and the
// watch events it sent between two scrapes, per item, the most first.
func (r *benchReport) addAPI(phase string, before, after apiCounts, items, top int) {
	since := func(b, a map[string]float64) (map[string]float64, float64) {
		out, total := map[string]float64{}, 0.0
		for what, n := range a {
			if d := n - b[what]; d > 0 {
				out[what] = d
				total += d
			}
		}
		return out, total
	}
	requests, totalReq := since(before.requests, after.requests)
	events, totalEv := since(before.watchEvents, after.watchEvents)
	r.add("API server, %s: %.1f requests and %.1f watch events sent per item", phase, totalReq/float64(items), totalEv/float64(items))
	r.add("  requests per item: %s", perItem(requests, items, top))
	r.add("  watch events per item: %s", perItem(events, items, top))
}

// addEvents adds to the report the Events first made from since to until,
// per item, by who reported them and why: each one is a request to the
// API server (a repeat, counted in its count, a second one).
func (r *benchReport) addEvents(t *testing.T, c *cluster, phase string, since, until time.Time, items int) {
	t.Helper()
	list, err := c.kube.EventsV1().Events(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	counts := map[string]int{}
	for _, e := range list.Items {
		first := e.EventTime.Time
		if first.IsZero() {
			first = e.DeprecatedFirstTimestamp.Time
		}
		// Event times have a second's resolution in the older API.
		if first.Before(since.Truncate(time.Second)) || first.After(until) {
			continue
		}
		who := e.ReportingController
		if who == "" {
			who = e.DeprecatedSource.Component
		}
		counts[who+" "+e.Reason] += max(1, int(e.DeprecatedCount))
	}
	r.add("  Events per item, %s (reporter, reason): %s", phase, perItem(counts, items, 0))
}

// parseMetrics parses a Prometheus text exposition read from what.
func parseMetrics(t *testing.T, what string, raw []byte) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse the metrics of %s: %v", what, err)
	}
	return fams
}

func TestRanked(t *testing.T) {
	m := map[string]float64{"b": 2, "a": 2, "c": 5, "d": 1}
	if got, want := ranked(m, 3), []string{"c", "a", "b"}; !slices.Equal(got, want) {
		t.Errorf("ranked top 3 = %v, want %v (largest first, ties by name)", got, want)
	}
	if got := ranked(m, 0); len(got) != 4 {
		t.Errorf("ranked without a limit = %v, want all 4", got)
	}
	if got, want := perItem(map[string]int{"x": 10, "y": 5}, 5, 0), "x 2.0, y 1.0"; got != want {
		t.Errorf("perItem = %q, want %q", got, want)
	}
}
