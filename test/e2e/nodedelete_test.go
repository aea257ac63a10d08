package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testNodeDrained: `kubectl drain` of the other node evicts a
// Deployment's pod that uses a csi-thin volume of that node. Its
// replacement stays Pending, the scheduler naming the PV's node affinity
// (local data does not move), while the volume stays Ready with
// its data and the node's agent (a DaemonSet pod, which drain leaves)
// keeps running; uncordoned, the node runs the replacement, which reads
// the data. The claim and a snapshot of it, exported to S3, stay for
// testNodeDeleted.
func (m *multiNode) testNodeDrained(t *testing.T) {
	ctx := context.Background()
	node := m.other
	m.createPVC(t, "local", classWFFC, "1Gi")
	m.runPodOn(t, node, "local-writer", fmt.Sprintf("echo '%s drained' > /local/file && sync", payload), "local")
	handle := volumeHandle(t, m.cluster, m.waitBound(t, "local", time.Minute))
	// Its snapshot is exported too: testNodeDeleted restores the export
	// once the node is gone.
	_, exp := m.exportSnapshot(t, ctx, "local-snap", "local")
	m.localExport = exp.id

	const app = "local-app"
	m.createDeployment(t, app, "cat /local/file && sleep 3600", "local")
	first := m.waitAppPod(t, app, "", corev1.PodRunning)
	if first.Spec.NodeName != node {
		t.Fatalf("pod %s of a claim on %s runs on %s", first.Name, node, first.Spec.NodeName)
	}
	t.Cleanup(func() { _, _ = kubectl(t, "uncordon", node) })
	if out, err := kubectl(t, "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
		"--pod-selector=app="+app, "--timeout=120s"); err != nil {
		t.Fatalf("kubectl drain %s: %v\n%s", node, err, out)
	}
	replacement := m.waitAppPod(t, app, first.Name, corev1.PodPending)
	msg := m.waitEvent(t, replacement.Name, "FailedScheduling", 2*time.Minute, "didn't match PersistentVolume's node affinity")
	t.Logf("replacement of the drained pod: %s", msg)

	tv, err := m.dyn.Resource(thinVolumeGVR).Get(ctx, handle, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ThinVolume %s: %v", handle, err)
	}
	if p, _, _ := unstructured.NestedString(tv.Object, "status", "phase"); p != "Ready" {
		t.Errorf("ThinVolume %s of the drained node is %q, want Ready", handle, p)
	}
	if findAgent(node) == 0 {
		t.Errorf("the csi-thin agent of %s stopped with the drain", node)
	}
	if !strings.Contains(m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir), handle) {
		t.Errorf("volume %s gone from %s's pool after the drain", handle, node)
	}

	if out, err := kubectl(t, "uncordon", node); err != nil {
		t.Fatalf("kubectl uncordon %s: %v\n%s", node, err, out)
	}
	back := m.waitAppPod(t, app, first.Name, corev1.PodRunning)
	if back.Spec.NodeName != node {
		t.Errorf("replacement runs on %s, want %s", back.Spec.NodeName, node)
	}
	if out := m.logs(back.Name); !strings.Contains(out, payload+" drained") {
		t.Errorf("replacement on the uncordoned node reads %q", out)
	}
	if err := m.kube.AppsV1().Deployments(m.ns).Delete(ctx, app, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete Deployment %s: %v", app, err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := m.kube.CoreV1().Pods(m.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods of %s not gone: %v", app, err)
	}
}

