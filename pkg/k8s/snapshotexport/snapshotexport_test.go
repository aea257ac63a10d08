package snapshotexport_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
	"github.com/csi-thin/csi-thin/internal/s3test"
	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/k8s/lifecycle"
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/k8s/snapshotexport"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

const secretNamespace = "exports"

func init() { ctrl.SetLogger(klog.NewKlogr()) }

// TestExportAfterSnapshot runs a node agent (nodeagent.Setup, as
// cmd/csi-thin does) on a real btrfs pool against a real kube-apiserver,
// exporting into a real SeaweedFS: a ThinSnapshot with spec.export is
// exported once ready (full, then incremental against the previous
// export), with status, condition and Events; the exports rebuild the
// volume byte for byte on another pool; a missing Secret fails and is
// retried until it appears; an export already in the store (an agent that
// died after the upload) is recorded, not uploaded again; deleting the
// snapshots deletes their exports except one a later export needs.
func TestExportAfterSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, c, pool, store := e.ctx, e.c, e.startAgent("n1"), e.store
	secretData := e.secretData

	vol := backend.VolumeIDFor("exported")
	if _, err := pool.CreateVolume(ctx, backend.VolumeRequest{ID: vol, Name: "exported", RequiredBytes: 256 * backend.MiB, AccessType: backend.AccessMount}); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, filepath.Join(pool.VolumePath(vol), "a"), 6<<20)

	snapshot := func(name, secret string) *thinv1.ThinSnapshot {
		ts := &thinv1.ThinSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor(name), Labels: map[string]string{wellknown.LabelNode: "n1"}},
			Spec: thinv1.ThinSnapshotSpec{Node: "n1", Name: name, SourceVolumeID: vol,
				Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: secret}},
		}
		if err := c.Create(ctx, ts); err != nil {
			t.Fatal(err)
		}
		return ts
	}
	waitExport := func(ts *thinv1.ThinSnapshot, phase thinv1.ExportPhase) {
		t.Helper()
		for {
			if err := c.Get(ctx, client.ObjectKeyFromObject(ts), ts); err != nil {
				t.Fatal(err)
			}
			if ts.Status.Export != nil && ts.Status.Export.Phase == phase {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: export status %+v, want phase %s", ts.Name, ts.Status.Export, phase)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Full, then incremental.
	s1 := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor("first"), Labels: map[string]string{wellknown.LabelNode: "n1"},
			Annotations: map[string]string{wellknown.AnnotationVolumeSnapshotNamespace: secretNamespace, wellknown.AnnotationVolumeSnapshotName: "vs-first"}},
		Spec: thinv1.ThinSnapshotSpec{Node: "n1", Name: "first", SourceVolumeID: vol,
			Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3"}},
	}
	if err := c.Create(ctx, s1); err != nil {
		t.Fatal(err)
	}
	waitExport(s1, thinv1.ExportExported)
	id1 := vol + "/" + s1.Name
	if e := s1.Status.Export; e.ID != id1 || e.Parent != "" || e.BytesDone == 0 || e.BytesDone != e.BytesTotal || e.CompletionTime == nil {
		t.Errorf("first export status %+v: want ID %s, no parent, bytes done = total > 0", e, id1)
	}
	if cond := meta.FindStatusCondition(s1.Status.Conditions, thinv1.ConditionExported); cond == nil || cond.Status != metav1.ConditionTrue {
		t.Errorf("Exported condition %+v, want True", cond)
	}
	m1, err := store.Manifest(ctx, id1)
	if err != nil {
		t.Fatalf("first export not in the store: %v", err)
	}
	if m1.Parent != "" || m1.Length != s1.Status.Export.BytesDone || m1.Length < 6<<20 {
		t.Errorf("first manifest %+v: want a full stream of at least 6 MiB, as long as the status says", m1)
	}
	if !controllerHasFinalizer(s1) {
		t.Errorf("finalizers %v lack %s", s1.Finalizers, wellknown.FinalizerExport)
	}
	writeRandom(t, filepath.Join(pool.VolumePath(vol), "b"), 1<<20)
	s2 := snapshot("second", "s3")
	waitExport(s2, thinv1.ExportExported)
	id2 := vol + "/" + s2.Name
	m2, err := store.Manifest(ctx, id2)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Parent != id1 || s2.Status.Export.Parent != id1 {
		t.Errorf("second export's parent: manifest %q, status %q; want %s", m2.Parent, s2.Status.Export.Parent, id1)
	}
	if m2.Length > 3<<20 {
		t.Errorf("incremental export of 1 MiB of changes is %d bytes", m2.Length)
	}
	waitEvent(t, ctx, c, s1.Name, "Exported")
	waitEvent(t, ctx, c, "vs-first", "Exported") // on the VolumeSnapshot the router recorded

	// The exports rebuild the volume on another pool.
	other := btrfstest.NewPool(t, backend.GiB, btrfs.Config{NodeName: "n2"})
	t.Cleanup(other.Settle) // a receive's background clean-up, before the teardown
	chain, err := store.Chain(ctx, id2)
	if err != nil || len(chain) != 2 {
		t.Fatalf("chain of %s: %d links, %v", id2, len(chain), err)
	}
	restored := backend.VolumeIDFor("restored")
	for i, m := range chain {
		pr, pw := io.Pipe()
		go func() {
			_, err := store.Get(ctx, m.ID(), pw)
			pw.CloseWithError(err)
		}()
		if i < len(chain)-1 {
			_, err = other.ReceiveSnapshot(ctx, m.Snapshot, m.Snapshot, pr)
		} else {
			_, err = other.ReceiveVolume(ctx, backend.VolumeRequest{ID: restored, Name: "restored", AccessType: backend.AccessMount}, pr)
		}
		pr.Close()
		if err != nil {
			t.Fatalf("apply %s: %v", m.ID(), err)
		}
	}
	wantSameFiles(t, pool, vol, other, restored)

	// A missing Secret fails the export, which is retried until it appears.
	s3b := snapshot("late-secret", "s3-late")
	waitExport(s3b, thinv1.ExportFailed)
	if cond := meta.FindStatusCondition(s3b.Status.Conditions, thinv1.ConditionExported); cond == nil || cond.Status != metav1.ConditionFalse || !strings.Contains(cond.Message, "s3-late") {
		t.Errorf("Exported condition %+v, want False naming the Secret", cond)
	}
	waitEvent(t, ctx, c, s3b.Name, "ExportFailed")
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: secretNamespace, Name: "s3-late"}, Data: secretData}); err != nil {
		t.Fatal(err)
	}
	waitExport(s3b, thinv1.ExportExported)
	if s3b.Status.Export.Attempts < 2 || s3b.Status.Export.Parent != id2 {
		t.Errorf("export after a failure: attempts %d, parent %q; want >= 2 and the newest export %s", s3b.Status.Export.Attempts, s3b.Status.Export.Parent, id2)
	}

	// An export already in the store is recorded as it is: a full export
	// made by hand stays full although a parent is at hand.
	resumedID := backend.SnapshotIDFor("resumed")
	if _, err := pool.CreateSnapshot(ctx, backend.SnapshotRequest{ID: resumedID, Name: "resumed", SourceVolumeID: vol}); err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if _, err := pool.SendSnapshot(ctx, resumedID, "", &stream); err != nil {
		t.Fatal(err)
	}
	mr, err := store.Put(ctx, vol, resumedID, "", &stream)
	if err != nil {
		t.Fatal(err)
	}
	s4 := snapshot("resumed", "s3")
	waitExport(s4, thinv1.ExportExported)
	if got, _ := store.Manifest(ctx, mr.ID()); got != mr || s4.Status.Export.Parent != "" {
		t.Errorf("resumed export: manifest %+v (was %+v), status parent %q", got, mr, s4.Status.Export.Parent)
	}

	// Deletion: an export stays while a later one names it (the first
	// while the second does); the others go with their snapshots.
	deleteAndWait(t, ctx, c, s1)
	if _, err := store.Manifest(ctx, id1); err != nil {
		t.Errorf("export %s, the parent of %s, was deleted with its snapshot: %v", id1, id2, err)
	}
	waitEvent(t, ctx, c, s1.Name, "ExportKept")
	for _, ts := range []*thinv1.ThinSnapshot{s3b, s2, s4} {
		deleteAndWait(t, ctx, c, ts)
		if _, err := store.Manifest(ctx, ExportIDOf(ts)); !errors.Is(err, export.ErrNotFound) {
			t.Errorf("export of deleted %s: %v, want ErrNotFound", ts.Name, err)
		}
		if _, err := pool.GetSnapshot(ctx, ts.Name); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("local snapshot %s: %v, want it deleted", ts.Name, err)
		}
	}
	left, err := store.List(ctx, vol)
	if err != nil || len(left) != 1 || left[0].ID() != id1 {
		t.Errorf("exports left: %+v, %v; want only %s", left, err, id1)
	}

	// A retained export (spec.export.retain) outlives its snapshot.
	kept := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor("kept"), Labels: map[string]string{wellknown.LabelNode: "n1"}},
		Spec: thinv1.ThinSnapshotSpec{Node: "n1", Name: "kept", SourceVolumeID: vol,
			Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3", Retain: true}},
	}
	if err := c.Create(ctx, kept); err != nil {
		t.Fatal(err)
	}
	waitExport(kept, thinv1.ExportExported)
	if controllerHasFinalizer(kept) {
		t.Errorf("a retained export's snapshot holds %s", wellknown.FinalizerExport)
	}
	deleteAndWait(t, ctx, c, kept)
	if _, err := store.Manifest(ctx, ExportIDOf(kept)); err != nil {
		t.Errorf("retained export after its snapshot was deleted: %v", err)
	}
	if _, err := pool.GetSnapshot(ctx, kept.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("local snapshot of the retained export: %v, want it deleted", err)
	}
}

