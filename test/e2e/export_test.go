package e2e

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/csi-thin/csi-thin/internal/s3test"
	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/export"
)

var contentGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}

var sha256Line = regexp.MustCompile(`\b[0-9a-f]{64}\b`)

// TestSnapshotExportS3: a VolumeSnapshot of the chart's export class
// (values-e2e.yaml: Secret csi-thin/s3-e2e, exports retained) is exported
// by the node agent to a real SeaweedFS on the node's IP; the source PVC,
// the VolumeSnapshot and with it the local snapshot are deleted; a
// pre-provisioned VolumeSnapshotContent naming the export restores a PVC
// whose data has the source's sha256. The node agent may get that Secret
// and no other.
func TestSnapshotExportS3(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	store := c.startExportStore(t, ctx)

	// The node agent may get this Secret (the chart's Role) and no other.
	agent := "system:serviceaccount:" + c.driver + ":csi-thin-node"
	for _, tc := range []struct {
		attrs authorizationv1.ResourceAttributes
		allow bool
	}{
		{authorizationv1.ResourceAttributes{Namespace: c.driver, Verb: "get", Resource: "secrets", Name: "s3-e2e"}, true},
		{authorizationv1.ResourceAttributes{Namespace: c.driver, Verb: "get", Resource: "secrets", Name: "other"}, false},
		{authorizationv1.ResourceAttributes{Namespace: c.driver, Verb: "list", Resource: "secrets"}, false},
		{authorizationv1.ResourceAttributes{Namespace: c.driver, Verb: "watch", Resource: "secrets", Name: "s3-e2e"}, false},
		{authorizationv1.ResourceAttributes{Namespace: c.driver, Verb: "update", Resource: "secrets", Name: "s3-e2e"}, false},
		{authorizationv1.ResourceAttributes{Namespace: c.ns, Verb: "get", Resource: "secrets", Name: "s3-e2e"}, false},
	} {
		attrs := tc.attrs
		review, err := c.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: agent, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + c.driver, "system:authenticated"}, ResourceAttributes: &attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed != tc.allow {
			t.Errorf("node agent %s %s %s/%s: allowed %v, want %v", attrs.Verb, attrs.Resource, attrs.Namespace, attrs.Name, review.Status.Allowed, tc.allow)
		}
	}

	c.exportAndRestore(t, ctx, store, exportCase{prefix: "exp", class: classWFFC, snapshotGone: func(t *testing.T, id string) {
		if leftovers := host(t, "find", c.poolDir, "-maxdepth", "3", "-name", id); strings.TrimSpace(leftovers) != "" {
			t.Errorf("local snapshot still in the pool: %s", leftovers)
		}
	}})
}

// exportCase says where exportAndRestore writes, exports and restores.
type exportCase struct {
	prefix          string // of the claims', snapshots' and pods' names
	class           string // StorageClass of the source and of the restore
	writeOn, readOn string // nodes of the writer's and the reader's pod ("": the scheduler's choice)
	// snapshotGone checks that the exported snapshot (its ID) has left
	// its node's pool.
	snapshotGone func(t *testing.T, id string)
}