// testNodeDeleted: the other node's Node object is deleted while its
// kubelet runs and it holds a claim's volume and a snapshot of it (from
// testNodeDrained) and another claim's volume (testEveryNode's). The pod
// garbage collector deletes the node's pods, so its kubelet stops the
// csi-thin agent; the resources turn Lost ("deleted from the cluster"),
// with NodeLost Events on the PVC and PV and the controller's gauges
// counting them. Deleting the VolumeSnapshot and the PVC completes, their
// ThinVolume and ThinSnapshot gone with them (the controller releases the
// finalizers: no agent of a deleted node will ever come). The data stays
// in the pool. The snapshot's export restores a claim on the node that
// is left, the source node still deleted, with the data. The kubelet,
// restarted, registers the Node again: the kept claim is Ready with its
// data, and the released volume and snapshot are reported as strays
// (status.strayIDs, StrayStorage Event), never deleted by the agent; the
// runbook's removal by hand clears the report.
func (m *multiNode) testNodeDeleted(t *testing.T) {
	ctx := context.Background()
	node := m.other
	m.shortLostAfter(t)
	local := m.waitBound(t, "local", time.Minute)
	handle := volumeHandle(t, m.cluster, local)
	snapID := m.snapshotID(t, "local-snap")
	kept := volumeHandle(t, m.cluster, m.waitBound(t, "on-"+node, time.Minute))

	if out, err := kubectl(t, "delete", "node", node, "--wait=true"); err != nil {
		t.Fatalf("kubectl delete node %s: %v\n%s", node, err, out)
	}
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := m.kube.CoreV1().Pods(m.driver).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		return err == nil && len(pods.Items) == 0 && findAgent(node) == 0, nil
	})
	if err != nil {
		t.Fatalf("the csi-thin agent of deleted node %s still there: %v", node, err)
	}
	t.Logf("agent of the deleted node gone %s after the deletion", time.Since(start).Round(time.Second))
	// The kubelet, which refreshes its Node every 10 s, has had time to
	// register it again, and has not: it registers only at its start.
	if _, err := m.kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node %s is back before its kubelet restarted (the runbook says a restart is needed): %v", node, err)
	}
	lost := map[schema.GroupVersionResource][]string{thinVolumeGVR: {handle, kept}, thinSnapGVR: {snapID}}
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for gvr, names := range lost {
			for _, name := range names {
				if !m.lostBecause(ctx, gvr, name, "was deleted from the cluster") {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("resources of deleted node %s not Lost: %v", node, err)
	}
	t.Logf("volumes and snapshot Lost %s after the deletion", time.Since(start).Round(time.Second))
	// The claim and PV had a NodeLost Event in LostNodeReleasesItsClaims:
	// the recorder counts this one into it (same object, reason and
	// action; the first message stays), so look for one seen since.
	m.waitEventSince(t, m.ns, "local", "NodeLost", start, handle)
	m.waitEventSince(t, metav1.NamespaceAll, local.Spec.VolumeName, "NodeLost", start, handle)
	m.waitLostGauges(t, node)

	// Deleting the snapshot and the claim completes; the controller
	// releases the finalizers of the resources on the deleted node (at
	// once, in DeleteVolume and DeleteSnapshot: no Event).
	if err := m.dyn.Resource(snapshotGVR).Namespace(m.ns).Delete(ctx, "local-snap", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete VolumeSnapshot: %v", err)
	}
	m.deletePVCs(t, "local")
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, pvc := m.kube.CoreV1().PersistentVolumeClaims(m.ns).Get(ctx, "local", metav1.GetOptions{})
		_, pv := m.kube.CoreV1().PersistentVolumes().Get(ctx, local.Spec.VolumeName, metav1.GetOptions{})
		_, vs := m.dyn.Resource(snapshotGVR).Namespace(m.ns).Get(ctx, "local-snap", metav1.GetOptions{})
		_, tv := m.dyn.Resource(thinVolumeGVR).Get(ctx, handle, metav1.GetOptions{})
		_, ts := m.dyn.Resource(thinSnapGVR).Get(ctx, snapID, metav1.GetOptions{})
		for _, err := range []error{pvc, pv, vs, tv, ts} {
			if !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("claim, snapshot or their resources on deleted node %s not gone: %v %s", node, err, m.eventsFor("local"))
	}
	inPool := m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir)
	if !strings.Contains(inPool, handle) || !strings.Contains(inPool, snapID) {
		t.Errorf("storage of the released volume %s or snapshot %s deleted without its node:\n%s", handle, snapID, inPool)
	}

	// A backup outlives its node: the export restores on the node left.
	m.restoreExport(t, ctx, "local-back", classWFFC, m.localExport)
	if out := m.runPodOn(t, m.node, "local-back-reader", "cat /local-back/file", "local-back"); !strings.Contains(out, payload+" drained") {
		t.Errorf("claim restored from export %s of deleted node %s reads %q", m.localExport, node, out)
	}
	if _, err := m.kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("node %s came back before the restore was read: %v", node, err)
	}
	m.deleteRestored(t, ctx, "local-back")

	// The kubelet registers its Node at start: restart it.
	m.restartKubelet(t, node, m.killKubelet(t, node))
	m.waitNodeBack(t, node)
	t.Logf("node %s back %s after the deletion", node, time.Since(start).Round(time.Second))
	err = m.waitVolumePhase(ctx, kept, "Ready", 2*time.Minute)
	if err != nil {
		t.Fatalf("volume %s of claim on-%s not Ready after its node registered again: %v", kept, node, err)
	}
	if out := m.runPodOn(t, node, "kept-reader", "cat /on-"+node+"/file", "on-"+node); !strings.Contains(out, payload+" "+node) {
		t.Errorf("claim on-%s reads %q after its node was deleted and came back", node, out)
	}

	// What no resource stands for any more is reported, and kept.
	var strays []string
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		strays = m.strayIDs(ctx, node)
		return slices.Contains(strays, handle) && slices.Contains(strays, snapID), nil
	})
	if err != nil {
		t.Fatalf("ThinNode %s reports strays %v, want %s and %s", node, strays, handle, snapID)
	}
	m.waitClusterEvent(t, node, "StrayStorage", time.Minute)
	inPool = m.onNode(t, node, "btrfs", "subvolume", "list", m.poolDir)
	if !strings.Contains(inPool, handle) || !strings.Contains(inPool, snapID) {
		t.Errorf("the agent deleted stray storage (%s, %s):\n%s", handle, snapID, inPool)
	}
	// The runbook: no PV names them, so the operator removes them.
	pvs, err := m.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI != nil && slices.Contains(strays, pv.Spec.CSI.VolumeHandle) {
			t.Errorf("stray %s is PV %s's volume", pv.Spec.CSI.VolumeHandle, pv.Name)
		}
	}
	m.removeStray(t, node, "volumes", handle)
	m.removeStray(t, node, "snapshots", snapID)
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		strays = m.strayIDs(ctx, node)
		return !slices.Contains(strays, handle) && !slices.Contains(strays, snapID), nil
	})
	if err != nil {
		t.Errorf("strays %v still reported after their removal", strays)
	}
}

