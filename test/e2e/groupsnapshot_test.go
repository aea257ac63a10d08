package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

var (
	groupSnapshotGVR = schema.GroupVersionResource{Group: "groupsnapshot.storage.k8s.io", Version: "v1beta2", Resource: "volumegroupsnapshots"}
	thinGroupGVR     = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thingroupsnapshots"}
)

// genAtCreation is the transaction that created a btrfs subvolume
// (`btrfs subvolume show`: "Gen at creation").
var genAtCreation = regexp.MustCompile(`Gen at creation:\s+(\d+)`)

// testGroupSnapshot: a pod writes to two claims; a VolumeGroupSnapshot of
// both (selected by label, the chart's default VolumeGroupSnapshotClass)
// becomes readyToUse through the csi-snapshotter's GroupController calls;
// its members were made by the node in one btrfs transaction (one
// instant); each member restores to a claim with its source's data; and
// deleting the group removes every ThinGroupSnapshot and member.
func testGroupSnapshot(t *testing.T, c *cluster) {
	ctx := context.Background()
	claims := []string{"grp-data", "grp-wal"}
	for _, name := range claims {
		p := c.claim(name, classWFFC, "1Gi")
		p.Labels = map[string]string{"app": "grp-db"}
		if _, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create PVC %s: %v", name, err)
		}
	}
	c.runPod(t, "grp-writer", fmt.Sprintf("echo '%s data' > /grp-data/file && echo '%s wal' > /grp-wal/file && sync", payload, payload), claims...)
	handles := map[string]string{}
	for _, name := range claims {
		handles[name] = volumeHandle(t, c, c.waitBound(t, name, time.Minute))
	}

	vgs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot",
		"metadata": map[string]any{"name": "grp", "namespace": c.ns},
		"spec": map[string]any{"source": map[string]any{"selector": map[string]any{
			"matchLabels": map[string]any{"app": "grp-db"}}}},
	}}
	start := time.Now()
	if _, err := c.dyn.Resource(groupSnapshotGVR).Namespace(c.ns).Create(ctx, vgs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create VolumeGroupSnapshot: %v", err)
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(groupSnapshotGVR).Namespace(c.ns).Get(ctx, "grp", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		vgs = u
		ready, _, _ := unstructured.NestedBool(u.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		st, _, _ := unstructured.NestedMap(vgs.Object, "status")
		t.Fatalf("VolumeGroupSnapshot not readyToUse: %v; status %v %s", err, st, c.eventsFor("grp"))
	}
	t.Logf("group snapshot readyToUse in %s", time.Since(start).Round(time.Millisecond))

	// The node took the group: one ThinGroupSnapshot, Ready, of both
	// volumes, and a member ThinSnapshot for each.
	groups, err := c.dyn.Resource(thinGroupGVR).List(ctx, metav1.ListOptions{})
	if err != nil || len(groups.Items) != 1 {
		t.Fatalf("ThinGroupSnapshots: %v, %v; want 1", groups, err)
	}
	group := groups.Items[0]
	if p, _, _ := unstructured.NestedString(group.Object, "status", "phase"); p != "Ready" {
		t.Errorf("ThinGroupSnapshot %s phase %q", group.GetName(), p)
	}
	if one, _, _ := unstructured.NestedBool(group.Object, "status", "oneInstant"); !one {
		t.Errorf("ThinGroupSnapshot %s: status.oneInstant is not true on btrfs (one commit)", group.GetName())
	}
	members, _, _ := unstructured.NestedSlice(group.Object, "status", "members")
	if len(members) != len(claims) {
		t.Fatalf("ThinGroupSnapshot members %v, want %d", members, len(claims))
	}
	gens := map[string]bool{}
	for _, m := range members {
		id := m.(map[string]any)["snapshotID"].(string)
		ts, err := c.dyn.Resource(thinSnapGVR).Get(ctx, id, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("member ThinSnapshot %s: %v", id, err)
		}
		if g, _, _ := unstructured.NestedString(ts.Object, "spec", "groupID"); g != group.GetName() {
			t.Errorf("member ThinSnapshot %s groupID %q, want %s", id, g, group.GetName())
		}
		out := host(t, "btrfs", "subvolume", "show", filepath.Join(c.poolDir, "csi-thin", "snapshots", id))
		g := genAtCreation.FindStringSubmatch(out)
		if g == nil {
			t.Fatalf("no creation generation for member %s:\n%s", id, out)
		}
		gens[g[1]] = true
	}
	if len(gens) != 1 {
		t.Errorf("members were created in transactions %v: not one instant", gens)
	}

	// Each member restores with its own source's data. The snapshot-
	// controller names a member VolumeSnapshot after the group's UID and
	// the member's source volume handle.
	for _, name := range claims {
		member := fmt.Sprintf("snapshot-%x", sha256.Sum256([]byte(string(vgs.GetUID())+handles[name])))
		c.createPVC(t, name+"-restored", classWFFC, "1Gi", fromSnapshot(member))
	}
	out := c.runPod(t, "grp-reader", "cat /grp-data-restored/file /grp-wal-restored/file", "grp-data-restored", "grp-wal-restored")
	if want := payload + " data\n" + payload + " wal\n"; !strings.Contains(out, want) {
		t.Errorf("restored members read %q, want %q", out, want)
	}

	if err := c.dyn.Resource(groupSnapshotGVR).Namespace(c.ns).Delete(ctx, "grp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if c.countThin(t, thinGroupGVR) != 0 {
			return false, nil
		}
		l, err := c.dyn.Resource(thinSnapGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/group-snapshot"})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("after deleting the VolumeGroupSnapshot: %d ThinGroupSnapshots left (or members): %v", c.countThin(t, thinGroupGVR), err)
	}
	for _, m := range members {
		id := m.(map[string]any)["snapshotID"].(string)
		if strings.Contains(host(t, "btrfs", "subvolume", "list", c.poolDir), id) {
			t.Errorf("member subvolume %s left after the group was deleted", id)
		}
	}
}

// testGroupAcrossNodes: a VolumeGroupSnapshot of volumes on two nodes
// cannot be one instant, so the driver refuses it with FailedPrecondition
// naming each node's volumes; the error reaches the VolumeGroupSnapshot's
// status, no ThinGroupSnapshot is made, and the group deletes cleanly.
// It uses the claims testEveryNode made, one on each node.
func (m *multiNode) testGroupAcrossNodes(t *testing.T) {
	ctx := context.Background()
	for _, node := range m.nodes {
		patch := []byte(`{"metadata":{"labels":{"app":"spread"}}}`)
		if _, err := m.kube.CoreV1().PersistentVolumeClaims(m.ns).Patch(ctx, "on-"+node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("label PVC on-%s: %v", node, err)
		}
	}
	vgs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot",
		"metadata": map[string]any{"name": "spread", "namespace": m.ns},
		"spec": map[string]any{"source": map[string]any{"selector": map[string]any{
			"matchLabels": map[string]any{"app": "spread"}}}},
	}}
	if _, err := m.dyn.Resource(groupSnapshotGVR).Namespace(m.ns).Create(ctx, vgs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create VolumeGroupSnapshot: %v", err)
	}
	var msg string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := m.dyn.Resource(groupSnapshotGVR).Namespace(m.ns).Get(ctx, "spread", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		vgs = u
		msg, _, _ = unstructured.NestedString(u.Object, "status", "error", "message")
		return msg != "", nil
	})
	if err != nil {
		st, _, _ := unstructured.NestedMap(vgs.Object, "status")
		t.Fatalf("no error on the VolumeGroupSnapshot of volumes on two nodes: %v; status %v %s", err, st, m.eventsFor("spread"))
	}
	t.Logf("group across nodes: %s", msg)
	for _, want := range append([]string{"FailedPrecondition", "must be on one node"}, m.nodes...) {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if n := m.countThin(t, thinGroupGVR); n != 0 {
		t.Errorf("%d ThinGroupSnapshots made for a refused group", n)
	}
	if err := m.dyn.Resource(groupSnapshotGVR).Namespace(m.ns).Delete(ctx, "spread", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := m.dyn.Resource(groupSnapshotGVR).Namespace(m.ns).Get(ctx, "spread", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("the refused VolumeGroupSnapshot was not deleted: %v", err)
	}
}
