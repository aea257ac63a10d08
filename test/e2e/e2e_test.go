// Package e2e runs csi-thin on a real single-node Kubernetes cluster,
// through the chart, the CSI sidecars, the controller's router and the
// node agent. test/e2e/run.sh sets the cluster up and runs it; without
// CSI_THIN_E2E=1 every test skips.
package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestCluster runs the scenarios in order: the last one proves that
// deleting everything leaves nothing behind on the node.
func TestCluster(t *testing.T) {
	c := newCluster(t)
	t.Logf("namespace %s", c.ns)
	steps := []struct {
		name string
		fn   func(*testing.T, *cluster)
	}{
		{"ProvisionWriteSnapshotRestoreClone", testDataPath},
		{"OnlineExpansion", testOnlineExpansion},
		{"CapacityShrinks", testCapacity},
		{"NodeAgentRestartDuringCreates", testRestartMidCreate},
		{"CloneLatency", testCloneLatency},
		{"NodeFailureReachesTheClaim", testNodeFailure},
		{"VolumeConditionReachesThePod", testVolumeCondition},
		{"GroupSnapshotOneInstant", testGroupSnapshot},
		{"NothingLeftAfterDelete", testNothingLeft},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, c) }) {
			t.Fatalf("%s failed; later steps depend on it", s.name)
		}
	}
}

const payload = "csi-thin e2e payload"

// idPattern matches volume and snapshot IDs in paths.
var idPattern = regexp.MustCompile(`\b[vs]-[0-9a-f]{32}\b`)

// testDataPath: a PVC is bound for its pod, which writes data; a snapshot
// of it, a larger restore and a clone all show that data.
func testDataPath(t *testing.T, c *cluster) {
	start := time.Now()
	c.createPVC(t, "data", classWFFC, "1Gi")
	c.runPod(t, "writer", fmt.Sprintf("echo '%s' > /data/file && sync", payload), "data")
	pvc := c.waitBound(t, "data", time.Minute)
	t.Logf("PVC bound and written in %s (PV %s)", time.Since(start).Round(time.Millisecond), pvc.Spec.VolumeName)
	c.checkPV(t, pvc)

	start = time.Now()
	c.createSnapshot(t, "data-snap", "data")
	t.Logf("snapshot readyToUse in %s", time.Since(start).Round(time.Millisecond))

	c.createPVC(t, "restored", classWFFC, "2Gi", fromSnapshot("data-snap"))
	out := c.runPod(t, "read-restored", "cat /restored/file", "restored")
	if !strings.Contains(out, payload) {
		t.Errorf("restored volume reads %q, want the payload", out)
	}
	restored := c.waitBound(t, "restored", time.Minute)
	if got := restored.Status.Capacity[corev1.ResourceStorage]; got.Cmp(resource.MustParse("2Gi")) < 0 {
		t.Errorf("restored capacity %s, want at least 2Gi", got.String())
	}

	c.createPVC(t, "clone", classWFFC, "1Gi", fromPVC("data"))
	out = c.runPod(t, "read-clone", "cat /clone/file", "clone")
	if !strings.Contains(out, payload) {
		t.Errorf("clone reads %q, want the payload", out)
	}
	// The clone's and the restore's ThinVolumes live with their source.
	for _, name := range []string{"restored", "clone"} {
		p := c.waitBound(t, name, time.Minute)
		tv, err := c.dyn.Resource(thinVolumeGVR).Get(context.Background(), volumeHandle(t, c, p), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("ThinVolume of %s: %v", name, err)
		}
		if node := tv.Object["spec"].(map[string]any)["node"]; node != c.node {
			t.Errorf("%s on node %v, want %s", name, node, c.node)
		}
	}
}