// createDeployment creates a one-replica Deployment of busybox pods
// labeled app=name, with the claims mounted at /<claim>, placed by the
// scheduler.
func (m *multiNode) createDeployment(t *testing.T, name, script string, claims ...string) {
	t.Helper()
	one := int32(1)
	labels := map[string]string{"app": name}
	spec := corev1.PodSpec{
		TerminationGracePeriodSeconds: new(int64),
		Containers: []corev1.Container{{
			Name: "c", Image: busybox, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: []string{"sh", "-c", script},
		}},
	}
	for _, cl := range claims {
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: cl, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: cl}}})
		spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: cl, MountPath: "/" + cl})
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: m.ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := m.kube.AppsV1().Deployments(m.ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Deployment %s: %v", name, err)
	}
}

// waitAppPod waits for a pod of the app, other than the one named not,
// in the phase, and returns it.
func (m *multiNode) waitAppPod(t *testing.T, app, not string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var found *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := m.kube.CoreV1().Pods(m.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, nil
		}
		for i := range l.Items {
			if p := &l.Items[i]; p.Name != not && p.DeletionTimestamp == nil && p.Status.Phase == phase {
				found = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s pod of %s (other than %q): %v", phase, app, not, err)
	}
	return found
}

// snapshotID is the ThinSnapshot behind a ready VolumeSnapshot.
func (m *multiNode) snapshotID(t *testing.T, name string) string {
	t.Helper()
	ctx := context.Background()
	vs, err := m.dyn.Resource(snapshotGVR).Namespace(m.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("VolumeSnapshot %s: %v", name, err)
	}
	content, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	vsc, err := m.dyn.Resource(contentGVR).Get(ctx, content, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("VolumeSnapshotContent %q of %s: %v", content, name, err)
	}
	id, _, _ := unstructured.NestedString(vsc.Object, "status", "snapshotHandle")
	if !idPattern.MatchString(id) {
		t.Fatalf("VolumeSnapshotContent %s: snapshot handle %q", content, id)
	}
	return id
}

// lostBecause: the resource is Lost, its Ready condition's message
// containing why.
func (m *multiNode) lostBecause(ctx context.Context, gvr schema.GroupVersionResource, name, why string) bool {
	u, err := m.dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	if p, _, _ := unstructured.NestedString(u.Object, "status", "phase"); p != "Lost" {
		return false
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		c, _ := c.(map[string]any)
		if c["type"] == "Ready" && c["reason"] == "NodeLost" && strings.Contains(fmt.Sprint(c["message"]), why) {
			return true
		}
	}
	return false
}

// waitLostGauges waits until the controller's csi_thin_lost_volumes and
// csi_thin_lost_snapshots for the node count its ThinVolumes and
// ThinSnapshots.
func (m *multiNode) waitLostGauges(t *testing.T, node string) {
	t.Helper()
	count := func(ctx context.Context, gvr schema.GroupVersionResource) float64 {
		l, err := m.dyn.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/node=" + node})
		if err != nil {
			return -1
		}
		return float64(len(l.Items))
	}
	var vols, snaps, wantVols, wantSnaps float64
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		vols, snaps = m.controllerGauge(ctx, "csi_thin_lost_volumes", node), m.controllerGauge(ctx, "csi_thin_lost_snapshots", node)
		wantVols, wantSnaps = count(ctx, thinVolumeGVR), count(ctx, thinSnapGVR)
		return vols == wantVols && snaps == wantSnaps, nil
	})
	if err != nil {
		t.Fatalf("lost gauges for %s: %v volumes, %v snapshots; want %v, %v", node, vols, snaps, wantVols, wantSnaps)
	}
	t.Logf("csi_thin_lost_volumes{node=%q} %v, csi_thin_lost_snapshots %v", node, vols, snaps)
}

