package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestMultiNode proves placement across the nodes of a multi-node cluster
// (test/e2e/run.sh starts E2E_NODES nodes, each with its own btrfs pool):
// pods run and write volumes on every node, allowedTopologies hold, a
// node without room gets no new volumes while pods land on another, a
// clone or restore stays with its source when its pod may run there, and
// one consumed on another node is copied there (crossnode_test.go); then
// the other node's life: drained, lost (kubelet and agent killed) and
// back, deleted from the cluster and registered again (nodeloss_test.go,
// nodedelete_test.go). Skips on a single-node cluster.
func TestMultiNode(t *testing.T) {
	c := newCluster(t)
	nodes := c.nodeNames(t)
	if len(nodes) < 2 {
		t.Skipf("single-node cluster (%v): run.sh with E2E_NODES>=2", nodes)
	}
	other := nodes[0]
	if other == c.node {
		other = nodes[1]
	}
	t.Logf("namespace %s, nodes %v; test node %s, other node %s", c.ns, nodes, c.node, other)
	m := &multiNode{cluster: c, nodes: nodes, other: other, parent: t}
	c.startExportStore(t, context.Background()) // testNodeDrained exports, testNodeDeleted restores
	runSteps(t, []step{
		{"PodsWriteVolumesOnEveryNode", m.testEveryNode},
		{"AllowedTopologiesRespected", m.testAllowedTopologies},
		{"FullNodeGetsNoNewVolumes", m.testFullNode},
		{"CloneAndRestoreStayWithTheirSource", m.testSourcePlacement},
		{"CloneAndRestoreCopiedToAnotherNode", m.testCopiedToAnotherNode},
		{"ClaimDeletedWhileCopying", m.testClaimDeletedWhileCopying},
		{"GroupSnapshotAcrossNodesRefused", m.testGroupAcrossNodes},
		{"DrainedNodeKeepsItsVolumes", m.testNodeDrained},
		{"LostNodeReleasesItsClaims", m.testNodeLost},
		{"DeletedNodeReleasesAndReportsItsStorage", m.testNodeDeleted},
		{"NothingLeftOnAnyNode", m.testNothingLeft},
	})
}

type multiNode struct {
	*cluster
	nodes  []string   // every node, sorted
	other  string     // a node that is not c.node
	parent *testing.T // TestMultiNode's, for cleanups that outlive a step

	lostAfterShort bool   // shortLostAfter ran
	localExport    string // export of the drained node's snapshot (testNodeDrained)
}

