package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the running test cluster as seen by one test.
type cluster struct {
	kube    kubernetes.Interface
	dyn     dynamic.Interface
	ns      string // the test's namespace
	driver  string // namespace of the csi-thin release
	node    string
	poolDir string // the btrfs pool's mount point on this host
	// How long runPodOn waits for a pod to succeed (VM nodes, under
	// software emulation, need longer).
	podTimeout time.Duration
}

var (
	snapshotGVR    = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	thinVolumeGVR  = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinvolumes"}
	thinSnapGVR    = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinsnapshots"}
	busybox        = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
	classWFFC      = "csi-thin-btrfs"
	classImmediate = "csi-thin-btrfs-immediate"
)

func newCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("CSI_THIN_E2E") != "1" {
		t.Skip("cluster e2e: run test/e2e/run.sh (sets CSI_THIN_E2E=1)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c := &cluster{
		kube:       kubernetes.NewForConfigOrDie(cfg),
		dyn:        dynamic.NewForConfigOrDie(cfg),
		driver:     envOr("E2E_NAMESPACE", "csi-thin"),
		node:       envOr("E2E_NODE", "node1"),
		poolDir:    envOr("E2E_STATE_DIR", "/var/lib/csi-thin-e2e") + "/btrfs",
		podTimeout: 3 * time.Minute,
	}
	ns, err := c.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "csi-thin-e2e-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("namespace: %v", err)
	}
	c.ns = ns.Name
	return c
}

// step is one part of a scenario; later steps build on what it made.
type step struct {
	name string
	fn   func(*testing.T)
}

// runSteps runs the steps in order as subtests and stops at the first
// that fails.
func runSteps(t *testing.T, steps []step) {
	t.Helper()
	for _, s := range steps {
		if !t.Run(s.name, s.fn) {
			t.Fatalf("%s failed; later steps depend on it", s.name)
		}
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type pvcOpt func(*corev1.PersistentVolumeClaim)

func fromPVC(name string) pvcOpt {
	return func(p *corev1.PersistentVolumeClaim) {
		p.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: name}
	}
}

func fromSnapshot(name string) pvcOpt {
	g := "snapshot.storage.k8s.io"
	return func(p *corev1.PersistentVolumeClaim) {
		p.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &g, Kind: "VolumeSnapshot", Name: name}
	}
}

func (c *cluster) createPVC(t *testing.T, name, class, size string, opts ...pvcOpt) *corev1.PersistentVolumeClaim {
	t.Helper()
	p, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Create(context.Background(), c.claim(name, class, size, opts...), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create PVC %s: %v", name, err)
	}
	return p
}

// claim is the PVC createPVC creates.
func (c *cluster) claim(name, class, size string, opts ...pvcOpt) *corev1.PersistentVolumeClaim {
	p := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &class,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// waitBound waits until the claim is Bound and returns it.
func (c *cluster) waitBound(t *testing.T, name string, timeout time.Duration) *corev1.PersistentVolumeClaim {
	t.Helper()
	var pvc *corev1.PersistentVolumeClaim
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().PersistentVolumeClaims(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pvc = p
		return p.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		t.Fatalf("PVC %s not Bound after %s (phase %s): %s", name, timeout, phase(pvc), c.eventsFor(name))
	}
	return pvc
}

func phase(p *corev1.PersistentVolumeClaim) string {
	if p == nil {
		return "unknown"
	}
	return string(p.Status.Phase)
}

func (c *cluster) eventsFor(name string) string {
	evs, err := c.kube.CoreV1().Events(c.ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "\n  %s %s: %s", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

// runPod runs a busybox pod on the test node with the claims mounted at
// /<claim> and waits for it to succeed; it returns the pod's output.
func (c *cluster) runPod(t *testing.T, name, script string, claims ...string) string {
	t.Helper()
	return c.runPodOn(t, c.node, name, script, claims...)
}

// runPodOn is runPod on the given node ("": where the scheduler puts it).
func (c *cluster) runPodOn(t *testing.T, node, name, script string, claims ...string) string {
	t.Helper()
	c.startPodOn(t, node, name, script, claims...)
	return c.waitPodDone(t, name)
}

// waitPodDone waits (up to podTimeout) until the pod succeeded, deletes
// it and returns its output; a failed pod fails the test.
func (c *cluster) waitPodDone(t *testing.T, name string) string {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, c.podTimeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return true, nil
		case corev1.PodFailed:
			return false, fmt.Errorf("pod %s failed: %s", name, c.logs(name))
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s: %v %s", name, err, c.eventsFor(name))
	}
	out := c.logs(name)
	if err := c.kube.CoreV1().Pods(c.ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Errorf("delete pod %s: %v", name, err)
	}
	c.waitPodGone(t, name)
	return out
}

func (c *cluster) startPod(t *testing.T, name, script string, claims ...string) {
	t.Helper()
	c.startPodOn(t, c.node, name, script, claims...)
}

// startPodOn creates a busybox pod pinned to node ("": not pinned).
func (c *cluster) startPodOn(t *testing.T, node, name, script string, claims ...string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "c", Image: busybox, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
	if node != "" {
		pod.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	}
	for _, cl := range claims {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: cl, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: cl}}})
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: cl, MountPath: "/" + cl})
	}
	if _, err := c.kube.CoreV1().Pods(c.ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
}

// waitRunning waits until the pod runs.
func (c *cluster) waitRunning(t *testing.T, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s not running: %v %s", name, err, c.eventsFor(name))
	}
}

func (c *cluster) logs(name string) string {
	b, err := c.kube.CoreV1().Pods(c.ns).GetLogs(name, &corev1.PodLogOptions{}).Do(context.Background()).Raw()
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	return string(b)
}

func (c *cluster) waitPodGone(t *testing.T, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.kube.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s not gone: %v", name, err)
	}
}

func (c *cluster) createSnapshot(t *testing.T, name, pvc string) {
	t.Helper()
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": name, "namespace": c.ns},
		"spec":     map[string]any{"source": map[string]any{"persistentVolumeClaimName": pvc}},
	}}
	if _, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Create(context.Background(), vs, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create VolumeSnapshot %s: %v", name, err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(snapshotGVR).Namespace(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ready, _, _ := unstructured.NestedBool(u.Object, "status", "readyToUse")
		return ready, nil
	})
	if err != nil {
		t.Fatalf("VolumeSnapshot %s not readyToUse: %v %s", name, err, c.eventsFor(name))
	}
}

// countThin counts csi-thin resources cluster-wide.
func (c *cluster) countThin(t *testing.T, gvr schema.GroupVersionResource) int {
	t.Helper()
	l, err := c.dyn.Resource(gvr).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list %s: %v", gvr.Resource, err)
	}
	return len(l.Items)
}

// host runs a command on this host (the node) and returns its output.
func host(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}
