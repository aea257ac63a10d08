package e2e

import (
	"context"
	"fmt"
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
// by the node agent to a real SeaweedFS on the node's IP, and a second
// snapshot incrementally against it; the source PVC, the VolumeSnapshots
// and with them the local snapshots are deleted; a pre-provisioned
// VolumeSnapshotContent naming the second export restores a PVC whose
// data has the source's sha256 (exportAndRestore). The node agent and
// the controller may get that Secret and no other.
func TestSnapshotExportS3(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	store := c.startExportStore(t, ctx)

	// The node agent may get this Secret (the chart's Role) and no other;
	// so may the controller (for the exports of a node gone from the
	// cluster).
	for _, sa := range []string{"csi-thin-node", "csi-thin-controller"} {
		c.onlyGetsExportSecret(t, ctx, sa)
	}

	c.exportAndRestore(t, ctx, store, exportCase{prefix: "exp", class: classWFFC, snapshotGone: func(t *testing.T, id string) {
		if leftovers := host(t, "find", c.poolDir, "-maxdepth", "3", "-name", id); strings.TrimSpace(leftovers) != "" {
			t.Errorf("local snapshot still in the pool: %s", leftovers)
		}
	}})
}

// onlyGetsExportSecret: service account sa of the driver's namespace may
// get the export class's Secret csi-thin/s3-e2e and nothing else of
// Secrets.
func (c *cluster) onlyGetsExportSecret(t *testing.T, ctx context.Context, sa string) {
	t.Helper()
	user := "system:serviceaccount:" + c.driver + ":" + sa
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
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + c.driver, "system:authenticated"}, ResourceAttributes: &attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed != tc.allow {
			t.Errorf("%s %s %s %s/%s: allowed %v, want %v", sa, attrs.Verb, attrs.Resource, attrs.Namespace, attrs.Name, review.Status.Allowed, tc.allow)
		}
	}
}

// exportCase says where exportAndRestore writes, exports and restores.
type exportCase struct {
	prefix          string // of the claims', snapshots' and pods' names
	class           string // StorageClass of the source and of the restore
	writeOn, readOn string // nodes of the writer's and the reader's pod ("": the scheduler's choice)
	// snapshotGone checks that an exported snapshot (its ID) has left its
	// node's pool.
	snapshotGone func(t *testing.T, id string)
}

// Sizes of exportAndRestore's writes: the first export's data, and what
// the second, incremental, export adds.
const (
	exportFullMiB        = 8
	exportIncrementalMiB = 2
)