// exportAndRestore writes 8 MiB to a new claim, exports its snapshot
// (class csi-thin-export), deletes the claim and the snapshot, and
// restores a claim from a pre-provisioned VolumeSnapshotContent naming
// the export, whose data must have the source's sha256; then it deletes
// what it made.
func (c *cluster) exportAndRestore(t *testing.T, ctx context.Context, store *export.Store, ec exportCase) {
	t.Helper()
	src, snap, restoreSnap, restored := ec.prefix+"-src", ec.prefix+"-snap", ec.prefix+"-restore-snap", ec.prefix+"-restored"
	c.createPVC(t, src, ec.class, "1Gi")
	out := c.runPodOn(t, ec.writeOn, ec.prefix+"-writer", "dd if=/dev/urandom of=/"+src+"/data bs=1M count=8 2>/dev/null && sync && sha256sum /"+src+"/data", src)
	want := sha256Line.FindString(out)
	if want == "" {
		t.Fatalf("writer printed no sha256: %q", out)
	}

	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": snap, "namespace": c.ns},
		"spec": map[string]any{"volumeSnapshotClassName": "csi-thin-export",
			"source": map[string]any{"persistentVolumeClaimName": src}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var snapshotID, exportID string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, snap, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		content, _, _ := unstructured.NestedString(u.Object, "status", "boundVolumeSnapshotContentName")
		if content == "" {
			return false, nil
		}
		vsc, err := c.dyn.Resource(contentGVR).Get(ctx, content, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		snapshotID, _, _ = unstructured.NestedString(vsc.Object, "status", "snapshotHandle")
		if snapshotID == "" {
			return false, nil
		}
		ts, err := c.dyn.Resource(thinSnapGVR).Get(ctx, snapshotID, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase, _, _ := unstructured.NestedString(ts.Object, "status", "export", "phase")
		exportID, _, _ = unstructured.NestedString(ts.Object, "status", "export", "id")
		return phase == "Exported", nil
	})
	if err != nil {
		t.Fatalf("snapshot %q not exported: %v %s", snapshotID, err, c.eventsFor(snapshotID))
	}
	t.Logf("exported %s as %s", snapshotID, exportID)
	// The export's Event reaches the VolumeSnapshot too.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(c.eventsFor(snap), "Normal Exported: exported as "+exportID), nil
	}); err != nil {
		t.Errorf("no Exported Event on the VolumeSnapshot %s: %q", snap, c.eventsFor(snap))
	}

	// The source goes: the claim, the VolumeSnapshot and with it the
	// node's snapshot (the class deletes its content; its export stays).
	if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, snap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, src, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.dyn.Resource(thinSnapGVR).Get(ctx, snapshotID, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("ThinSnapshot %s not deleted: %v", snapshotID, err)
	}
	ec.snapshotGone(t, snapshotID)
	if _, err := store.Manifest(ctx, exportID); err != nil {
		t.Fatalf("export %s gone with its snapshot: %v", exportID, err)
	}

	// Restore from a pre-provisioned content naming the export.
	handle := export.Handle{SecretNamespace: c.driver, SecretName: "s3-e2e", ExportID: exportID}.String()
	contentName := ec.prefix + "-restore-" + c.ns
	content := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": contentName},
		"spec": map[string]any{"driver": "csi-thin.io", "deletionPolicy": "Retain",
			"source":            map[string]any{"snapshotHandle": handle},
			"volumeSnapshotRef": map[string]any{"namespace": c.ns, "name": restoreSnap}},
	}}
	if _, err := c.dyn.Resource(contentGVR).Create(ctx, content, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.dyn.Resource(contentGVR).Delete(context.Background(), contentName, metav1.DeleteOptions{}) //nolint:errcheck
	preProvisioned := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": restoreSnap, "namespace": c.ns},
		"spec":     map[string]any{"source": map[string]any{"volumeSnapshotContentName": contentName}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, preProvisioned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, restoreSnap, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready, _, _ := unstructured.NestedBool(u.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		t.Fatalf("pre-provisioned VolumeSnapshot not ready: %v %s", err, c.eventsFor(restoreSnap))
	}
	c.createPVC(t, restored, ec.class, "1Gi", fromSnapshot(restoreSnap))
	out = c.runPodOn(t, ec.readOn, ec.prefix+"-reader", "sha256sum /"+restored+"/data", restored)
	if got := sha256Line.FindString(out); got != want {
		t.Errorf("restored data sha256 %q, want %s (output %q)", got, want, out)
	}

	// Leave nothing for the later tests: the restored claim's volume goes.
	bound := c.waitBound(t, restored, time.Minute)
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, restored, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, restoreSnap, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.kube.CoreV1().PersistentVolumes().Get(ctx, bound.Spec.VolumeName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("PV %s of the restored claim not deleted: %v", bound.Spec.VolumeName, err)
	}
}

// startExportStore starts a real SeaweedFS on the node's IP for the test's
// lifetime (inside the cluster's network namespace: every node reaches
// it) and makes the Secret csi-thin/s3-e2e of the chart's export class
// (values-e2e.yaml) name it; it returns a client of that bucket.
func (c *cluster) startExportStore(t *testing.T, ctx context.Context) *export.Store {
	t.Helper()
	weed, err := s3test.Binary()
	if err != nil {
		testenv.Missing(t, err.Error())
	}
	node, err := c.kube.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeIP := ""
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			nodeIP = a.Address
		}
	}
	dir, err := os.MkdirTemp("", "s3e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s3, err := s3test.StartIn(ctx, weed, dir, "/var/run/netns/"+envOr("E2E_NETNS", "k8s"), nodeIP)
	if err != nil {
		t.Fatalf("SeaweedFS on %s: %v", nodeIP, err)
	}
	t.Cleanup(s3.Stop)
	data := map[string][]byte{
		export.SecretEndpoint: []byte("http://" + s3.Endpoint), export.SecretBucket: []byte(s3.Bucket),
		export.SecretAccessKeyID: []byte(s3.AccessKey), export.SecretSecretAccessKey: []byte(s3.SecretKey),
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: c.driver, Name: "s3-e2e"}, Data: data}
	if _, err := c.kube.CoreV1().Secrets(c.driver).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kube.CoreV1().Secrets(c.driver).Delete(context.Background(), "s3-e2e", metav1.DeleteOptions{}) //nolint:errcheck
	})
	cfg, err := export.ConfigFromSecret(data)
	if err != nil {
		t.Fatal(err)
	}
	store, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return store
}