func volumeHandle(t *testing.T, c *cluster, pvc *corev1.PersistentVolumeClaim) string {
	t.Helper()
	pv, err := c.kube.CoreV1().PersistentVolumes().Get(context.Background(), pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || pv.Spec.CSI == nil {
		t.Fatalf("PV of %s: %v", pvc.Name, err)
	}
	return pv.Spec.CSI.VolumeHandle
}

// checkPV: the PV is csi-thin's, pinned to the node by topology, and its
// ThinVolume is Ready on that node.
func (c *cluster) checkPV(t *testing.T, pvc *corev1.PersistentVolumeClaim) {
	t.Helper()
	pv, err := c.kube.CoreV1().PersistentVolumes().Get(context.Background(), pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != "csi-thin.io" {
		t.Fatalf("PV %s is not csi-thin's: %+v", pv.Name, pv.Spec.PersistentVolumeSource)
	}
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	if len(terms) != 1 || terms[0].MatchExpressions[0].Key != "topology.csi-thin.io/node" || terms[0].MatchExpressions[0].Values[0] != c.node {
		t.Errorf("PV node affinity %+v", terms)
	}
	tv, err := c.dyn.Resource(thinVolumeGVR).Get(context.Background(), pv.Spec.CSI.VolumeHandle, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ThinVolume %s: %v", pv.Spec.CSI.VolumeHandle, err)
	}
	if p := tv.Object["status"].(map[string]any)["phase"]; p != "Ready" {
		t.Errorf("ThinVolume phase %v", p)
	}
	if l := tv.GetLabels()["csi-thin.io/pvc-name"]; l != pvc.Name {
		t.Errorf("ThinVolume pvc-name label %q, want %q", l, pvc.Name)
	}
}

func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	return string(out), err
}

// testOnlineExpansion grows a mounted volume: the pod can then write more
// than the old size (a btrfs subvolume's size is its quota; df shows the
// whole pool).
func testOnlineExpansion(t *testing.T, c *cluster) {
	c.createPVC(t, "grow", classWFFC, "1Gi")
	c.startPod(t, "grower", "sleep 3600", "grow")
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, "grower", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod not running: %v %s", err, c.eventsFor("grower"))
	}
	write := func(mib int) (string, error) {
		return kubectl(t, "-n", c.ns, "exec", "grower", "--", "sh", "-c",
			fmt.Sprintf("rm -f /grow/big; sync; dd if=/dev/zero of=/grow/big bs=1M count=%d conv=fsync 2>&1; rc=$?; rm -f /grow/big; sync; exit $rc", mib))
	}
	if out, err := write(1536); err == nil {
		t.Logf("note: 1.5GiB fit in the 1GiB volume before expansion (quota enforcement is lazy): %s", lastLine(out))
	} else {
		t.Logf("before expansion, 1.5GiB does not fit: %s", lastLine(out))
	}

	start := time.Now()
	patch := []byte(`{"spec":{"resources":{"requests":{"storage":"3Gi"}}}}`)
	if _, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Patch(context.Background(), "grow", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Get(ctx, "grow", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got := p.Status.Capacity[corev1.ResourceStorage]
		return got.Cmp(resource.MustParse("3Gi")) >= 0 && len(p.Status.Conditions) == 0, nil
	})
	if err != nil {
		t.Fatalf("PVC not expanded to 3Gi: %v %s", err, c.eventsFor("grow"))
	}
	t.Logf("expanded online in %s", time.Since(start).Round(time.Millisecond))
	if out, err := write(2048); err != nil {
		t.Errorf("2GiB does not fit after expansion to 3GiB: %v: %s", err, out)
	}
	if err := c.kube.CoreV1().Pods(c.ns).Delete(context.Background(), "grower", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	c.waitPodGone(t, "grower")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// capacityOf sums the CSIStorageCapacity the provisioner publishes for a
// class on the test node.
func (c *cluster) capacityOf(t *testing.T, class string) (resource.Quantity, bool) {
	t.Helper()
	l, err := c.kube.StorageV1().CSIStorageCapacities(c.driver).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, csc := range l.Items {
		if csc.StorageClassName == class && csc.Capacity != nil && onNode(csc, c.node) {
			return *csc.Capacity, true
		}
	}
	return resource.Quantity{}, false
}

func onNode(csc storagev1.CSIStorageCapacity, node string) bool {
	return csc.NodeTopology != nil && csc.NodeTopology.MatchLabels["topology.csi-thin.io/node"] == node
}

// testCapacity: CSIStorageCapacity exists per WaitForFirstConsumer class
// and node (the provisioner publishes none for Immediate classes), and
// shrinks as volumes are provisioned (the e2e pool is not overprovisioned).
func testCapacity(t *testing.T, c *cluster) {
	var before resource.Quantity
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		q, ok := c.capacityOf(t, classWFFC)
		before = q
		return ok, nil
	})
	if err != nil {
		t.Fatalf("no CSIStorageCapacity for %s on %s", classWFFC, c.node)
	}
	t.Logf("capacity before: %s", before.String())
	for i := range 2 {
		c.createPVC(t, fmt.Sprintf("cap-%d", i), classWFFC, "5Gi")
	}
	c.runPod(t, "cap-user", "true", "cap-0", "cap-1")
	for i := range 2 {
		c.waitBound(t, fmt.Sprintf("cap-%d", i), 2*time.Minute)
	}
	var after resource.Quantity
	want := before.DeepCopy()
	want.Sub(resource.MustParse("8Gi"))
	err = wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		after, _ = c.capacityOf(t, classWFFC)
		return after.Cmp(want) <= 0, nil
	})
	if err != nil {
		t.Fatalf("capacity %s after provisioning 10Gi, want at most %s", after.String(), want.String())
	}
	t.Logf("capacity after 2x5Gi: %s", after.String())
	c.deletePVCs(t, "cap-0", "cap-1")
}