// env is a real kube-apiserver and SeaweedFS with the export Secret
// exports/s3 and a store client for it; startAgent adds node agents, each
// on its own real btrfs pool.
type env struct {
	t          *testing.T
	ctx        context.Context
	c          client.Client
	cfg        *rest.Config
	kubeconfig string // cfg's credentials in a file, for a child process
	scheme     *runtime.Scheme
	s3         *s3test.Server
	store      *export.Store
	secretData map[string][]byte
}

func newEnv(t *testing.T) *env {
	t.Helper()
	api := kubeapi.ForTest(t)
	s3 := s3test.ForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: secretNamespace}}); err != nil {
		t.Fatal(err)
	}
	secretData := map[string][]byte{
		export.SecretEndpoint:        []byte("http://" + s3.Endpoint),
		export.SecretBucket:          []byte(s3.Bucket),
		export.SecretAccessKeyID:     []byte(s3.AccessKey),
		export.SecretSecretAccessKey: []byte(s3.SecretKey),
		export.SecretPrefix:          []byte("cluster-a/"),
	}
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: secretNamespace, Name: "s3"}, Data: secretData}); err != nil {
		t.Fatal(err)
	}
	cfg, err := export.ConfigFromSecret(secretData)
	if err != nil {
		t.Fatal(err)
	}
	store, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, c: c, cfg: api.Config, kubeconfig: api.Kubeconfig, scheme: scheme, s3: s3, store: store, secretData: secretData}
}

