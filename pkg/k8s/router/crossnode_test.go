package router

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

func newIssuer(t *testing.T) *transfer.Issuer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return transfer.NewIssuer(key)
}

func transferNode(name, addr string) *thinv1.ThinNode {
	tn := thinNode(name, 50*backend.GiB, true, 0)
	tn.Status.TransferAddress = addr
	return tn
}

func lvmNode(name, addr string) *thinv1.ThinNode {
	tn := transferNode(name, addr)
	tn.Status.Backend = "lvmthin"
	return tn
}

func readySnapshot(id, node, vol string) *thinv1.ThinSnapshot {
	return &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{wellknown.LabelNode: node}},
		Spec:       thinv1.ThinSnapshotSpec{Node: node, SourceVolumeID: vol},
		Status:     thinv1.ThinSnapshotStatus{Phase: thinv1.PhaseReady, ReadyToUse: true, SizeBytes: backend.GiB},
	}
}

// TestCreateVolumeOnAnotherNode: a clone or restore placed on another
// node than its source's becomes a copy when transfers can carry it
// (the ThinVolume names the source's node and the snapshot to stream),
// and is FailedPrecondition with the reason and the fix otherwise; on
// the source's own node it stays a plain thin snapshot.
func TestCreateVolumeOnAnotherNode(t *testing.T) {
	gib := backend.GiB
	clone := backend.Source{Kind: backend.SourceVolume, ID: volB}
	restore := backend.Source{Kind: backend.SourceSnapshot, ID: snapA}
	notReady := readySnapshot(snapA, "n2", volB)
	notReady.Status.ReadyToUse = false
	tests := []struct {
		name      string
		transfers bool
		objs      []client.Object
		req       backend.VolumeRequest
		wantCode  codes.Code
		wantMsg   string
		wantSrc   *thinv1.VolumeSource
	}{{
		name: "clone, transfers off", objs: []client.Object{readyVolume(volB, "n2", gib), transferNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: clone},
		wantCode: codes.FailedPrecondition, wantMsg: "cross-node copies are off",
	}, {
		name: "clone, source node serves no transfers", transfers: true,
		objs:     []client.Object{readyVolume(volB, "n2", gib), transferNode("n1", "a:1"), thinNode("n2", gib, true, 0)},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: clone},
		wantCode: codes.FailedPrecondition, wantMsg: "agent of node n2 serves no transfers",
	}, {
		name: "clone, target node has no ThinNode", transfers: true,
		objs:     []client.Object{readyVolume(volB, "n2", gib), transferNode("n2", "b:1")},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: clone},
		wantCode: codes.FailedPrecondition, wantMsg: "volumeBindingMode: Immediate",
	}, {
		name: "clone across pool kinds", transfers: true,
		objs:     []client.Object{readyVolume(volB, "n2", gib), lvmNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: clone},
		wantCode: codes.FailedPrecondition, wantMsg: "node n2 has a btrfs pool and node n1 a lvmthin pool",
	}, {
		name: "clone becomes a copy", transfers: true,
		objs:    []client.Object{readyVolume(volB, "n2", gib), transferNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:     backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: clone},
		wantSrc: &thinv1.VolumeSource{Kind: thinv1.VolumeSourceVolume, ID: volB, Node: "n2", SnapshotID: CopySnapshotID(volA)},
	}, {
		name: "restore becomes a copy of the snapshot itself", transfers: true,
		objs:    []client.Object{readySnapshot(snapA, "n2", volB), transferNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:     backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: restore},
		wantSrc: &thinv1.VolumeSource{Kind: thinv1.VolumeSourceSnapshot, ID: snapA, Node: "n2", SnapshotID: snapA},
	}, {
		name: "restore of a snapshot not ready", transfers: true,
		objs:     []client.Object{notReady, transferNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:      backend.VolumeRequest{ID: volA, Node: "n1", RequiredBytes: gib, Source: restore},
		wantCode: codes.FailedPrecondition, wantMsg: "not ready to use",
	}, {
		name: "clone on its source's node stays a thin snapshot", transfers: true,
		objs:    []client.Object{readyVolume(volB, "n2", gib), transferNode("n1", "a:1"), transferNode("n2", "b:1")},
		req:     backend.VolumeRequest{ID: volA, Node: "n2", RequiredBytes: gib, Source: clone},
		wantSrc: &thinv1.VolumeSource{Kind: thinv1.VolumeSourceVolume, ID: volB},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.objs...)
			if tc.transfers {
				issuer := newIssuer(t)
				h.r.cfg.Transfers = func() *transfer.Issuer { return issuer }
			}
			h.onVol = ready(gib)
			ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
			defer cancel()
			v, err := h.r.CreateVolume(ctx, tc.req)
			if tc.wantCode != codes.OK {
				if err == nil {
					t.Fatalf("got volume %+v, want %v", v, tc.wantCode)
				}
				if got := rpcerr.Code(err); got != tc.wantCode || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %v (%v), want %v with %q", err, got, tc.wantCode, tc.wantMsg)
				}
				if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, &thinv1.ThinVolume{}); !apierrors.IsNotFound(err) {
					t.Errorf("a ThinVolume was made (err %v)", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.Node != tc.req.Node {
				t.Errorf("volume on %s, want %s", v.Node, tc.req.Node)
			}
			tv := &thinv1.ThinVolume{}
			if err := h.c.Get(h.ctx, client.ObjectKey{Name: volA}, tv); err != nil {
				t.Fatal(err)
			}
			if *tv.Spec.Source != *tc.wantSrc {
				t.Errorf("source %+v, want %+v", *tv.Spec.Source, *tc.wantSrc)
			}
			// A retry of the same request (the provisioner's) is the same volume.
			if _, err := h.r.CreateVolume(ctx, tc.req); err != nil {
				t.Errorf("retry: %v", err)
			}
		})
	}
}