// nodeNames lists the cluster's nodes, sorted.
func (c *cluster) nodeNames(t *testing.T) []string {
	t.Helper()
	l, err := c.kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	var names []string
	for _, n := range l.Items {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	return names
}

// onNode runs a command in the node's mount namespace: the host's for the
// test node, the one test/cluster/up.sh made for any other
// (E2E_MNTNS_DIR/<node>), where that node's pool and volumes are mounted.
func (m *multiNode) onNode(t *testing.T, node, name string, args ...string) string {
	t.Helper()
	if node == m.node {
		return host(t, name, args...)
	}
	ns := envOr("E2E_MNTNS_DIR", "/var/run/k8s-recipe-mntns") + "/" + node
	return host(t, "nsenter", append([]string{"--mount=" + ns, "--", name}, args...)...)
}

// volumeNode returns the node of the claim's ThinVolume and the node its
// PV is pinned to.
func (c *cluster) volumeNode(t *testing.T, claim string) (thinVolume, pv string) {
	t.Helper()
	p := c.waitBound(t, claim, 2*time.Minute)
	obj, err := c.kube.CoreV1().PersistentVolumes().Get(context.Background(), p.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("PV of %s: %v", claim, err)
	}
	if terms := obj.Spec.NodeAffinity.Required.NodeSelectorTerms; len(terms) == 1 && len(terms[0].MatchExpressions) == 1 &&
		terms[0].MatchExpressions[0].Key == "topology.csi-thin.io/node" && len(terms[0].MatchExpressions[0].Values) == 1 {
		pv = terms[0].MatchExpressions[0].Values[0]
	} else {
		t.Errorf("PV %s node affinity %+v", obj.Name, terms)
	}
	tv, err := c.dyn.Resource(thinVolumeGVR).Get(context.Background(), obj.Spec.CSI.VolumeHandle, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ThinVolume of %s: %v", claim, err)
	}
	thinVolume, _ = tv.Object["spec"].(map[string]any)["node"].(string)
	return thinVolume, pv
}

// expectOn checks that the claim's volume and the pod that used it are on
// the node.
func (m *multiNode) expectOn(t *testing.T, claim, podNode, want string) {
	t.Helper()
	tvNode, pvNode := m.volumeNode(t, claim)
	if tvNode != want || pvNode != want || podNode != want {
		t.Errorf("claim %s: ThinVolume on %q, PV pinned to %q, pod ran on %q; want all on %q", claim, tvNode, pvNode, podNode, want)
	}
}

// runUnpinned runs a pod that the scheduler places and returns its node
// and output.
func (m *multiNode) runUnpinned(t *testing.T, name, script string, claims ...string) (node, out string) {
	t.Helper()
	m.startPodOn(t, "", name, script, claims...)
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := m.kube.CoreV1().Pods(m.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		node = p.Spec.NodeName
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return true, nil
		case corev1.PodFailed:
			return false, fmt.Errorf("pod %s failed: %s", name, m.logs(name))
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s: %v %s", name, err, m.eventsFor(name))
	}
	out = m.logs(name)
	m.deletePod(t, name)
	return node, out
}

func (c *cluster) deletePod(t *testing.T, name string) {
	t.Helper()
	err := c.kube.CoreV1().Pods(c.ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete pod %s: %v", name, err)
	}
	c.waitPodGone(t, name)
}

// testEveryNode: a pod pinned to each node writes a csi-thin volume that
// lives on that node, in that node's own pool.
func (m *multiNode) testEveryNode(t *testing.T) {
	for _, node := range m.nodes {
		claim := "on-" + node
		m.createPVC(t, claim, classWFFC, "1Gi")
		out := m.runPodOn(t, node, "write-"+node, fmt.Sprintf("echo '%s %s' > /%s/file && cat /%s/file", payload, node, claim, claim), claim)
		if !strings.Contains(out, payload+" "+node) {
			t.Errorf("pod on %s read %q", node, out)
		}
		m.expectOn(t, claim, node, node)
		handle := volumeHandle(t, m.cluster, m.waitBound(t, claim, time.Minute))
		// The volume is a subvolume of this node's pool and of no other.
		for _, n := range m.nodes {
			has := strings.Contains(m.onNode(t, n, "btrfs", "subvolume", "list", m.poolDir), handle)
			if has != (n == node) {
				t.Errorf("volume %s of a pod on %s: in %s's pool = %v", handle, node, n, has)
			}
		}
	}
}

// storageClassOn creates a WaitForFirstConsumer class whose
// allowedTopologies name only the node; it is deleted with the test.
func (m *multiNode) storageClassOn(t *testing.T, node string) string {
	t.Helper()
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	del := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: m.ns + "-only-" + node},
		Provisioner:       "csi-thin.io",
		Parameters:        map[string]string{"csi.storage.k8s.io/fstype": "btrfs"},
		VolumeBindingMode: &wffc,
		ReclaimPolicy:     &del,
		AllowedTopologies: []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: "topology.csi-thin.io/node", Values: []string{node}}}}},
	}
	if _, err := m.kube.StorageV1().StorageClasses().Create(context.Background(), sc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create StorageClass %s: %v", sc.Name, err)
	}
	t.Cleanup(func() {
		_ = m.kube.StorageV1().StorageClasses().Delete(context.Background(), sc.Name, metav1.DeleteOptions{})
	})
	return sc.Name
}

// waitVolumePhase waits until ThinVolume name reports phase (a missing
// or unreadable resource counts as not yet).
func (c *cluster) waitVolumePhase(ctx context.Context, name, phase string, timeout time.Duration) error {
	return wait.PollUntilContextTimeout(ctx, 2*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		tv, err := c.dyn.Resource(thinVolumeGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		p, _, _ := unstructured.NestedString(tv.Object, "status", "phase")
		return p == phase, nil
	})
}

// waitEvent waits for an event with the reason on the object (and, if
// given, a message containing want) and returns its message.
func (c *cluster) waitEvent(t *testing.T, object, reason string, timeout time.Duration, want ...string) string {
	t.Helper()
	var msg string
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		evs, err := c.kube.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + object + ",reason=" + reason})
		if err != nil {
			return false, nil
		}
		for i := len(evs.Items) - 1; i >= 0; i-- {
			if all(evs.Items[i].Message, want) {
				msg = evs.Items[i].Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event on %s after %s: %s", reason, object, timeout, c.eventsFor(object))
	}
	return msg
}

