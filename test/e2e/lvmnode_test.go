package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The LVM nodes' StorageClass and the label test/cluster gives VM nodes
// (values-e2e-vm.yaml's pool group selects them by it).
const (
	classLVM     = "csi-thin-lvm"
	lvmNodeLabel = "csi-thin.io/test-backend=lvmthin"
)

// TestLVMNodes: the LVM thin backend in the cluster (test/e2e/run.sh with
// E2E_VM_NODES): nodes that are QEMU VMs, whose kernel has dm-thin, joined
// to the test cluster (test/cluster/vm-node.sh), each with an LVM thin
// pool on its own disk. A pod writes a claim of the LVM StorageClass
// (ext4, mounted with discard); its snapshot restored and its clone on
// the same node are thin snapshots with the same data; on a second LVM
// node, a restore and a clone are copied there by the node agents,
// streaming only the volume's mapped blocks, also when the receiving or
// the sending agent is killed mid-copy, and a copy is cancelled by
// deleting its claim; a snapshot exported to S3 and a second one exported
// incrementally are restored on the other node; that node lost (its
// kubelet and agent killed while a pod uses a volume there) releases the
// claim and cleans up when it is back (testNodeLost); deleting
// everything leaves no logical volume but the pool. Skips when
// the cluster has no LVM node.
func TestLVMNodes(t *testing.T) {
	c := newCluster(t)
	vms := c.nodesLabelled(t, lvmNodeLabel)
	if len(vms) == 0 {
		t.Skip("no LVM node: run.sh with E2E_VM_NODES>=1")
	}
	t.Logf("namespace %s, LVM nodes %v", c.ns, vms)
	// A copy between two emulated VMs took 2-5 minutes before its pod ran,
	// more while other VMs share the cores.
	c.podTimeout = 15 * time.Minute
	l := &lvmNodes{cluster: c, vms: vms}
	runSteps(t, []step{
		{"SnapshotRestoreAndCloneOnOneNode", l.testSameNode},
		{"RestoreAndCloneCopiedToAnotherNode", l.testCopied},
		{"CopyMadeAgainAfterItsSourceAgentKilled", l.testSourceKilled},
		{"CopyCancelledByDeletingItsClaim", l.testCopyCancelled},
		{"ExportedToS3AndRestoredOnTheOtherNode", l.testExported},
		{"LostNodeReleasesItsClaims", l.testNodeLost},
		{"NothingLeft", l.testNothingLeft},
	})
}

type lvmNodes struct {
	*cluster
	vms     []string          // the LVM nodes, sorted
	sum     string            // sha256 of the source's data
	handles map[string]string // claim -> volume ID, of every claim made
}

// nodesLabelled lists the nodes with the label (key=value), sorted.
func (c *cluster) nodesLabelled(t *testing.T, selector string) []string {
	t.Helper()
	l, err := c.kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatalf("list nodes %s: %v", selector, err)
	}
	var names []string
	for _, n := range l.Items {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	return names
}

const lvmDataMiB = 48