// copyHarness runs Copies over the fake client.
type copyHarness struct {
	t      *testing.T
	c      client.Client
	copies *Copies
	rec    *events.FakeRecorder
	now    time.Time
}

func newCopyHarness(t *testing.T, issuer *transfer.Issuer, objs ...client.Object) *copyHarness {
	t.Helper()
	s := runtime.NewScheme()
	if err := thinv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).
		WithStatusSubresource(&thinv1.ThinVolume{}, &thinv1.ThinSnapshot{}, &thinv1.ThinNode{}).Build()
	h := &copyHarness{t: t, c: c, rec: events.NewFakeRecorder(100), now: now}
	h.copies = &Copies{Client: c, API: c, Recorder: h.rec, Now: func() time.Time { return h.now }}
	if issuer != nil {
		h.copies.Tokens = func() *transfer.Issuer { return issuer }
	}
	return h
}

func (h *copyHarness) reconcile(id string) ctrl.Result {
	h.t.Helper()
	res, err := h.copies.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKey{Name: id}})
	if err != nil {
		h.t.Fatalf("reconcile: %v", err)
	}
	return res
}

func (h *copyHarness) volume(id string) *thinv1.ThinVolume {
	tv := &thinv1.ThinVolume{}
	if err := h.c.Get(context.Background(), client.ObjectKey{Name: id}, tv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		h.t.Fatal(err)
	}
	return tv
}

// token returns the claims of the token granted to id ("" if none).
func (h *copyHarness) token(id string) (transfer.Claims, string) {
	h.t.Helper()
	tv := h.volume(id)
	tok := tv.Annotations[wellknown.AnnotationTransferToken]
	if tok == "" {
		return transfer.Claims{}, ""
	}
	cl, err := transfer.ParseUnverified(tok)
	if err != nil {
		h.t.Fatalf("granted token: %v", err)
	}
	return cl, tv.Annotations[wellknown.AnnotationTransferSource]
}

func copyVolume(kind thinv1.VolumeSourceKind, srcID, snapID string) *thinv1.ThinVolume {
	tv := readyVolume(volA, "n1", backend.GiB)
	tv.Status = thinv1.ThinVolumeStatus{}
	tv.UID = "uid-a"
	tv.Spec.Source = &thinv1.VolumeSource{Kind: kind, ID: srcID, Node: "n2", SnapshotID: snapID}
	return tv
}

