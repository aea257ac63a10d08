package nodeagent_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
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
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/k8s/router"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

// copyEnv is a real kube-apiserver, the controller's router and copy
// reconciler (as cmd/csi-thin wires them with --transfer), and node
// agents on real btrfs pools, each with its transfer server on loopback.
type copyEnv struct {
	t       *testing.T
	ctx     context.Context
	c       client.Client
	scheme  *runtime.Scheme
	cfgAPI  *kubeapi.Server
	cluster *transfertest.Cluster
	r       *router.Router
	nodes   map[string]*copyNode
}

// copyNode is one node: its pool, its agent and its transfer server
// (each can be stopped and started again on the same pool and state).
type copyNode struct {
	name      string
	pool      *btrfs.Pool
	state     string // used tokens
	addr      string
	hold      atomic.Pointer[chan struct{}] // non-nil: sends stall after holdAfter bytes until closed
	stopAgent func()
	stopSrv   func()
	metrics   *prometheus.Registry // of the agent running now
}

// metric reads a counter or gauge of the node's running agent.
func (n *copyNode) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := n.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

const (
	holdAfter = 2 << 20
	// copyAttempts bounds a copy's receives in these tests (8 by default).
	copyAttempts = 3
)

func newCopyEnv(t *testing.T) *copyEnv {
	t.Helper()
	btrfstest.Require(t)
	ctrl.SetLogger(klog.NewKlogr())
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, eventsv1.AddToScheme, thinv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := &copyEnv{t: t, ctx: ctx, c: c, scheme: scheme, cfgAPI: api, cluster: transfertest.NewCluster(t), nodes: map[string]*copyNode{}}
	// The controller: router + copies, as runController wires them.
	mgr, err := ctrl.NewManager(api.Config, ctrl.Options{
		Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	issuer := func() *transfer.Issuer { return e.cluster.Issuer }
	if err := (&router.Copies{Client: mgr.GetClient(), API: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("csi-thin-controller"), Tokens: issuer}).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	e.r, err = router.New(ctx, mgr.GetClient(), mgr.GetAPIReader(), mgr.GetCache(), router.Config{Transfers: issuer, WaitTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(mctx); err != nil {
			t.Errorf("controller: %v", err)
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		t.Fatal("controller cache not synced")
	}
	return e
}

// addNode makes node's pool and starts its agent and transfer server.
func (e *copyEnv) addNode(name string) *copyNode {
	t := e.t
	n := &copyNode{name: name, pool: btrfstest.NewPool(t, backend.GiB, btrfs.Config{NodeName: name}), state: t.TempDir()}
	t.Cleanup(n.pool.Settle)
	e.nodes[name] = n
	e.startServer(n)
	e.startAgent(n)
	t.Cleanup(func() { n.stopAgent(); n.stopSrv() })
	return n
}

// heldWriter stalls a send after holdAfter bytes while its node holds.
type heldWriter struct {
	w       io.Writer
	n       *copyNode
	ctx     context.Context
	written int64
}

func (h *heldWriter) Write(p []byte) (int, error) {
	if h.written >= holdAfter {
		if ch := h.n.hold.Load(); ch != nil {
			select {
			case <-*ch:
			case <-h.ctx.Done():
				return 0, h.ctx.Err()
			}
		}
	}
	n, err := h.w.Write(p)
	h.written += int64(n)
	return n, err
}

type heldStreamer struct {
	*btrfs.Pool
	n *copyNode
}

func (s heldStreamer) SendSnapshot(ctx context.Context, id, parent string, w io.Writer) (backend.SendStats, error) {
	return s.Pool.SendSnapshot(ctx, id, parent, &heldWriter{w: w, n: s.n, ctx: ctx})
}

func (e *copyEnv) startServer(n *copyNode) {
	t := e.t
	srv, err := transfer.NewServer(transfer.ServerConfig{
		Node: n.name, Pool: heldStreamer{Pool: n.pool, n: n}, Tokens: e.cluster.Tokens, UsedTokensDir: n.state,
		Certificate: e.cluster.NodeCertificate(t, n.name), ClientCAs: e.cluster.Roots(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := n.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	for i := 0; ; i++ { // the same port again after a stop
		if ln, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	ctx, stop := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("transfer server %s: %v", n.name, err)
		}
	}()
	n.stopSrv = sync.OnceFunc(func() { stop(); <-done })
}

func (e *copyEnv) startAgent(n *copyNode) {
	t := e.t
	mgr, err := ctrl.NewManager(e.cfgAPI.Config, ctrl.Options{
		Scheme:     e.scheme,
		Cache:      cache.Options{ByObject: nodeagent.CacheOptions(n.name)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}},
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := transfer.NewClient(transfer.ClientConfig{Certificate: e.cluster.NodeCertificate(t, n.name), RootCAs: e.cluster.Roots(t), IdleTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n.metrics = prometheus.NewRegistry()
	tm, err := nodeagent.NewTransferMetrics(n.metrics)
	if err != nil {
		t.Fatal(err)
	}
	status, err := nodeagent.Setup(mgr, n.pool, time.Hour, nil,
		nodeagent.WithTransfers(func() *transfer.Client { return tc }, tm),
		nodeagent.WithPullerTuning(func(p *nodeagent.Puller) {
			p.ProgressInterval, p.EventInterval, p.Attempts = 100*time.Millisecond, time.Second, copyAttempts
		}))
	if err != nil {
		t.Fatal(err)
	}
	status.SetTransferAddress(n.addr)
	ctx, stop := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("agent %s: %v", n.name, err)
		}
	}()
	n.stopAgent = sync.OnceFunc(func() { stop(); <-done })
	// The router copies only between nodes that publish their address.
	e.eventually("ThinNode "+n.name+" publishes its transfer address", func() bool {
		tn := &thinv1.ThinNode{}
		return e.c.Get(e.ctx, client.ObjectKey{Name: n.name}, tn) == nil && tn.Status.TransferAddress == n.addr
	})
}

func (e *copyEnv) eventually(what string, cond func() bool) {
	e.t.Helper()
	for !cond() {
		if e.ctx.Err() != nil {
			e.t.Fatalf("timed out: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *copyEnv) volume(id string) *thinv1.ThinVolume {
	tv := &thinv1.ThinVolume{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: id}, tv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		e.t.Fatal(err)
	}
	return tv
}

func writeFile(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func sumFile(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// holds lists what a pool holds: volumes, snapshots and anything left in
// its receive and staging directories.
func holds(t *testing.T, pool *btrfs.Pool) (vols, snaps, scratch []string) {
	t.Helper()
	ctx := context.Background()
	vs, err := pool.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		vols = append(vols, v.ID)
	}
	ss, err := pool.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		snaps = append(snaps, s.ID)
	}
	root := filepath.Dir(filepath.Dir(pool.VolumePath(backend.VolumeIDFor("x"))))
	for _, dir := range []string{"receiving", "staging"} {
		ents, _ := os.ReadDir(filepath.Join(root, dir))
		for _, e := range ents {
			scratch = append(scratch, dir+"/"+e.Name())
		}
	}
	return vols, snaps, scratch
}

// TestCrossNodeCopy clones a volume and restores a snapshot onto another
// node than their source's through the router, the controller's copy
// reconciler and two node agents on real btrfs pools: the copies have
// the source's data, report their progress, and leave no snapshot of the
// copy behind; a copy whose volume is deleted half-way is cancelled and
// leaves nothing on either node; a target agent or a source server
// stopped half-way is restarted and the copy completes with a new token.
func TestCrossNodeCopy(t *testing.T) {
	e := newCopyEnv(t)
	n1, n2 := e.addNode("n1"), e.addNode("n2")
	ctx := e.ctx
	const size = 128 << 20
	src, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("src"), Name: "src", RequiredBytes: size, AccessType: backend.AccessMount, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	want := writeFile(t, filepath.Join(n1.pool.VolumePath(src.ID), "data"), 24<<20)

	checkCopy := func(t *testing.T, id string, wantAttempts int32) {
		t.Helper()
		tv := e.volume(id)
		if tv == nil || tv.Status.Phase != thinv1.PhaseReady {
			t.Fatalf("copy %s not Ready: %+v", id, tv)
		}
		if got := sumFile(t, filepath.Join(n2.pool.VolumePath(id), "data")); got != want {
			t.Errorf("copy %s: data differs from the source's", id)
		}
		st := tv.Status.Transfer
		if st == nil || st.Phase != thinv1.TransferReceived || st.BytesTotal < 24<<20 || st.BytesDone < st.BytesTotal || st.CompletionTime == nil {
			t.Errorf("copy %s: transfer status %+v, want Received with bytesDone >= bytesTotal >= 24 MiB", id, st)
		} else if wantAttempts > 0 && st.Attempts != wantAttempts {
			t.Errorf("copy %s: %d attempts, want %d", id, st.Attempts, wantAttempts)
		}
		if tv.Status.SizeBytes < size {
			t.Errorf("copy %s: size %d, want at least the requested %d", id, tv.Status.SizeBytes, size)
		}
	}
	// The snapshot taken for a clone goes once the copy is over.
	snapshotGone := func(t *testing.T, id string) {
		t.Helper()
		sid := router.CopySnapshotID(id)
		deadline := time.Now().Add(30 * time.Second)
		for {
			ts := &thinv1.ThinSnapshot{}
			err := e.c.Get(ctx, client.ObjectKey{Name: sid}, ts)
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("snapshot %s of the clone %s still there (err %v): %+v", sid, id, err, ts)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_, snaps, _ := holds(t, n1.pool)
		for _, s := range snaps {
			if s == sid {
				t.Errorf("pool of n1 still holds the clone's snapshot %s", sid)
			}
		}
	}

	t.Run("clone", func(t *testing.T) {
		id := backend.VolumeIDFor("clone")
		v, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "clone", RequiredBytes: size, AccessType: backend.AccessMount,
			Node: "n2", Source: backend.Source{Kind: backend.SourceVolume, ID: src.ID}})
		if err != nil {
			t.Fatal(err)
		}
		if v.Node != "n2" {
			t.Errorf("clone on %s, want n2", v.Node)
		}
		checkCopy(t, id, 1)
		snapshotGone(t, id)
		if got := n2.metric(t, "csi_thin_transfer_received_bytes_total"); got < 24<<20 {
			t.Errorf("n2 counted %.0f bytes received, want at least the 24 MiB copied", got)
		}
		if got := n2.metric(t, "csi_thin_transfer_receives_in_flight"); got != 0 {
			t.Errorf("n2 reports %.0f receives in flight after the copy", got)
		}
		if err := e.r.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("restore", func(t *testing.T) {
		sid := backend.SnapshotIDFor("snap")
		if _, err := e.r.CreateSnapshot(ctx, backend.SnapshotRequest{ID: sid, Name: "snap", SourceVolumeID: src.ID}); err != nil {
			t.Fatal(err)
		}
		id := backend.VolumeIDFor("restore")
		if _, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "restore", RequiredBytes: size, AccessType: backend.AccessMount,
			Node: "n2", Source: backend.Source{Kind: backend.SourceSnapshot, ID: sid}}); err != nil {
			t.Fatal(err)
		}
		checkCopy(t, id, 1)
		// A restore streams the snapshot itself: it stays.
		if _, err := e.r.GetSnapshot(ctx, sid); err != nil {
			t.Errorf("restored snapshot: %v", err)
		}
		if err := e.r.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := e.r.DeleteSnapshot(ctx, sid); err != nil {
			t.Fatal(err)
		}
	})

	// startHeld starts a clone whose stream stalls after holdAfter bytes
	// and returns once the target reported progress.
	startHeld := func(t *testing.T, name string) (string, chan struct{}, <-chan error) {
		t.Helper()
		release := make(chan struct{})
		n1.hold.Store(&release)
		id := backend.VolumeIDFor(name)
		res := make(chan error, 1)
		go func() {
			_, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: name, RequiredBytes: size, AccessType: backend.AccessMount,
				Node: "n2", Source: backend.Source{Kind: backend.SourceVolume, ID: src.ID}})
			res <- err
		}()
		e.eventually("progress of "+name, func() bool {
			tv := e.volume(id)
			return tv != nil && tv.Status.Transfer != nil && tv.Status.Transfer.BytesDone >= holdAfter && tv.Status.Transfer.BytesTotal >= 24<<20
		})
		return id, release, res
	}
	release := func(ch chan struct{}) {
		n1.hold.Store(nil)
		close(ch)
	}

	t.Run("deleted while copying", func(t *testing.T) {
		id, rel, res := startHeld(t, "cancelled")
		defer release(rel)
		if got := n2.metric(t, "csi_thin_transfer_receives_in_flight"); got != 1 {
			t.Errorf("n2 reports %.0f receives in flight during a copy, want 1", got)
		}
		if err := e.r.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := <-res; err == nil {
			t.Error("CreateVolume of a deleted copy succeeded")
		}
		snapshotGone(t, id)
		vols, _, scratch := holds(t, n2.pool)
		if len(vols) != 0 || len(scratch) != 0 {
			t.Errorf("n2 holds volumes %v and scratch %v after the cancelled copy", vols, scratch)
		}
	})

	t.Run("target agent restarted while copying", func(t *testing.T) {
		id, rel, res := startHeld(t, "target-restart")
		n2.stopAgent() // its receive is cancelled; the pool removes what it received
		if vols, _, scratch := holds(t, n2.pool); len(vols) != 0 || len(scratch) != 0 {
			t.Errorf("n2 holds volumes %v and scratch %v after its agent stopped mid-copy", vols, scratch)
		}
		release(rel)
		e.startAgent(n2)
		if err := <-res; err != nil {
			t.Fatal(err)
		}
		checkCopy(t, id, 2)
		snapshotGone(t, id)
		if err := e.r.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("source server restarted while copying", func(t *testing.T) {
		id, rel, res := startHeld(t, "source-restart")
		n1.stopSrv() // cuts the stream: the target refuses it and asks for a new token
		release(rel)
		e.eventually("the target noticed the cut", func() bool {
			tv := e.volume(id)
			return tv != nil && tv.Status.Transfer != nil && tv.Status.Transfer.Message != ""
		})
		e.startServer(n1)
		if err := <-res; err != nil {
			t.Fatal(err)
		}
		tv := e.volume(id)
		checkCopy(t, id, 0)
		if tv.Status.Transfer.Attempts < 2 {
			t.Errorf("attempts %d, want at least 2", tv.Status.Transfer.Attempts)
		}
		snapshotGone(t, id)
		if err := e.r.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("source snapshot gone", func(t *testing.T) {
		sid := backend.SnapshotIDFor("vanishing")
		if _, err := e.r.CreateSnapshot(ctx, backend.SnapshotRequest{ID: sid, Name: "vanishing", SourceVolumeID: src.ID}); err != nil {
			t.Fatal(err)
		}
		// Removed from the pool behind the ThinSnapshot's back: the
		// source answers NotFound, which no new attempt can change.
		if err := n1.pool.DeleteSnapshot(ctx, sid); err != nil {
			t.Fatal(err)
		}
		id := backend.VolumeIDFor("from-vanished")
		_, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "from-vanished", RequiredBytes: size, AccessType: backend.AccessMount,
			Node: "n2", Source: backend.Source{Kind: backend.SourceSnapshot, ID: sid}})
		if rpcerr.Code(err) != codes.NotFound {
			t.Errorf("copy of a snapshot gone from its pool: %v (%v), want NotFound", err, rpcerr.Code(err))
		}
		e.eventually("the failed copy deleted", func() bool { return e.volume(id) == nil })
		if vols, _, scratch := holds(t, n2.pool); len(vols) != 0 || len(scratch) != 0 {
			t.Errorf("n2 holds volumes %v and scratch %v after the failed copy", vols, scratch)
		}
		if err := e.r.DeleteSnapshot(ctx, sid); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("source unreachable for every attempt", func(t *testing.T) {
		n1.stopSrv()
		defer e.startServer(n1)
		id := backend.VolumeIDFor("unreachable")
		_, err := e.r.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "unreachable", RequiredBytes: size, AccessType: backend.AccessMount,
			Node: "n2", Source: backend.Source{Kind: backend.SourceVolume, ID: src.ID}})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d attempts of the copy failed", copyAttempts)) {
			t.Errorf("copy from an unreachable source: %v, want %d failed attempts", err, copyAttempts)
		}
		e.eventually("the failed copy deleted", func() bool { return e.volume(id) == nil })
		snapshotGone(t, id)
		if vols, _, scratch := holds(t, n2.pool); len(vols) != 0 || len(scratch) != 0 {
			t.Errorf("n2 holds volumes %v and scratch %v after the failed copy", vols, scratch)
		}
	})

	// Nothing of the copies is left on either node.
	if err := e.r.DeleteVolume(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*copyNode{n1, n2} {
		vols, snaps, scratch := holds(t, n.pool)
		if len(vols)+len(snaps)+len(scratch) != 0 {
			t.Errorf("%s holds volumes %v, snapshots %v, scratch %v at the end", n.name, vols, snaps, scratch)
		}
	}
	var list thinv1.ThinSnapshotList
	if err := e.c.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("ThinSnapshots left: %d", len(list.Items))
	}
}