// testSameNode: source, snapshot, restore and clone on the first LVM node.
func (l *lvmNodes) testSameNode(t *testing.T) {
	node := l.vms[0]
	l.handles = map[string]string{}
	l.createPVC(t, "lvm-src", classLVM, "1Gi")
	out := l.runPodOn(t, node, "lvm-src-writer", fmt.Sprintf(
		"grep ' /lvm-src ' /proc/mounts && head -c %d /dev/urandom > /lvm-src/data && sync && sha256sum /lvm-src/data | cut -d' ' -f1",
		lvmDataMiB<<20), "lvm-src")
	l.sum = lastLine(out)
	if len(l.sum) != 64 {
		t.Fatalf("source sha256 %q (pod output %q)", l.sum, out)
	}
	// The claim's filesystem is ext4, mounted with discard (freed blocks go
	// back to the thin pool).
	mount := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if len(mount) < 4 || mount[2] != "ext4" || !strings.Contains(","+mount[3]+",", ",discard,") {
		t.Errorf("lvm-src is mounted as %q; want ext4 with discard", mount)
	}
	l.expectLVMVolume(t, "lvm-src", node, false)
	l.createSnapshot(t, "lvm-snap", "lvm-src")
	l.createPVC(t, "lvm-restore", classLVM, "1Gi", fromSnapshot("lvm-snap"))
	l.createPVC(t, "lvm-clone", classLVM, "1Gi", fromPVC("lvm-src"))
	out = l.runPodOn(t, node, "lvm-near-reader",
		"sha256sum /lvm-restore/data /lvm-clone/data | cut -d' ' -f1", "lvm-restore", "lvm-clone")
	if got := strings.Fields(out); len(got) != 2 || got[0] != l.sum || got[1] != l.sum {
		t.Errorf("the restore and the clone read sha256 %q; the source wrote %s", got, l.sum)
	}
	// On the source's node both are thin snapshots: nothing was copied.
	l.expectLVMVolume(t, "lvm-restore", node, false)
	l.expectLVMVolume(t, "lvm-clone", node, false)
}

// testCopied: a restore and a clone whose pod must run on the second LVM
// node are copied there: the ThinVolume reports a received transfer of
// the mapped data only (the 48 MiB written and ext4's metadata, not the
// 1 GiB of the volume) and the copies read the source's sha256. The
// receiving agent is SIGKILLed while the clone's copy is in progress: its
// container restarts and the copy is made again (a second attempt), and
// testNothingLeft finds nothing the killed attempt left behind.
func (l *lvmNodes) testCopied(t *testing.T) {
	if len(l.vms) < 2 {
		t.Skipf("one LVM node (%v): run.sh with E2E_VM_NODES=2", l.vms)
	}
	other := l.vms[1]
	l.createPVC(t, "lvm-far-restore", classLVM, "1Gi", fromSnapshot("lvm-snap"))
	l.createPVC(t, "lvm-far-clone", classLVM, "1Gi", fromPVC("lvm-src"))
	l.startPodOn(t, other, "lvm-far-reader",
		"sha256sum /lvm-far-restore/data /lvm-far-clone/data | cut -d' ' -f1", "lvm-far-restore", "lvm-far-clone")
	killed := l.waitCopyInProgress(t, "lvm-far-clone", 5*time.Minute)
	killAgent(t, other)
	out := l.waitPodDone(t, "lvm-far-reader")
	if got := strings.Fields(out); len(got) != 2 || got[0] != l.sum || got[1] != l.sum {
		t.Errorf("the copies on %s read sha256 %q; the source wrote %s", other, got, l.sum)
	}
	l.expectLVMVolume(t, "lvm-far-restore", other, true)
	l.expectLVMVolume(t, "lvm-far-clone", other, true)
	tv, err := l.dyn.Resource(thinVolumeGVR).Get(context.Background(), killed, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "attempts"); n < 2 {
		t.Errorf("the copy %s whose receiving agent was killed took %d attempt(s); want a second one after the restart", killed, n)
	}
}

// testSourceKilled: a clone whose pod must run on the second LVM node is
// being copied there when the csi-thin agent of its source's node (the
// first LVM node, which serves the stream) is SIGKILLed: its container
// restarts, the copy is made again (a second attempt) and reads the
// source's sha256; testNothingLeft finds nothing the cut stream left on
// either node.
func (l *lvmNodes) testSourceKilled(t *testing.T) {
	if len(l.vms) < 2 {
		t.Skipf("one LVM node (%v): run.sh with E2E_VM_NODES=2", l.vms)
	}
	l.createPVC(t, "lvm-far-clone2", classLVM, "1Gi", fromPVC("lvm-src"))
	l.startPodOn(t, l.vms[1], "lvm-far-reader2", "sha256sum /lvm-far-clone2/data | cut -d' ' -f1", "lvm-far-clone2")
	killed := l.waitCopyInProgress(t, "lvm-far-clone2", 5*time.Minute)
	killAgent(t, l.vms[0])
	if got := lastLine(l.waitPodDone(t, "lvm-far-reader2")); got != l.sum {
		t.Errorf("the copy on %s reads sha256 %q; the source wrote %s", l.vms[1], got, l.sum)
	}
	l.expectLVMVolume(t, "lvm-far-clone2", l.vms[1], true)
	tv, err := l.dyn.Resource(thinVolumeGVR).Get(context.Background(), killed, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "attempts"); n < 2 {
		t.Errorf("the copy %s whose source agent was killed took %d attempt(s); want a second one after the restart", killed, n)
	}
}