// TestCopiesGrantTokens: a copy gets a token for exactly its snapshot,
// source and target, with the source's address; it keeps an unspent one,
// gets a new one once the agent spent it or when it is about to expire,
// and none while the trust or the source's address is missing.
func TestCopiesGrantTokens(t *testing.T) {
	issuer := newIssuer(t)
	t.Run("granted, kept, renewed when spent or expiring", func(t *testing.T) {
		h := newCopyHarness(t, issuer, copyVolume(thinv1.VolumeSourceSnapshot, snapA, snapA), transferNode("n2", "10.0.0.2:9810"))
		h.reconcile(volA)
		cl, addr := h.token(volA)
		if cl.Snapshot != snapA || cl.Source != "n2" || cl.Target != "n1" || cl.Transfer != volA || addr != "10.0.0.2:9810" {
			t.Fatalf("token %+v at %q, want snapshot %s from n2 to n1 at 10.0.0.2:9810", cl, addr, snapA)
		}
		if got := cl.ExpiresAt().Sub(time.Unix(cl.IssuedAt, 0)); got != TokenTTL {
			t.Errorf("token lives %s, want %s", got, TokenTTL)
		}
		h.reconcile(volA)
		if again, _ := h.token(volA); again.ID != cl.ID {
			t.Errorf("an unspent token was replaced")
		}
		tv := h.volume(volA)
		tv.Status.Phase = thinv1.PhasePending
		tv.Status.Transfer = &thinv1.TransferStatus{Phase: thinv1.TransferAwaitingToken, SpentTokenID: cl.ID, Attempts: 1}
		if err := h.c.Status().Update(context.Background(), tv); err != nil {
			t.Fatal(err)
		}
		h.reconcile(volA)
		fresh, _ := h.token(volA)
		if fresh.ID == "" || fresh.ID == cl.ID {
			t.Fatalf("spent token %s not replaced (now %s)", cl.ID, fresh.ID)
		}
		h.now = h.now.Add(TokenTTL - time.Minute)
		h.reconcile(volA)
		if renewed, _ := h.token(volA); renewed.ID == fresh.ID {
			t.Errorf("a token a minute from its expiry was not renewed")
		}
	})
	t.Run("no trust yet", func(t *testing.T) {
		h := newCopyHarness(t, nil, copyVolume(thinv1.VolumeSourceSnapshot, snapA, snapA), transferNode("n2", "10.0.0.2:9810"))
		if res := h.reconcile(volA); res.RequeueAfter == 0 {
			t.Error("no requeue while the trust is missing")
		}
		if _, addr := h.token(volA); addr != "" {
			t.Error("granted without a trust")
		}
	})
	t.Run("source publishes no address", func(t *testing.T) {
		h := newCopyHarness(t, issuer, copyVolume(thinv1.VolumeSourceSnapshot, snapA, snapA), thinNode("n2", backend.GiB, true, 0))
		if res := h.reconcile(volA); res.RequeueAfter == 0 {
			t.Error("no requeue while the source's address is missing")
		}
		if cl, _ := h.token(volA); cl.ID != "" {
			t.Error("granted without the source's address")
		}
	})
}