func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, eventsv1.AddToScheme, thinv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return scheme, nil
}

// startAgent runs the node agent of node on a new btrfs pool, wired as
// cmd/csi-thin wires it (CacheOptions, nodeagent.Setup), until the test ends.
func (e *env) startAgent(node string) *btrfs.Pool {
	e.t.Helper()
	pool := newPool(e.t, node)
	e.startAgentOn(pool)
	return pool
}

// newPool makes node's btrfs pool for t, with no agent on it yet.
func newPool(t *testing.T, node string) *btrfs.Pool {
	t.Helper()
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{NodeName: node})
	t.Cleanup(pool.Settle) // a receive's background clean-up, before the teardown
	return pool
}

// startAgentOn runs the node agent of pool's node until the test ends.
func (e *env) startAgentOn(pool *btrfs.Pool) {
	e.t.Helper()
	e.runAgent(e.t, pool)
}

// newAgent wires the node agent of pool's node as cmd/csi-thin does
// (CacheOptions, nodeagent.Setup).
func newAgent(cfg *rest.Config, scheme *runtime.Scheme, pool *btrfs.Pool) (manager.Manager, error) {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:     scheme,
		Cache:      cache.Options{ByObject: nodeagent.CacheOptions(pool.NodeName())},
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return nil, err
	}
	if _, err := nodeagent.Setup(mgr, pool, time.Hour, nil); err != nil {
		return nil, err
	}
	return mgr, nil
}