// testCopyCancelled: a clone whose pod must run on the second LVM node is
// being copied there when its pod and claim are deleted: the copy stops
// and its ThinVolume goes; testNothingLeft then finds neither the
// receiving logical volume on the target nor the snapshot taken for the
// copy on the source.
func (l *lvmNodes) testCopyCancelled(t *testing.T) {
	if len(l.vms) < 2 {
		t.Skipf("one LVM node (%v): run.sh with E2E_VM_NODES=2", l.vms)
	}
	l.createPVC(t, "lvm-cancelled", classLVM, "1Gi", fromPVC("lvm-src"))
	l.startPodOn(t, l.vms[1], "lvm-cancelled-user", "true", "lvm-cancelled")
	l.cancelCopyInProgress(t, "lvm-cancelled", "lvm-cancelled-user", 5*time.Minute)
}

// expectLVMVolume checks that the claim's volume lives on node, on an LVM
// node, and whether it was copied there from the first LVM node (then its
// transfer was received whole, and carried the written data but far less
// than the volume's size).
func (l *lvmNodes) expectLVMVolume(t *testing.T, claim, node string, copied bool) {
	t.Helper()
	tvNode, pvNode := l.volumeNode(t, claim)
	if tvNode != node || pvNode != node {
		t.Errorf("%s: ThinVolume on %q, PV pinned to %q; want %s", claim, tvNode, pvNode, node)
	}
	p := l.waitBound(t, claim, time.Minute)
	pv, err := l.kube.CoreV1().PersistentVolumes().Get(context.Background(), p.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := pv.Spec.CSI.VolumeHandle
	l.handles[claim] = id
	tn, err := l.dyn.Resource(thinNodeGVR).Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ThinNode %s: %v", node, err)
	}
	if b, _, _ := unstructured.NestedString(tn.Object, "status", "backend"); b != "lvmthin" {
		t.Errorf("ThinNode %s reports backend %q; want lvmthin", node, b)
	}
	tv, err := l.dyn.Resource(thinVolumeGVR).Get(context.Background(), id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	phase, _, _ := unstructured.NestedString(tv.Object, "status", "transfer", "phase")
	done, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesDone")
	total, _, _ := unstructured.NestedInt64(tv.Object, "status", "transfer", "bytesTotal")
	if !copied {
		if phase != "" {
			t.Errorf("%s: a transfer %q on the source's own node; want a thin snapshot", claim, phase)
		}
		return
	}
	srcNode, _, _ := unstructured.NestedString(tv.Object, "spec", "source", "node")
	t.Logf("%s: copied from %s, %s, %d of %d bytes", claim, srcNode, phase, done, total)
	if srcNode != l.vms[0] || phase != "Received" || done < total {
		t.Errorf("%s: copied from %q, transfer %q with %d of %d bytes; want from %s, Received whole", claim, srcNode, phase, done, total, l.vms[0])
	}
	if total < lvmDataMiB<<20 || total > 4*lvmDataMiB<<20 {
		t.Errorf("%s: the copy streamed %d bytes; want the %d MiB written plus metadata, not the 1 GiB volume", claim, total, lvmDataMiB)
	}
}

// testExported: a claim written on the first LVM node is snapshotted with
// the export class, exported to a real SeaweedFS, and deleted with its
// snapshot (which leaves the node's pool); a pre-provisioned
// VolumeSnapshotContent naming the export restores it on the second LVM
// node with the source's sha256 (TestSnapshotExportS3's flow, btrfs
// there).
func (l *lvmNodes) testExported(t *testing.T) {
	if len(l.vms) < 2 {
		t.Skipf("one LVM node (%v): run.sh with E2E_VM_NODES=2", l.vms)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	store := l.startExportStore(t, ctx)
	l.exportAndRestore(t, ctx, store, exportCase{prefix: "lvm-exp", class: classLVM, writeOn: l.vms[0], readOn: l.vms[1],
		snapshotGone: func(t *testing.T, id string) {
			if lvs := l.logicalVolumes(t, l.vms[0]); strings.Contains(strings.Join(lvs, " "), id) {
				t.Errorf("%s: the exported snapshot %s is still in the pool: %v", l.vms[0], id, lvs)
			}
		}})
}

// testNothingLeft: once the snapshot and the claims are deleted, no
// csi-thin resource is left and each LVM node's volume group holds only
// its thin pool.
func (l *lvmNodes) testNothingLeft(t *testing.T) {
	ctx := context.Background()
	if err := l.dyn.Resource(snapshotGVR).Namespace(l.ns).Delete(ctx, "lvm-snap", metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete snapshot: %v", err)
	}
	var claims []string
	for claim := range l.handles {
		claims = append(claims, claim)
	}
	l.deletePVCs(t, claims...)
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pvs, err := l.kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		return len(pvs.Items) == 0 && l.countThin(t, thinVolumeGVR) == 0 && l.countThin(t, thinSnapGVR) == 0, nil
	})
	if err != nil {
		t.Fatalf("PVs or csi-thin resources left: %d ThinVolumes, %d ThinSnapshots",
			l.countThin(t, thinVolumeGVR), l.countThin(t, thinSnapGVR))
	}
	for _, node := range l.vms {
		lvs := l.logicalVolumes(t, node)
		if len(lvs) != 1 || lvs[0] != "csi-thin/pool" {
			t.Errorf("%s: logical volumes left: %v; want only csi-thin/pool", node, lvs)
		}
		for claim, id := range l.handles {
			if strings.Contains(strings.Join(lvs, " "), id) {
				t.Errorf("%s: the volume of %s (%s) is still there", node, claim, id)
			}
		}
	}
	if err := l.kube.CoreV1().Namespaces().Delete(ctx, l.ns, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete namespace: %v", err)
	}
}