func all(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// expectNoVolume checks that the claim is Pending and no ThinVolume was
// made for it.
func (m *multiNode) expectNoVolume(t *testing.T, claim string) {
	t.Helper()
	p, err := m.kube.CoreV1().PersistentVolumeClaims(m.ns).Get(context.Background(), claim, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("PVC %s: %v", claim, err)
	}
	if p.Status.Phase != corev1.ClaimPending || p.Spec.VolumeName != "" {
		t.Errorf("PVC %s is %s (volume %q), want Pending without a volume", claim, p.Status.Phase, p.Spec.VolumeName)
	}
	l, err := m.dyn.Resource(thinVolumeGVR).List(context.Background(), metav1.ListOptions{
		LabelSelector: "csi-thin.io/pvc-name=" + claim + ",csi-thin.io/pvc-namespace=" + m.ns})
	if err != nil {
		t.Fatalf("list ThinVolumes: %v", err)
	}
	if len(l.Items) > 0 {
		t.Errorf("PVC %s has %d ThinVolumes, want none", claim, len(l.Items))
	}
}

// testAllowedTopologies: a class allowed only on the other node puts an
// unpinned pod's volume there; a pod pinned to the test node cannot use
// that class: it is not scheduled and no volume is made.
func (m *multiNode) testAllowedTopologies(t *testing.T) {
	class := m.storageClassOn(t, m.other)
	m.createPVC(t, "topo", class, "1Gi")
	node, _ := m.runUnpinned(t, "topo-user", "echo ok > /topo/f", "topo")
	m.expectOn(t, "topo", node, m.other)

	m.createPVC(t, "topo-conflict", class, "1Gi")
	m.startPodOn(t, m.node, "topo-conflict-user", "true", "topo-conflict")
	msg := m.waitEvent(t, "topo-conflict-user", "FailedScheduling", 2*time.Minute)
	t.Logf("pod pinned to %s with a class for %s: %s", m.node, m.other, msg)
	m.expectNoVolume(t, "topo-conflict")
	m.deletePod(t, "topo-conflict-user")
	m.deletePVCs(t, "topo", "topo-conflict")
}

// capacityOn is the CSIStorageCapacity the provisioner publishes for the
// WaitForFirstConsumer class on the node.
func (m *multiNode) capacityOn(t *testing.T, node string) resource.Quantity {
	t.Helper()
	var q resource.Quantity
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := m.kube.StorageV1().CSIStorageCapacities(m.driver).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, csc := range l.Items {
			if csc.StorageClassName == classWFFC && csc.Capacity != nil && onNode(csc, node) {
				q = *csc.Capacity
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no CSIStorageCapacity for %s on %s", classWFFC, node)
	}
	return q
}

// testFullNode fills the test node's pool (overprovision ratio 1 in the
// e2e values) to less than a claim's size: the scheduler, reading the
// CSIStorageCapacity of each node, puts the claim's pod on the other node,
// and a pod pinned to the full node is not scheduled and gets no volume.
func (m *multiNode) testFullNode(t *testing.T) {
	const gi = int64(1) << 30
	free := m.capacityOn(t, m.node)
	fill := free.Value()/gi - 3 // leaves 3-4 GiB
	if fill < 1 {
		t.Fatalf("capacity on %s is only %s", m.node, free.String())
	}
	// The Immediate class places on the test node (values-e2e.yaml).
	m.createPVC(t, "filler", classImmediate, fmt.Sprintf("%dGi", fill))
	if tv, _ := m.volumeNode(t, "filler"); tv != m.node {
		t.Fatalf("filler volume on %s, want %s", tv, m.node)
	}
	var left resource.Quantity
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		left = m.capacityOn(t, m.node)
		return left.Value() < 5*gi, nil
	})
	if err != nil {
		t.Fatalf("capacity on %s still %s after a %dGi volume (was %s)", m.node, left.String(), fill, free.String())
	}
	otherFree := m.capacityOn(t, m.other)
	t.Logf("%s: capacity %s -> %s after a %dGi volume; %s: %s", m.node, free.String(), left.String(), fill, m.other, otherFree.String())

	// The same claim size fits on the other node only.
	for i := range 2 {
		claim := fmt.Sprintf("spill-%d", i)
		m.createPVC(t, claim, classWFFC, "6Gi")
		node, _ := m.runUnpinned(t, claim+"-user", "echo ok > /"+claim+"/f", claim)
		m.expectOn(t, claim, node, m.other)
	}
	m.createPVC(t, "no-room", classWFFC, "6Gi")
	m.startPodOn(t, m.node, "no-room-user", "true", "no-room")
	// The scheduler's first attempt may come before its cache has the
	// claim ("could not find PersistentVolumeClaim"): wait for the verdict.
	msg := m.waitEvent(t, "no-room-user", "FailedScheduling", 2*time.Minute, "enough free storage")
	t.Logf("pod pinned to the full node: %s", msg)
	if !strings.Contains(msg, "enough free storage") {
		t.Errorf("FailedScheduling %q does not name the missing storage", msg)
	}
	m.expectNoVolume(t, "no-room")
	m.deletePod(t, "no-room-user")
	m.deletePVCs(t, "filler", "spill-0", "spill-1", "no-room")
}