func (c *cluster) deletePVCs(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Delete(context.Background(), n, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete PVC %s: %v", n, err)
		}
	}
}

// testRestartMidCreate kills the node agent's pod (no grace period) in
// the middle of a burst of volume creations: half the claims are created
// before, half while the agent is gone or starting. Every claim still ends
// Bound: the controller keeps waiting (or the provisioner retries), and the
// new agent picks the pending ThinVolumes up.
func testRestartMidCreate(t *testing.T, c *cluster) {
	const n = 8
	var names []string
	create := func(from, to int) {
		for i := from; i < to; i++ {
			names = append(names, fmt.Sprintf("restart-%d", i))
			c.createPVC(t, names[i], classImmediate, "1Gi")
		}
	}
	ctx := context.Background()
	pods, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("node pods: %v (%d)", err, len(pods.Items))
	}
	create(0, n/2)
	for _, p := range pods.Items {
		if err := c.kube.CoreV1().Pods(c.driver).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed node pod %s", p.Name)
	}
	start := time.Now()
	create(n/2, n)
	pending := 0
	if l, err := c.dyn.Resource(thinVolumeGVR).List(ctx, metav1.ListOptions{}); err == nil {
		for _, tv := range l.Items {
			if st, _ := tv.Object["status"].(map[string]any); st == nil || st["phase"] != "Ready" {
				pending++
			}
		}
	}
	t.Logf("right after the kill: %d ThinVolumes not Ready yet", pending)
	for _, name := range names {
		c.waitBound(t, name, 4*time.Minute)
	}
	t.Logf("all %d claims Bound %s after the node pod was killed", n, time.Since(start).Round(time.Millisecond))
	after, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
	if err != nil || len(after.Items) == 0 || after.Items[0].UID == pods.Items[0].UID {
		t.Errorf("node pod was not replaced: %v", err)
	}
	// A pod can use one of them (the new agent registered with the kubelet).
	c.runPod(t, "after-restart", "echo ok > /restart-0/f && cat /restart-0/f", "restart-0")
	c.deletePVCs(t, names...)
}