// askVM has the VM node itself do what (test/cluster/vm-node.sh, through
// its work dir: WHAT.request, answered in WHAT.out) and returns its answer.
func askVM(t *testing.T, node, what string) string {
	t.Helper()
	dir := filepath.Join(envOr("E2E_K8S_RUN", "/var/run/k8s-recipe"), "vms", node)
	out := filepath.Join(dir, what+".out")
	if err := os.Remove(out); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, what+".request"), nil, 0o644); err != nil {
		t.Fatalf("ask %s for %s: %v", node, what, err)
	}
	var b []byte
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		var err error
		b, err = os.ReadFile(out)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("%s did not answer %s (%s)", node, what, out)
	}
	return string(b)
}

// killAgent SIGKILLs the csi-thin agent in the VM node; its DaemonSet's
// container restarts.
func killAgent(t *testing.T, node string) {
	t.Helper()
	pids := strings.TrimSpace(askVM(t, node, "kill-agent"))
	if pids == "none" || pids == "" {
		t.Fatalf("%s runs no csi-thin agent to kill", node)
	}
	t.Logf("killed %s's csi-thin agent (pid %s)", node, pids)
}

// logicalVolumes asks the VM node itself which logical volumes LVM holds,
// as VG/LV.
func (l *lvmNodes) logicalVolumes(t *testing.T, node string) []string {
	t.Helper()
	b := askVM(t, node, "lvs")
	if strings.Contains(b, "lvs failed") {
		t.Fatalf("%s: lvs: %s", node, b)
	}
	var lvs []string
	for _, line := range strings.Split(strings.TrimSpace(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			lvs = append(lvs, f[0]+"/"+f[1])
		}
	}
	return lvs
}
