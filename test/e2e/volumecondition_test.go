package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testVolumeCondition deletes the subvolume behind a running pod's claim
// and waits for the kubelet (CSIVolumeHealth on, test/cluster/up.sh) to
// turn NodeGetVolumeStats' condition into a Warning event on the pod, and
// for csi-thin's own Warning on the claim.
func testVolumeCondition(t *testing.T, c *cluster) {
	ctx := context.Background()
	c.createPVC(t, "health", classWFFC, "1Gi")
	c.startPod(t, "health-user", "echo up > /health/f && sleep 3600", "health")
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, "health-user", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod health-user not running: %v %s", err, c.eventsFor("health-user"))
	}
	id := volumeHandle(t, c, c.waitBound(t, "health", time.Minute))
	start := time.Now()
	host(t, "btrfs", "subvolume", "delete", filepath.Join(c.poolDir, "csi-thin", "volumes", id))

	var msg string
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := c.kube.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.name=health-user,reason=VolumeConditionAbnormal,type=Warning"})
		if err != nil || len(evs.Items) == 0 {
			return false, nil
		}
		msg = evs.Items[0].Message
		return true, nil
	})
	if err != nil {
		t.Fatalf("no VolumeConditionAbnormal event on the pod after %s: %s", time.Since(start).Round(time.Second), c.eventsFor("health-user"))
	}
	t.Logf("pod event after %s: %s", time.Since(start).Round(time.Second), msg)
	if !strings.Contains(msg, "Volume health: StorageMissing: ") {
		t.Errorf("event %q does not name the volume and the reason StorageMissing", msg)
	}
	// The claim is told too: the node agent's health sweep marks the
	// ThinVolume, and the controller posts on the PVC (and PV).
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := c.kube.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=health,reason=VolumeConditionAbnormal,type=Warning"})
		if err != nil || len(evs.Items) == 0 {
			return false, nil
		}
		msg = evs.Items[0].Message
		return true, nil
	})
	if err != nil {
		t.Fatalf("no VolumeConditionAbnormal event on the claim after %s: %s", time.Since(start).Round(time.Second), c.eventsFor("health"))
	}
	t.Logf("claim event after %s: %s", time.Since(start).Round(time.Second), msg)
	if !strings.Contains(msg, id) || !strings.Contains(msg, "StorageMissing") {
		t.Errorf("claim event %q does not name the volume and the reason StorageMissing", msg)
	}
	if err := c.kube.CoreV1().Pods(c.ns).Delete(ctx, "health-user", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Errorf("delete pod: %v", err)
	}
	c.waitPodGone(t, "health-user")
	c.deletePVCs(t, "health")
}
