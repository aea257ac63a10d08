package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testNodeLost: the second LVM node's kubelet and csi-thin agent die (as
// with a power cut) while a pod writes a claim's volume there, mounted
// (ext4 on a thin LV). The controller marks the node's volumes Lost, with
// a NodeLost Event on the claim and the lost-volumes gauge; the pod is
// force-deleted (its kubelet cannot confirm) and deleting the claim
// completes at once, while the ThinVolume and the logical volume wait for
// their node. When the kubelet is back, it rebuilds the dead pod's
// volume from the pod's directory, unpublishes and unstages it, and the
// agent removes the logical volume and the ThinVolume: nothing leaks, no
// manual step. The node's other volumes (the copies of the steps before)
// are Ready again.
func (l *lvmNodes) testNodeLost(t *testing.T) {
	ctx := context.Background()
	node := l.vms[1]
	// The cluster is torn down after TestLVMNodes: the short lost-after
	// stays (a rollout less).
	l.setLostAfter(t, lostAfterForTest)

	const claim, pod = "lvm-doomed", "lvm-doomed-user"
	l.createPVC(t, claim, classLVM, "1Gi")
	l.startPodOn(t, node, pod, fmt.Sprintf("echo '%s' > /%s/file && sync && sleep 3600", payload, claim), claim)
	l.waitRunning(t, pod)
	handle := volumeHandle(t, l.cluster, l.waitBound(t, claim, time.Minute))
	// kubectl exec on a VM node runs in the container and sees its volume
	// (it once ran in the VM's initramfs: test/vm/init.sh).
	var seen string
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(context.Context) (bool, error) {
		seen, _ = kubectl(t, "-n", l.ns, "exec", pod, "--", "cat", "/"+claim+"/file")
		return strings.Contains(seen, payload), nil
	})
	if err != nil {
		t.Errorf("kubectl exec into %s on %s: %q; want the file the pod wrote to its volume", pod, node, seen)
	}

	t.Logf("%s lost: %s", node, strings.TrimSpace(askVM(t, node, "kill-node")))
	start := time.Now()
	if err := l.waitVolumePhase(ctx, handle, "Lost", 4*time.Minute); err != nil {
		t.Fatalf("volume %s of node %s not Lost %s after the node died: %v", handle, node, time.Since(start).Round(time.Second), err)
	}
	t.Logf("volume Lost %s after the node died", time.Since(start).Round(time.Second))
	if msg := l.waitEvent(t, claim, "NodeLost", time.Minute); !strings.Contains(msg, handle) || !strings.Contains(msg, node) {
		t.Errorf("NodeLost event on the claim %q names neither the volume nor the node", msg)
	}
	if n := l.controllerGauge(ctx, "csi_thin_lost_volumes", node); n < 1 {
		t.Errorf("csi_thin_lost_volumes{node=%q} = %v with the node lost; want at least 1", node, n)
	}

	// The runbook: force-delete the pod, delete the claim; it completes
	// without the node.
	l.releaseLostClaim(t, pod, claim, handle)
	t.Logf("claim and PV deleted %s after the node died", time.Since(start).Round(time.Second))
	// Never deleted on a guess: the ThinVolume and the data wait.
	if _, err := l.dyn.Resource(thinVolumeGVR).Get(ctx, handle, metav1.GetOptions{}); err != nil {
		t.Errorf("ThinVolume of the lost node's volume gone before its node came back: %v", err)
	}
	if lvs := l.logicalVolumes(t, node); !slices.ContainsFunc(lvs, func(lv string) bool { return strings.Contains(lv, handle) }) {
		t.Errorf("volume %s deleted from %s while the node was away: %v", handle, node, lvs)
	}

	t.Logf("%s's kubelet started again (pid %s)", node, strings.TrimSpace(askVM(t, node, "start-kubelet")))
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 8*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := l.dyn.Resource(thinVolumeGVR).Get(ctx, handle, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("ThinVolume %s still there after its node came back: %v %s", handle, err, l.eventsFor(handle))
	}
	t.Logf("ThinVolume of the deleted claim gone %s after the node died", time.Since(start).Round(time.Second))
	if lvs := l.logicalVolumes(t, node); slices.ContainsFunc(lvs, func(lv string) bool { return strings.Contains(lv, handle) }) {
		t.Errorf("volume %s left on %s after the node came back: %v", handle, node, lvs)
	}
	l.waitNodeBack(t, node)
	// The node's volumes whose claims were kept are Ready again: the
	// agent found their logical volumes.
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		tvs, err := l.dyn.Resource(thinVolumeGVR).List(ctx, metav1.ListOptions{LabelSelector: "csi-thin.io/node=" + node})
		if err != nil || len(tvs.Items) == 0 {
			return false, nil
		}
		return !slices.ContainsFunc(tvs.Items, func(tv unstructured.Unstructured) bool {
			p, _, _ := unstructured.NestedString(tv.Object, "status", "phase")
			return p != "Ready"
		}), nil
	})
	if err != nil {
		t.Errorf("the volumes of %s not all Ready again after it came back: %v", node, err)
	}
	t.Logf("node back, its volumes Ready, %s after it died", time.Since(start).Round(time.Second))
}