// exportAndRestore writes 8 MiB to a new claim and exports its snapshot
// (class csi-thin-export); it writes 2 MiB more and exports a second
// snapshot, which must be incremental against the first (its parent, a
// stream of the 2 MiB and not of the whole data). It deletes the claim and
// both snapshots, and restores a claim from a pre-provisioned
// VolumeSnapshotContent naming the second export (the chain: full, then
// incremental), whose data must have the source's sha256; then it deletes
// what it made.
func (c *cluster) exportAndRestore(t *testing.T, ctx context.Context, store *export.Store, ec exportCase) {
	t.Helper()
	src, full, incr := ec.prefix+"-src", ec.prefix+"-snap", ec.prefix+"-snap2"
	c.createPVC(t, src, ec.class, "1Gi")
	c.runPodOn(t, ec.writeOn, ec.prefix+"-writer", fmt.Sprintf("dd if=/dev/urandom of=/%s/data bs=1M count=%d 2>/dev/null && sync",
		src, exportFullMiB), src)
	fullID, fullExport := c.exportSnapshot(t, ctx, full, src)
	out := c.runPodOn(t, ec.writeOn, ec.prefix+"-writer2", fmt.Sprintf("dd if=/dev/urandom of=/%s/data2 bs=1M count=%d 2>/dev/null && sync && cat /%[1]s/data /%[1]s/data2 | sha256sum",
		src, exportIncrementalMiB), src)
	want := sha256Line.FindString(out)
	if want == "" {
		t.Fatalf("writer printed no sha256: %q", out)
	}
	incrID, incrExport := c.exportSnapshot(t, ctx, incr, src)
	t.Logf("full export %s: %d bytes; incremental %s: %d bytes", fullExport.id, fullExport.bytesDone, incrExport.id, incrExport.bytesDone)
	if incrExport.parent != fullExport.id {
		t.Errorf("export %s is incremental against %q; want the volume's previous export %s", incrExport.id, incrExport.parent, fullExport.id)
	}
	if incrExport.bytesDone < exportIncrementalMiB<<20 || incrExport.bytesDone >= fullExport.bytesDone/2 {
		t.Errorf("the incremental export sent %d bytes (the full one %d); want the %d MiB written since, not the whole data",
			incrExport.bytesDone, fullExport.bytesDone, exportIncrementalMiB)
	}

	// The source goes: the claim, the VolumeSnapshots and with them the
	// node's snapshots (the class deletes its contents; the exports stay).
	for _, snap := range []string{full, incr} {
		if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, snap, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, src, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{fullID, incrID} {
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := c.dyn.Resource(thinSnapGVR).Get(ctx, id, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Fatalf("ThinSnapshot %s not deleted: %v", id, err)
		}
		ec.snapshotGone(t, id)
	}
	for _, id := range []string{fullExport.id, incrExport.id} {
		if _, err := store.Manifest(ctx, id); err != nil {
			t.Fatalf("export %s gone with its snapshot: %v", id, err)
		}
	}

	restored := ec.prefix + "-restored"
	c.restoreExport(t, ctx, restored, ec.class, incrExport.id)
	out = c.runPodOn(t, ec.readOn, ec.prefix+"-reader", fmt.Sprintf("cat /%[1]s/data /%[1]s/data2 | sha256sum", restored), restored)
	if got := sha256Line.FindString(out); got != want {
		t.Errorf("restored data sha256 %q, want %s (output %q)", got, want, out)
	}
	// The restore reports what it read: both exports' streams, whole.
	id := volumeHandle(t, c, c.waitBound(t, restored, time.Minute))
	tv, err := c.dyn.Resource(thinVolumeGVR).Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	phase, _, _ := unstructured.NestedString(tv.Object, "status", "transfer", "phase")
	done, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesDone")
	total, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesTotal")
	chain := fullExport.bytesDone + incrExport.bytesDone
	if phase != "Received" || done != chain || total != chain {
		t.Errorf("restored volume %s: transfer %q, %d of %d bytes; want Received, the chain's %d bytes", id, phase, done, total, chain)
	}
	// And as Events on its ThinVolume.
	c.waitVolumeEvent(t, id, "RestoreStarted", "restoring export "+incrExport.id)
	c.waitVolumeEvent(t, id, "Restored", fmt.Sprintf("restored export %s: %d of %d bytes read", incrExport.id, chain, chain))
	c.deleteRestored(t, ctx, restored)
}

// exportStatus is a ThinSnapshot's status.export, once exported.
type exportStatus struct {
	id, parent string
	bytesDone  int64
}

// exportSnapshot takes VolumeSnapshot snap of claim src with the export
// class and waits for its export, and for the Exported Event on the
// VolumeSnapshot; it returns the snapshot's ID and its export.
func (c *cluster) exportSnapshot(t *testing.T, ctx context.Context, snap, src string) (string, exportStatus) {
	t.Helper()
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": snap, "namespace": c.ns},
		"spec": map[string]any{"volumeSnapshotClassName": "csi-thin-export",
			"source": map[string]any{"persistentVolumeClaimName": src}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return c.waitExported(t, ctx, snap)
}

// waitExported waits for VolumeSnapshot snap's ThinSnapshot to be
// exported, and for the Exported Event on the VolumeSnapshot.
func (c *cluster) waitExported(t *testing.T, ctx context.Context, snap string) (string, exportStatus) {
	t.Helper()
	var snapshotID string
	var st exportStatus
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
		st.id, _, _ = unstructured.NestedString(ts.Object, "status", "export", "id")
		st.parent, _, _ = unstructured.NestedString(ts.Object, "status", "export", "parent")
		st.bytesDone, _, _ = unstructured.NestedInt64(ts.Object, "status", "export", "bytesDone")
		return phase == "Exported", nil
	})
	if err != nil {
		t.Fatalf("snapshot %q not exported: %v %s", snapshotID, err, c.eventsFor(snapshotID))
	}
	t.Logf("exported %s as %s", snapshotID, st.id)
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(c.eventsFor(snap), "Normal Exported: exported as "+st.id), nil
	}); err != nil {
		t.Errorf("no Exported Event on the VolumeSnapshot %s: %q", snap, c.eventsFor(snap))
	}
	return snapshotID, st
}

// restoreExport makes claim name (StorageClass class) from export
// exportID: a pre-provisioned VolumeSnapshotContent naming the export
// (deleted when the test ends), its VolumeSnapshot name-snap, and the
// claim with that as its dataSource.
func (c *cluster) restoreExport(t *testing.T, ctx context.Context, name, class, exportID string) {
	t.Helper()
	restoreSnap := name + "-snap"
	handle := export.Handle{SecretNamespace: c.driver, SecretName: "s3-e2e", ExportID: exportID}.String()
	contentName := name + "-" + c.ns
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
	t.Cleanup(func() {
		c.dyn.Resource(contentGVR).Delete(context.Background(), contentName, metav1.DeleteOptions{}) //nolint:errcheck
	})
	preProvisioned := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": restoreSnap, "namespace": c.ns},
		"spec":     map[string]any{"source": map[string]any{"volumeSnapshotContentName": contentName}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(ctx, preProvisioned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
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
	c.createPVC(t, name, class, "1Gi", fromSnapshot(restoreSnap))
}

// deleteRestored deletes restoreExport's claim and VolumeSnapshot, and
// waits for the claim's PV to be gone.
func (c *cluster) deleteRestored(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	bound := c.waitBound(t, name, time.Minute)
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, name+"-snap", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.kube.CoreV1().PersistentVolumes().Get(ctx, bound.Spec.VolumeName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("PV %s of the restored claim %s not deleted: %v", bound.Spec.VolumeName, name, err)
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