// TestCopiesCloneSnapshot: a clone's copy takes a snapshot of its source
// on the source's node, owned by the copy, and is granted a token only
// once it is ready; a failed snapshot fails the copy; the snapshot goes
// once the copy is Ready, Failed, deleted or gone.
func TestCopiesCloneSnapshot(t *testing.T) {
	issuer := newIssuer(t)
	sid := CopySnapshotID(volA)
	setup := func(t *testing.T) *copyHarness {
		h := newCopyHarness(t, issuer, copyVolume(thinv1.VolumeSourceVolume, volB, sid), readyVolume(volB, "n2", backend.GiB), transferNode("n2", "b:1"))
		h.reconcile(volA)
		ts := &thinv1.ThinSnapshot{}
		if err := h.c.Get(context.Background(), client.ObjectKey{Name: sid}, ts); err != nil {
			t.Fatalf("no snapshot taken for the copy: %v", err)
		}
		if ts.Spec.Node != "n2" || ts.Spec.SourceVolumeID != volB || ts.Labels[wellknown.LabelTransferFor] != volA || ts.Labels[wellknown.LabelNode] != "n2" ||
			len(ts.OwnerReferences) != 1 || ts.OwnerReferences[0].UID != "uid-a" || ts.OwnerReferences[0].Kind != "ThinVolume" {
			t.Errorf("snapshot for the copy: %+v", ts)
		}
		// The source's agent deletes the snapshot's storage before the
		// object goes: without its finalizer the garbage collector would
		// remove the object and leave the snapshot on the source node.
		if !controllerutil.ContainsFinalizer(ts, wellknown.FinalizerNodeCleanup) {
			t.Errorf("snapshot for the copy: finalizers %v, want %s", ts.Finalizers, wellknown.FinalizerNodeCleanup)
		}
		if cl, _ := h.token(volA); cl.ID != "" {
			t.Error("token granted before the snapshot is ready")
		}
		return h
	}
	snapshotGone := func(t *testing.T, h *copyHarness) {
		t.Helper()
		if !deleted(context.Background(), h.c, sid, &thinv1.ThinSnapshot{}) {
			t.Errorf("snapshot of the copy not deleted")
		}
	}
	setPhase := func(t *testing.T, h *copyHarness, phase thinv1.Phase, code string) {
		ts := &thinv1.ThinSnapshot{}
		if err := h.c.Get(context.Background(), client.ObjectKey{Name: sid}, ts); err != nil {
			t.Fatal(err)
		}
		ts.Status = thinv1.ThinSnapshotStatus{Phase: phase, ReadyToUse: phase == thinv1.PhaseReady, OperationStatus: thinv1.OperationStatus{Code: code, Message: "pool full"}}
		if err := h.c.Status().Update(context.Background(), ts); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("ready snapshot, then a Ready copy", func(t *testing.T) {
		h := setup(t)
		setPhase(t, h, thinv1.PhaseReady, "OK")
		h.reconcile(volA)
		if cl, _ := h.token(volA); cl.Snapshot != sid {
			t.Fatalf("token for %q, want the copy's snapshot %s", cl.Snapshot, sid)
		}
		tv := h.volume(volA)
		tv.Status.Phase = thinv1.PhaseReady
		if err := h.c.Status().Update(context.Background(), tv); err != nil {
			t.Fatal(err)
		}
		h.reconcile(volA)
		snapshotGone(t, h)
	})
	t.Run("failed snapshot fails the copy", func(t *testing.T) {
		h := setup(t)
		setPhase(t, h, thinv1.PhaseFailed, codes.ResourceExhausted.String())
		h.reconcile(volA)
		tv := h.volume(volA)
		if tv.Status.Phase != thinv1.PhaseFailed || tv.Status.Code != codes.ResourceExhausted.String() || !strings.Contains(tv.Status.Message, "pool full") {
			t.Errorf("copy status %+v, want Failed with the snapshot's code and message", tv.Status)
		}
		h.reconcile(volA)
		snapshotGone(t, h)
	})
	t.Run("copy gone", func(t *testing.T) {
		h := setup(t)
		if err := h.c.Delete(context.Background(), h.volume(volA)); err != nil {
			t.Fatal(err)
		}
		h.reconcile(volA)
		snapshotGone(t, h)
	})
}

// TestCopiesCancelWhenClaimGone: a copy whose claim was deleted, is being
// deleted or was replaced is deleted (its agent then cancels the
// receive); one whose claim is there goes on.
func TestCopiesCancelWhenClaimGone(t *testing.T) {
	issuer := newIssuer(t)
	claim := func(uid string, deleting bool) *corev1.PersistentVolumeClaim {
		pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "data", UID: k8stypes.UID(uid)}}
		if deleting {
			pvc.Finalizers = []string{"kubernetes.io/pvc-protection"}
			pvc.DeletionTimestamp = &metav1.Time{Time: now}
		}
		return pvc
	}
	for _, tc := range []struct {
		name  string
		pvc   *corev1.PersistentVolumeClaim
		alive bool
	}{
		{"claim there", claim("1234", false), true},
		{"claim deleted", nil, false},
		{"claim being deleted", claim("1234", true), false},
		{"claim replaced", claim("9999", false), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv := copyVolume(thinv1.VolumeSourceSnapshot, snapA, snapA)
			tv.Spec.Name = "pvc-1234"
			tv.Labels[wellknown.LabelPVCNamespace], tv.Labels[wellknown.LabelPVCName] = "ns", "data"
			objs := []client.Object{tv, transferNode("n2", "b:1")}
			if tc.pvc != nil {
				objs = append(objs, tc.pvc)
			}
			h := newCopyHarness(t, issuer, objs...)
			h.reconcile(volA)
			if got := h.volume(volA) != nil; got != tc.alive {
				t.Errorf("copy exists: %v, want %v", got, tc.alive)
			}
		})
	}
}
