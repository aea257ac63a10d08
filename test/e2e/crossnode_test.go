package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testCopiedToAnotherNode (TestMultiNode/CloneAndRestoreCopiedToAnotherNode):
// with WaitForFirstConsumer, a clone and a restore whose pod is pinned to
// the other node than their source's are copied there through the node
// agents' transfer servers (docs/kubernetes.md): the claims bind, the
// copies live on the other node and read the source's sha256, the
// ThinVolumes report the copy's progress (bytes done reaching the total,
// an Event "Transferred"), the snapshot the controller took for the clone
// is gone, and deleting the claims leaves nothing of them on either node.
func (m *multiNode) testCopiedToAnotherNode(t *testing.T) {
	const mib = 48
	m.createPVC(t, "far-src", classWFFC, "1Gi")
	sum := lastLine(m.runPodOn(t, m.node, "far-src-writer", fmt.Sprintf(
		"head -c %d /dev/urandom > /far-src/data && sync && sha256sum /far-src/data | cut -d' ' -f1", mib<<20), "far-src"))
	if len(sum) != 64 {
		t.Fatalf("source sha256 %q", sum)
	}
	m.createSnapshot(t, "far-snap", "far-src")

	m.createPVC(t, "far-clone", classWFFC, "1Gi", fromPVC("far-src"))
	m.createPVC(t, "far-restore", classWFFC, "1Gi", fromSnapshot("far-snap"))
	handles := map[string]string{}
	for _, claim := range []string{"far-clone", "far-restore"} {
		out := m.runPodOn(t, m.other, claim+"-reader", "sha256sum /"+claim+"/data | cut -d' ' -f1", claim)
		if got := lastLine(out); got != sum {
			t.Errorf("%s on %s reads sha256 %q, the source %q", claim, m.other, got, sum)
		}
		m.expectOn(t, claim, m.other, m.other)
		p := m.waitBound(t, claim, time.Minute)
		pv, err := m.kube.CoreV1().PersistentVolumes().Get(context.Background(), p.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		handles[claim] = pv.Spec.CSI.VolumeHandle
		tv, err := m.dyn.Resource(thinVolumeGVR).Get(context.Background(), pv.Spec.CSI.VolumeHandle, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		srcNode, _, _ := unstructured.NestedString(tv.Object, "spec", "source", "node")
		phase, _, _ := unstructured.NestedString(tv.Object, "status", "transfer", "phase")
		done, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesDone")
		total, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesTotal")
		t.Logf("%s: copied from %s, %s, %d of %d bytes", claim, srcNode, phase, done, total)
		if srcNode != m.node || phase != "Received" || total < mib<<20 || done < total {
			t.Errorf("%s: ThinVolume source node %q, transfer %q with %d of %d bytes; want a copy from %s Received with all of at least %d MiB",
				claim, srcNode, phase, done, total, m.node, mib)
		}
		m.waitVolumeEvent(t, pv.Spec.CSI.VolumeHandle, "Transferred", "verified")
	}
	// The snapshot taken for the clone went with the end of its copy.
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := m.dyn.Resource(thinSnapGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/transfer-for"})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("the snapshot taken for the clone's copy is still there")
	}
	if err := m.dyn.Resource(snapshotGVR).Namespace(m.ns).Delete(context.Background(), "far-snap", metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete snapshot: %v", err)
	}
	m.deletePVCs(t, "far-clone", "far-restore", "far-src")
	err = wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, id := range handles {
			if _, err := m.dyn.Resource(thinVolumeGVR).Get(ctx, id, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("the copies' ThinVolumes are still there after their claims were deleted")
	}
	for _, node := range m.nodes {
		list := m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir)
		for claim, id := range handles {
			if strings.Contains(list, id) {
				t.Errorf("%s: the copy of %s (%s) is still in the pool", node, claim, id)
			}
		}
	}
}

// waitVolumeEvent waits for an Event of reason on the ThinVolume id (a
// cluster-scoped object: its Events are in the default namespace) whose
// message holds want.
func (c *cluster) waitVolumeEvent(t *testing.T, id, reason, want string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := c.kube.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + id + ",reason=" + reason})
		if err != nil {
			return false, nil
		}
		for _, ev := range evs.Items {
			if strings.Contains(ev.Message, want) {
				t.Logf("%s %s: %s", id, reason, ev.Message)
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("no %s Event with %q on ThinVolume %s", reason, want, id)
	}
}

// cancelCopyInProgress waits (up to timeout) until the claim's volume is
// being copied (its ThinVolume reports bytes done, not all), deletes the
// pod and the claim, checks that the ThinVolume goes, and returns its ID.
func (c *cluster) cancelCopyInProgress(t *testing.T, claim, pod string, timeout time.Duration) string {
	t.Helper()
	ctx := context.Background()
	id := c.waitCopyInProgress(t, claim, timeout)
	c.deletePod(t, pod)
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(ctx, claim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitVolumeGone(t, id, claim, 2*time.Minute)
	return id
}

// waitVolumeGone waits (up to timeout) until the ThinVolume id of the
// deleted claim is gone: its storage deleted on its node.
func (c *cluster) waitVolumeGone(t *testing.T, id, claim string, timeout time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := c.dyn.Resource(thinVolumeGVR).Get(ctx, id, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("the ThinVolume %s of the deleted claim %s is still there: %s", id, claim, c.eventsFor(id))
	}
}

// waitCopyInProgress waits (up to timeout) until the claim's volume is
// being copied, its ThinVolume reporting some bytes done but not all, and
// returns the volume's ID.
func (c *cluster) waitCopyInProgress(t *testing.T, claim string, timeout time.Duration) string {
	t.Helper()
	var id string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := c.dyn.Resource(thinVolumeGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/pvc-name=" + claim})
		if err != nil || len(l.Items) != 1 {
			return false, nil
		}
		done, _, _ := unstructured.NestedInt64(l.Items[0].Object, "status", "transfer", "bytesDone")
		total, _, _ := unstructured.NestedInt64(l.Items[0].Object, "status", "transfer", "bytesTotal")
		if done > 0 {
			id = l.Items[0].GetName()
			t.Logf("copy %s in progress: %d of %d bytes", id, done, total)
			if done >= total {
				return false, fmt.Errorf("the copy was complete before it could be interrupted")
			}
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no copy in progress for %s: %v", claim, err)
	}
	return id
}

// testClaimDeletedWhileCopying (TestMultiNode/ClaimDeletedWhileCopying): a
// clone of 1 GiB consumed on the other node is being copied (its
// ThinVolume reports bytes done) when its pod and claim are deleted: the
// copy is cancelled and its ThinVolume deleted, and neither node holds
// the copy or the snapshot taken for it.
func (m *multiNode) testClaimDeletedWhileCopying(t *testing.T) {
	ctx := context.Background()
	m.createPVC(t, "big-src", classWFFC, "2Gi")
	m.runPodOn(t, m.node, "big-src-writer", "head -c 1073741824 /dev/urandom > /big-src/data && sync", "big-src")
	m.createPVC(t, "big-clone", classWFFC, "2Gi", fromPVC("big-src"))
	m.startPodOn(t, m.other, "big-clone-user", "true", "big-clone")
	id := m.cancelCopyInProgress(t, "big-clone", "big-clone-user", 2*time.Minute)
	m.deletePVCs(t, "big-src")
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := m.dyn.Resource(thinSnapGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/transfer-for"})
		if err != nil || len(l.Items) != 0 {
			return false, nil
		}
		tvs, err := m.dyn.Resource(thinVolumeGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/pvc-name in (big-clone, big-src)"})
		return err == nil && len(tvs.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("ThinVolumes or the copy's snapshot left after the claims were deleted")
	}
	for _, node := range m.nodes {
		if list := m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir); strings.Contains(list, id) {
			t.Errorf("%s: the cancelled copy %s is still in the pool", node, id)
		}
	}
}
