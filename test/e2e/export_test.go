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
	defer os.RemoveAll(dir)
	s3, err := s3test.StartIn(ctx, weed, dir, "/var/run/netns/"+envOr("E2E_NETNS", "k8s"), nodeIP)
	if err != nil {
		t.Fatalf("SeaweedFS on %s: %v", nodeIP, err)
	}
	defer s3.Stop()
	data := map[string][]byte{
		export.SecretEndpoint: []byte("http://" + s3.Endpoint), export.SecretBucket: []byte(s3.Bucket),
		export.SecretAccessKeyID: []byte(s3.AccessKey), export.SecretSecretAccessKey: []byte(s3.SecretKey),
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: c.driver, Name: "s3-e2e"}, Data: data}
	if _, err := c.kube.CoreV1().Secrets(c.driver).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.kube.CoreV1().Secrets(c.driver).Delete(context.Background(), "s3-e2e", metav1.DeleteOptions{}) //nolint:errcheck
	cfg, err := export.ConfigFromSecret(data)
	if err != nil {
		t.Fatal(err)
	}
	store, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}

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

	c.createPVC(t, "exp-src", classWFFC, "1Gi")
	out := c.runPod(t, "exp-writer", "dd if=/dev/urandom of=/exp-src/data bs=1M count=8 2>/dev/null && sync && sha256sum /exp-src/data", "exp-src")
	want := sha256Line.FindString(out)
	if want == "" {
		t.Fatalf("writer printed no sha256: %q", out)
	}

	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "exp-snap", "namespace": c.ns},
		"spec": map[string]any{"volumeSnapshotClassName": "csi-thin-export",
			"source": map[string]any{"persistentVolumeClaimName": "exp-src"}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var snapshotID, exportID string
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, "exp-snap", metav1.GetOptions{})
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
		return strings.Contains(c.eventsFor("exp-snap"), "Normal Exported: exported as "+exportID), nil
	}); err != nil {
		t.Errorf("no Exported Event on the VolumeSnapshot exp-snap: %q", c.eventsFor("exp-snap"))
	}

	// The source goes: the claim, the VolumeSnapshot and with it the
	// node's snapshot (the class deletes its content; its export stays).
	if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, "exp-snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, "exp-src", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.dyn.Resource(thinSnapGVR).Get(ctx, snapshotID, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("ThinSnapshot %s not deleted: %v", snapshotID, err)
	}
	if leftovers := host(t, "find", c.poolDir, "-maxdepth", "3", "-name", snapshotID); strings.TrimSpace(leftovers) != "" {
		t.Errorf("local snapshot still in the pool: %s", leftovers)
	}
	if _, err := store.Manifest(ctx, exportID); err != nil {
		t.Fatalf("export %s gone with its snapshot: %v", exportID, err)
	}

	// Restore from a pre-provisioned content naming the export.
	handle := export.Handle{SecretNamespace: c.driver, SecretName: "s3-e2e", ExportID: exportID}.String()
	contentName := "exp-restore-" + c.ns
	content := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": contentName},
		"spec": map[string]any{"driver": "csi-thin.io", "deletionPolicy": "Retain",
			"source":            map[string]any{"snapshotHandle": handle},
			"volumeSnapshotRef": map[string]any{"namespace": c.ns, "name": "exp-restore-snap"}},
	}}
	if _, err := c.dyn.Resource(contentGVR).Create(ctx, content, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.dyn.Resource(contentGVR).Delete(context.Background(), contentName, metav1.DeleteOptions{}) //nolint:errcheck
	restoreSnap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "exp-restore-snap", "namespace": c.ns},
		"spec":     map[string]any{"source": map[string]any{"volumeSnapshotContentName": contentName}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, restoreSnap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, "exp-restore-snap", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready, _, _ := unstructured.NestedBool(u.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		t.Fatalf("pre-provisioned VolumeSnapshot not ready: %v %s", err, c.eventsFor("exp-restore-snap"))
	}
	c.createPVC(t, "exp-restored", classWFFC, "1Gi", fromSnapshot("exp-restore-snap"))
	out = c.runPod(t, "exp-reader", "sha256sum /exp-restored/data", "exp-restored")
	if got := sha256Line.FindString(out); got != want {
		t.Errorf("restored data sha256 %q, want %s (output %q)", got, want, out)
	}

	// Leave nothing for the later tests: the restored claim's volume goes.
	restored := c.waitBound(t, "exp-restored", time.Minute)
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, "exp-restored", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, "exp-restore-snap", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.kube.CoreV1().PersistentVolumes().Get(ctx, restored.Spec.VolumeName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("PV %s of the restored claim not deleted: %v", restored.Spec.VolumeName, err)
	}
}