// testCloneLatency creates clones one after another and prints the time
// from PVC creation to Bound. Printed, not asserted.
func testCloneLatency(t *testing.T, c *cluster) {
	c.createPVC(t, "origin", classImmediate, "1Gi")
	c.waitBound(t, "origin", 2*time.Minute)
	const n = 10
	var lat []time.Duration
	var names []string
	for i := range n {
		name := fmt.Sprintf("clone-%d", i)
		names = append(names, name)
		start := time.Now()
		c.createPVC(t, name, classImmediate, "1Gi", fromPVC("origin"))
		c.waitBound(t, name, 2*time.Minute)
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("CLONE-LATENCY: PVC clone -> Bound over %d clones: p50 %s, min %s, max %s\n",
		n, lat[n/2].Round(time.Millisecond), lat[0].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
	c.deletePVCs(t, append(names, "origin")...)
}

// testNodeFailure asks for a volume larger than the pool can ever hold:
// the node's backend refuses with OutOfRange, and the claim's events carry
// that code and the node's own reason (not a bare timeout). The failed
// ThinVolume is deleted for the retry; testNothingLeft checks none stays.
func testNodeFailure(t *testing.T, c *cluster) {
	c.createPVC(t, "too-big", classImmediate, "500Gi")
	var msg string
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := c.kube.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=too-big,reason=ProvisioningFailed"})
		if err != nil || len(evs.Items) == 0 {
			return false, nil
		}
		msg = evs.Items[0].Message
		return true, nil
	})
	if err != nil {
		t.Fatalf("no ProvisioningFailed event: %s", c.eventsFor("too-big"))
	}
	t.Logf("claim event: %s", msg)
	if !strings.Contains(msg, "code = OutOfRange") || !strings.Contains(msg, "node "+c.node+": ") || !strings.Contains(msg, "largest volume") {
		t.Errorf("event %q lacks the node's code and reason", msg)
	}
	c.deletePVCs(t, "too-big")
}

// testNothingLeft deletes everything the scenarios made and checks the
// node: no ThinVolumes or ThinSnapshots, no subvolumes in the pool, no
// CSI mounts under the kubelet.
func testNothingLeft(t *testing.T, c *cluster) {
	ctx := context.Background()
	snaps, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps.Items {
		// A group's member snapshots may be going already (their group was
		// deleted): gone is as good as deleted.
		if err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Delete(ctx, s.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete snapshot: %v", err)
		}
	}
	if err := c.kube.CoreV1().Pods(c.ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pvs, err := c.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		return len(pvs.Items) == 0 && c.countThin(t, thinVolumeGVR) == 0 && c.countThin(t, thinSnapGVR) == 0 && c.countThin(t, thinGroupGVR) == 0, nil
	})
	if err != nil {
		t.Fatalf("PVs or csi-thin resources left: %d ThinVolumes, %d ThinSnapshots, %d ThinGroupSnapshots",
			c.countThin(t, thinVolumeGVR), c.countThin(t, thinSnapGVR), c.countThin(t, thinGroupGVR))
	}
	subvols := host(t, "btrfs", "subvolume", "list", c.poolDir)
	var left []string
	for _, l := range strings.Split(subvols, "\n") {
		if idPattern.MatchString(l) {
			left = append(left, l)
		}
	}
	if len(left) > 0 {
		t.Errorf("subvolumes left in the pool:\n%s", strings.Join(left, "\n"))
	}
	var mounts []string
	for _, l := range strings.Split(host(t, "findmnt", "-rn", "-o", "TARGET"), "\n") {
		if strings.Contains(l, "kubernetes.io~csi") || strings.Contains(l, "/plugins/kubernetes.io/csi/") {
			mounts = append(mounts, l)
		}
	}
	if len(mounts) > 0 {
		t.Errorf("CSI mounts left:\n%s", strings.Join(mounts, "\n"))
	}
	if err := c.kube.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete namespace: %v", err)
	}
}