// testSourcePlacement: a clone and a restore consumed where their source
// lives are placed with it, as thin snapshots (no copy: their ThinVolume
// names no source node).
func (m *multiNode) testSourcePlacement(t *testing.T) {
	m.createPVC(t, "src", classWFFC, "1Gi")
	m.runPodOn(t, m.node, "src-writer", fmt.Sprintf("echo '%s' > /src/file && sync", payload), "src")
	m.createSnapshot(t, "src-snap", "src")

	m.createPVC(t, "clone-near", classWFFC, "1Gi", fromPVC("src"))
	m.createPVC(t, "restore-near", classWFFC, "1Gi", fromSnapshot("src-snap"))
	for _, claim := range []string{"clone-near", "restore-near"} {
		out := m.runPodOn(t, m.node, claim+"-reader", "cat /"+claim+"/file", claim)
		if !strings.Contains(out, payload) {
			t.Errorf("%s reads %q, want the payload", claim, out)
		}
		m.expectOn(t, claim, m.node, m.node)
		p := m.waitBound(t, claim, time.Minute)
		pv, err := m.kube.CoreV1().PersistentVolumes().Get(context.Background(), p.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tv, err := m.dyn.Resource(thinVolumeGVR).Get(context.Background(), pv.Spec.CSI.VolumeHandle, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if src, _ := tv.Object["spec"].(map[string]any)["source"].(map[string]any); src == nil || src["node"] != nil || tv.Object["status"].(map[string]any)["transfer"] != nil {
			t.Errorf("%s: ThinVolume source %v, status %v: want a thin snapshot on its node, no copy", claim, src, tv.Object["status"])
		}
	}
	if err := m.dyn.Resource(snapshotGVR).Namespace(m.ns).Delete(context.Background(), "src-snap", metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete snapshot: %v", err)
	}
	m.deletePVCs(t, "src", "clone-near", "restore-near")
}

// testNothingLeft: once the claims are gone, no node keeps a volume, a
// snapshot or a CSI mount.
func (m *multiNode) testNothingLeft(t *testing.T) {
	ctx := context.Background()
	if err := m.kube.CoreV1().Pods(m.ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.kube.CoreV1().PersistentVolumeClaims(m.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pvs, err := m.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		return len(pvs.Items) == 0 && m.countThin(t, thinVolumeGVR) == 0 && m.countThin(t, thinSnapGVR) == 0 && m.countThin(t, thinGroupGVR) == 0, nil
	})
	if err != nil {
		t.Fatalf("PVs or csi-thin resources left: %d ThinVolumes, %d ThinSnapshots, %d ThinGroupSnapshots",
			m.countThin(t, thinVolumeGVR), m.countThin(t, thinSnapGVR), m.countThin(t, thinGroupGVR))
	}
	for _, node := range m.nodes {
		if left := idPattern.FindAllString(m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir), -1); len(left) > 0 {
			t.Errorf("%s: subvolumes left in the pool: %v", node, left)
		}
		for _, l := range strings.Split(m.onNode(t, node, "findmnt", "-rn", "-o", "TARGET"), "\n") {
			if strings.Contains(l, "kubernetes.io~csi") || strings.Contains(l, "/plugins/kubernetes.io/csi/") {
				t.Errorf("%s: CSI mount left: %s", node, l)
			}
		}
	}
	if err := m.kube.CoreV1().Namespaces().Delete(ctx, m.ns, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete namespace: %v", err)
	}
}