// runAgent runs the node agent of pool's node until t ends.
func (e *env) runAgent(t *testing.T, pool *btrfs.Pool) {
	t.Helper()
	node := pool.NodeName()
	mgr, err := newAgent(e.cfg, e.scheme, pool)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("agent %s: %v", node, err)
		}
	}()
	t.Cleanup(func() { stop(); <-done })
}

func ExportIDOf(ts *thinv1.ThinSnapshot) string { return ts.Spec.SourceVolumeID + "/" + ts.Name }

func controllerHasFinalizer(ts *thinv1.ThinSnapshot) bool {
	for _, f := range ts.Finalizers {
		if f == wellknown.FinalizerExport {
			return true
		}
	}
	return false
}

func deleteAndWait(t *testing.T, ctx context.Context, c client.Client, ts *thinv1.ThinSnapshot) {
	t.Helper()
	if err := c.Delete(ctx, ts); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ctx, c, ts)
}

// waitGone waits until obj no longer exists.
func waitGone(t *testing.T, ctx context.Context, c client.Client, obj client.Object) {
	t.Helper()
	for {
		err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj.DeepCopyObject().(client.Object))
		if apierrors.IsNotFound(err) {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s not deleted: %v", obj.GetName(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEvent waits for an Event with reason about the ThinSnapshot name.
func waitEvent(t *testing.T, ctx context.Context, c client.Client, name, reason string) {
	t.Helper()
	for {
		var evs eventsv1.EventList
		if err := c.List(ctx, &evs); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == name && e.Reason == reason {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no %s Event about %s", reason, name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func writeRandom(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantSameFiles checks that volume got on pool dst holds files a and b
// of volume vol on pool src (exportedTwice's), byte for byte.
func wantSameFiles(t *testing.T, src *btrfs.Pool, vol string, dst *btrfs.Pool, got string) {
	t.Helper()
	for _, f := range []string{"a", "b"} {
		if fileSum(t, filepath.Join(src.VolumePath(vol), f)) != fileSum(t, filepath.Join(dst.VolumePath(got), f)) {
			t.Errorf("restored %s differs from the source", f)
		}
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// exported snapshots volumeID on node (a ThinSnapshot exporting to
// exports/s3) and waits for its export.
func (e *env) exported(name, node, volumeID string) *thinv1.ThinSnapshot {
	t := e.t
	t.Helper()
	ts := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor(name), Labels: map[string]string{wellknown.LabelNode: node}},
		Spec: thinv1.ThinSnapshotSpec{Node: node, Name: name, SourceVolumeID: volumeID,
			Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3"}},
	}
	if err := e.c.Create(e.ctx, ts); err != nil {
		t.Fatal(err)
	}
	for ts.Status.Export == nil || ts.Status.Export.Phase != thinv1.ExportExported {
		if e.ctx.Err() != nil {
			t.Fatalf("%s not exported: %+v", name, ts.Status.Export)
		}
		time.Sleep(100 * time.Millisecond)
		if err := e.c.Get(e.ctx, client.ObjectKeyFromObject(ts), ts); err != nil {
			t.Fatal(err)
		}
	}
	return ts
}

// exportedTwice makes volume "source" on src (node n1's pool) with 4 MiB
// in file a, exports a snapshot of it, adds 1 MiB in file b and exports a
// second one (incremental against the first).
func (e *env) exportedTwice(src *btrfs.Pool) (vol string, s1, s2 *thinv1.ThinSnapshot) {
	t := e.t
	t.Helper()
	vol = backend.VolumeIDFor("source")
	if _, err := src.CreateVolume(e.ctx, backend.VolumeRequest{ID: vol, Name: "source", RequiredBytes: 256 * backend.MiB, AccessType: backend.AccessMount}); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, filepath.Join(src.VolumePath(vol), "a"), 4<<20)
	s1 = e.exported("one", "n1", vol)
	writeRandom(t, filepath.Join(src.VolumePath(vol), "b"), 1<<20)
	s2 = e.exported("two", "n1", vol)
	return vol, s1, s2
}

// wantRestoreRead checks a Ready restore's status.transfer: Received and
// complete, having read the streams of exactly the exports named.
func (e *env) wantRestoreRead(tv *thinv1.ThinVolume, exportIDs ...string) {
	t := e.t
	t.Helper()
	var want int64
	for _, id := range exportIDs {
		m, err := e.store.Manifest(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want += m.Length
	}
	st := tv.Status.Transfer
	if st == nil || st.Phase != thinv1.TransferReceived || st.BytesTotal != want || st.BytesDone != want || st.CompletionTime == nil {
		t.Errorf("restore %s: transfer status %+v; want Received, %d of %d bytes (the streams of %v), a completion time", tv.Name, st, want, want, exportIDs)
	}
}

// restore makes a ThinVolume on node restoring exportID (as the router
// does for a pre-provisioned content's export handle) and waits for the
// node's verdict.
func (e *env) restore(name, node, exportID string) *thinv1.ThinVolume {
	e.t.Helper()
	return e.verdict(e.t, e.createRestore(e.t, name, node, exportID))
}

// createRestore makes the ThinVolume of restore and returns it at once.
func (e *env) createRestore(t *testing.T, name, node, exportID string) *thinv1.ThinVolume {
	t.Helper()
	tv := &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: backend.VolumeIDFor(name), Labels: map[string]string{wellknown.LabelNode: node}},
		Spec: thinv1.ThinVolumeSpec{Node: node, Name: name, RequiredBytes: 256 * backend.MiB, AccessType: thinv1.AccessMount,
			Source: &thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: exportID,
				Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3"}}},
	}
	if err := e.c.Create(e.ctx, tv); err != nil {
		t.Fatal(err)
	}
	return tv
}

// verdict waits for the node's verdict on tv: Ready or Failed.
func (e *env) verdict(t *testing.T, tv *thinv1.ThinVolume) *thinv1.ThinVolume {
	t.Helper()
	for tv.Status.Phase != thinv1.PhaseReady && tv.Status.Phase != thinv1.PhaseFailed {
		if e.ctx.Err() != nil {
			t.Fatalf("restore %s: phase %q", tv.Spec.Name, tv.Status.Phase)
		}
		time.Sleep(100 * time.Millisecond)
		if err := e.c.Get(e.ctx, client.ObjectKeyFromObject(tv), tv); err != nil {
			t.Fatal(err)
		}
	}
	return tv
}

// TestRestoreFromExport restores, through another node's agent, a volume
// from a chain of two exports (full + incremental) made by the first
// node's agent: the files are equal, no received parent is left, and
// Events say the restore started and ended; a chain whose parent stream
// was altered in the bucket is refused (FailedPrecondition) leaving
// neither volume nor snapshot; a missing export is NotFound.
func TestRestoreFromExport(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.ctx
	src, dst := e.startAgent("n1"), e.startAgent("n2")
	vol, s1, s2 := e.exportedTwice(src)
	if s2.Status.Export.Parent != ExportIDOf(s1) {
		t.Fatalf("second export's parent %q, want %s", s2.Status.Export.Parent, ExportIDOf(s1))
	}
	noSnapshots := func(when string) {
		t.Helper()
		if snaps, err := dst.ListSnapshots(ctx); err != nil || len(snaps) != 0 {
			t.Errorf("%s: snapshots on the restoring node: %v %v", when, snaps, err)
		}
	}

	tv := e.restore("restored", "n2", ExportIDOf(s2))
	if tv.Status.Phase != thinv1.PhaseReady {
		t.Fatalf("restore: %s %s: %s", tv.Status.Phase, tv.Status.Code, tv.Status.Message)
	}
	// Its progress: both links read whole; the Events of its start and end.
	e.wantRestoreRead(tv, ExportIDOf(s1), ExportIDOf(s2))
	for _, reason := range []string{"RestoreStarted", "Restored"} {
		waitEvent(t, ctx, e.c, tv.Name, reason)
	}
	wantSameFiles(t, src, vol, dst, tv.Name)
	noSnapshots("after a restore")

	// One byte of the parent's stream altered in the bucket.
	key := "cluster-a/csi-thin-exports/v1/" + ExportIDOf(s1) + "/stream"
	obj, err := e.s3.Client.GetObject(ctx, e.s3.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := io.ReadAll(obj)
	obj.Close()
	if err != nil || len(stream) < 1<<20 {
		t.Fatalf("read %s: %d bytes, %v", key, len(stream), err)
	}
	stream[len(stream)/2] ^= 0x40
	if _, err := e.s3.Client.PutObject(ctx, e.s3.Bucket, key, bytes.NewReader(stream), int64(len(stream)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	bad := e.restore("from-corrupt", "n2", ExportIDOf(s2))
	if bad.Status.Phase != thinv1.PhaseFailed || bad.Status.Code != codes.FailedPrecondition.String() {
		t.Errorf("restore from a corrupt chain: %s %s: %s; want Failed FailedPrecondition", bad.Status.Phase, bad.Status.Code, bad.Status.Message)
	}
	if st := bad.Status.Transfer; st == nil || st.Phase != thinv1.TransferReceiving || st.Message == "" || st.CompletionTime != nil {
		t.Errorf("transfer status of the refused restore %+v; want Receiving, not complete, with the failure", st)
	}
	if _, err := dst.GetVolume(ctx, bad.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("volume of the refused restore: %v, want it absent", err)
	}
	noSnapshots("after a refused restore")

	missing := e.restore("from-missing", "n2", vol+"/"+backend.SnapshotIDFor("never-taken"))
	if missing.Status.Phase != thinv1.PhaseFailed || missing.Status.Code != codes.NotFound.String() {
		t.Errorf("restore from a missing export: %s %s: %s; want Failed NotFound", missing.Status.Phase, missing.Status.Code, missing.Status.Message)
	}
}

// TestRestoresOfOneChainAtOnce: three volumes restored on one node from
// the same chain at the same time (the agent reconciles several at once)
// are all Ready with the source's files, and no parent is left. They
// share the chain's parent snapshot ID, so they take turns (a retry of
// one whose parent another deleted would have been Failed).
func TestRestoresOfOneChainAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src, dst := e.startAgent("n1"), e.startAgent("n2")
	vol, _, s2 := e.exportedTwice(src)
	var tvs []*thinv1.ThinVolume
	for _, name := range []string{"first", "second", "third"} {
		tvs = append(tvs, e.createRestore(t, name, "n2", ExportIDOf(s2)))
	}
	for _, tv := range tvs {
		tv = e.verdict(t, tv)
		if tv.Status.Phase != thinv1.PhaseReady {
			t.Errorf("restore %s beside two others: %s %s: %s", tv.Spec.Name, tv.Status.Phase, tv.Status.Code, tv.Status.Message)
			continue
		}
		wantSameFiles(t, src, vol, dst, tv.Name)
	}
	if snaps, err := dst.ListSnapshots(e.ctx); err != nil || len(snaps) != 0 {
		t.Errorf("snapshots left on the restoring node: %v %v", snaps, err)
	}
}

// TestExportOfGoneNodeDeleted: a ThinSnapshot whose export is not retained
// is deleted while its node is gone from the cluster (no Node object, so
// no agent will ever release it). The controller's lost-node detector,
// given GoneNodeExports as cmd/csi-thin wires it, releases the node's
// finalizer, deletes the export from the real store and removes the
// export finalizer: the ThinSnapshot is gone, and the bucket holds no
// export of it.
func TestExportOfGoneNodeDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, c := e.ctx, e.c
	vol := backend.VolumeIDFor("on-gone-node")
	ts := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: backend.SnapshotIDFor("on-gone-node"), Labels: map[string]string{wellknown.LabelNode: "gone"},
			Finalizers: []string{wellknown.FinalizerNodeCleanup, wellknown.FinalizerExport}},
		Spec: thinv1.ThinSnapshotSpec{Node: "gone", Name: "on-gone-node", SourceVolumeID: vol,
			Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3"}},
	}
	if err := c.Create(ctx, ts); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctx, vol, ts.Name, "", bytes.NewReader(bytes.Repeat([]byte("x"), 64<<10))); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, ts); err != nil {
		t.Fatal(err)
	}
	rec := events.NewFakeRecorder(10)
	d := &lifecycle.Detector{Client: c, API: c, Recorder: rec,
		Now:     func() time.Time { return time.Now().Add(time.Hour) }, // the snapshot is older than LostAfter
		Exports: &snapshotexport.GoneNodeExports{Client: c, Secrets: c, Recorder: rec}}
	if err := d.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(ts), &thinv1.ThinSnapshot{}); !apierrors.IsNotFound(err) {
		got := &thinv1.ThinSnapshot{}
		_ = c.Get(ctx, client.ObjectKeyFromObject(ts), got)
		t.Errorf("ThinSnapshot deleted on a gone node still there (finalizers %v): %v", got.Finalizers, err)
	}
	if _, err := e.store.Manifest(ctx, ExportIDOf(ts)); !errors.Is(err, export.ErrNotFound) {
		t.Errorf("export of a snapshot deleted on a gone node: %v, want it deleted", err)
	}
	var seen []string
	for len(rec.Events) > 0 {
		seen = append(seen, <-rec.Events)
	}
	if !slices.ContainsFunc(seen, func(e string) bool { return strings.Contains(e, "ExportDeleted") }) {
		t.Errorf("no ExportDeleted Event; seen %q", seen)
	}
}

// TestRestoreAfterCrash: a restore's agent killed after it received the
// chain's parent leaves that parent as a snapshot named for the volume
// (the state is built by receiving it as Restorer does). If the ThinVolume
// is deleted before the agent returns, the returning agent deletes the
// parent with it; if it is not, the retry reuses the parent, the volume is
// Ready with the source's files, and the parent is gone too.
func TestRestoreAfterCrash(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, c := e.ctx, e.c
	src := e.startAgent("n1")
	vol, s1, s2 := e.exportedTwice(src)
	dst := newPool(t, "n2")
	// What the killed attempt received: the first link, as a parent.
	receivedParent := func(volumeID string) {
		t.Helper()
		var stream bytes.Buffer
		if _, err := e.store.Get(ctx, ExportIDOf(s1), &stream); err != nil {
			t.Fatal(err)
		}
		if _, err := dst.ReceiveSnapshot(ctx, s1.Name, snapshotexport.RestoreParentName(volumeID), &stream); err != nil {
			t.Fatal(err)
		}
	}
	snapshots := func() []string {
		t.Helper()
		snaps, err := dst.ListSnapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range snaps {
			names = append(names, s.Name)
		}
		return names
	}

	// Deleted while its agent was away.
	abandoned := &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: backend.VolumeIDFor("abandoned"), Labels: map[string]string{wellknown.LabelNode: "n2"},
			Finalizers: []string{wellknown.FinalizerNodeCleanup}},
		Spec: thinv1.ThinVolumeSpec{Node: "n2", Name: "abandoned", RequiredBytes: 256 * backend.MiB, AccessType: thinv1.AccessMount,
			Source: &thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: ExportIDOf(s2),
				Export: &thinv1.SnapshotExport{SecretNamespace: secretNamespace, SecretName: "s3"}}},
	}
	receivedParent(abandoned.Name)
	if err := c.Create(ctx, abandoned); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, abandoned); err != nil {
		t.Fatal(err)
	}
	e.startAgentOn(dst)
	waitGone(t, ctx, c, abandoned) // released by the returning agent
	if left := snapshots(); len(left) != 0 {
		t.Errorf("snapshots left by a restore deleted after its agent was killed: %v", left)
	}

	// Retried by the returning agent.
	const resumed = "resumed"
	receivedParent(backend.VolumeIDFor(resumed))
	tv := e.restore(resumed, "n2", ExportIDOf(s2))
	if tv.Status.Phase != thinv1.PhaseReady {
		t.Fatalf("restore retried over a received parent: %s %s: %s", tv.Status.Phase, tv.Status.Code, tv.Status.Message)
	}
	// The parent was reused, not read again: only the last link was.
	e.wantRestoreRead(tv, ExportIDOf(s2))
	wantSameFiles(t, src, vol, dst, tv.Name)
	if left := snapshots(); len(left) != 0 {
		t.Errorf("snapshots left by a retried restore: %v", left)
	}
}