// controllerGauge sums a gauge's series labeled node=<node> over the
// controller pods' /metrics (only the leader sets it); -1 if a scrape
// fails.
func (c *cluster) controllerGauge(ctx context.Context, name, node string) float64 {
	pods, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
	if err != nil || len(pods.Items) == 0 {
		return -1
	}
	sum := 0.0
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || !servesMetrics(&p) {
			continue
		}
		raw, err := c.kube.CoreV1().RESTClient().Get().Namespace(c.driver).Resource("pods").
			Name(p.Name + ":9809").SubResource("proxy").Suffix("metrics").DoRaw(ctx)
		if err != nil {
			return -1
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(string(raw)))
		if err != nil {
			return -1
		}
		f, ok := fams[name]
		if !ok {
			continue
		}
		for _, s := range f.Metric {
			for _, l := range s.Label {
				if l.GetName() == "node" && l.GetValue() == node && s.Gauge != nil {
					sum += s.Gauge.GetValue()
				}
			}
		}
	}
	return sum
}

// strayIDs is the node's ThinNode status.strayIDs.
func (m *multiNode) strayIDs(ctx context.Context, node string) []string {
	tn, err := m.dyn.Resource(thinNodeGVR).Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	ids, _, _ := unstructured.NestedStringSlice(tn.Object, "status", "strayIDs")
	return ids
}

// removeStray removes a stray from the node's btrfs pool as the runbook
// says: its subvolume, the level-1 qgroup its record names (volumes), and
// its record.
func (m *multiNode) removeStray(t *testing.T, node, dir, id string) {
	t.Helper()
	base := m.poolDir + "/csi-thin"
	var rec struct {
		Qgroup string `json:"qgroup"`
	}
	if err := json.Unmarshal([]byte(m.onNode(t, node, "cat", base+"/meta/"+id+".json")), &rec); err != nil {
		t.Fatalf("record of stray %s: %v", id, err)
	}
	m.onNode(t, node, "btrfs", "subvolume", "delete", "--commit-after", base+"/"+dir+"/"+id)
	if rec.Qgroup != "" {
		// A qgroup is busy until the cleaner has dropped its members.
		m.onNode(t, node, "btrfs", "subvolume", "sync", m.poolDir)
		m.onNode(t, node, "btrfs", "qgroup", "destroy", rec.Qgroup, m.poolDir)
	}
	m.onNode(t, node, "rm", base+"/meta/"+id+".json")
	t.Logf("removed stray %s (qgroup %q) from %s's pool", id, rec.Qgroup, node)
}

// waitEventSince waits for an event with the reason on the object (in
// namespace ns; "" for all) last seen at or after since, its message
// containing want.
func (m *multiNode) waitEventSince(t *testing.T, ns, object, reason string, since time.Time, want ...string) {
	t.Helper()
	var seen []string
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := m.kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + object + ",reason=" + reason})
		if err != nil {
			return false, nil
		}
		seen = seen[:0]
		for _, e := range evs.Items {
			times := []time.Time{e.EventTime.Time, e.LastTimestamp.Time, e.FirstTimestamp.Time}
			if e.Series != nil {
				times = append(times, e.Series.LastObservedTime.Time)
			}
			last := slices.MaxFunc(times, time.Time.Compare)
			seen = append(seen, fmt.Sprintf("%s (last %s)", e.Message, last.UTC().Format(time.RFC3339)))
			if !last.Before(since.Truncate(time.Second)) && all(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event on %s since %s naming %v; seen: %v", reason, object, since.UTC().Format(time.RFC3339), want, seen)
	}
}
