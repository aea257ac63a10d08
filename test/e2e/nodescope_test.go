package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

var thinNodeGVR = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinnodes"}

const nodeNameExtra = "authentication.kubernetes.io/node-name"

// TestNodeAgentScopedToItsNode plays a compromised node agent on the real
// cluster: with the token of the agent's pod (the one the kubelet
// projected into it, read from the kubelet's dir on this host), it tries
// to write the ThinVolume, ThinSnapshot and ThinNode of another node:
// status updates, finalizer removal, a create. The chart's
// ValidatingAdmissionPolicy must deny each (RBAC alone allows them), and
// allow the same writes on its own node's objects (as dry runs: the
// agent's real objects stay untouched). A token of the agent's service
// account that is not bound to a node is denied every write.
func TestNodeAgentScopedToItsNode(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	const sa = "csi-thin-node"
	other := "nodescope-other-node"

	pods, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
	if err != nil {
		t.Fatal(err)
	}
	var agent *corev1.Pod
	for i := range pods.Items {
		if pods.Items[i].Spec.NodeName == c.node && pods.Items[i].Status.Phase == corev1.PodRunning {
			agent = &pods.Items[i]
		}
	}
	if agent == nil {
		t.Fatalf("no running node agent pod on %s", c.node)
	}
	token := podToken(t, agent)

	// What the agent's token carries.
	agentCfg := rest.AnonymousClientConfig(cfg)
	agentCfg.BearerToken = token
	review, err := kubernetes.NewForConfigOrDie(agentCfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review with the agent's token: %v", err)
	}
	u := review.Status.UserInfo
	if u.Username != "system:serviceaccount:"+c.driver+":"+sa {
		t.Fatalf("agent's token authenticates as %s", u.Username)
	}
	if got := u.Extra[nodeNameExtra]; len(got) != 1 || got[0] != c.node {
		t.Fatalf("agent's token carries %s=%v, want [%s] (extra %v)", nodeNameExtra, got, c.node, u.Extra)
	}
	t.Logf("agent pod %s: token of %s with %s=%v", agent.Name, u.Username, nodeNameExtra, u.Extra[nodeNameExtra])

	// Objects of another node, and a ThinVolume of this node that the
	// agent does not watch (no node label), made by the admin.
	otherVol := backend.VolumeIDFor("nodescope-other")
	ownVol := backend.VolumeIDFor("nodescope-own")
	otherSnap := backend.SnapshotIDFor("nodescope-other")
	admin := c.dyn
	create := func(gvr schema.GroupVersionResource, obj map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: obj}
		u.SetAPIVersion("csi-thin.io/v1alpha1")
		if _, err := admin.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", gvr.Resource, u.GetName(), err)
		}
		t.Cleanup(func() {
			admin.Resource(gvr).Patch(context.Background(), u.GetName(), types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			admin.Resource(gvr).Delete(context.Background(), u.GetName(), metav1.DeleteOptions{})
		})
	}
	create(thinVolumeGVR, map[string]any{"kind": "ThinVolume",
		"metadata": map[string]any{"name": otherVol, "labels": map[string]any{"csi-thin.io/node": other}, "finalizers": []any{"csi-thin.io/node-cleanup"}},
		"spec":     map[string]any{"node": other, "requiredBytes": int64(backend.MiB), "accessType": "mount"}})
	create(thinVolumeGVR, map[string]any{"kind": "ThinVolume",
		"metadata": map[string]any{"name": ownVol, "finalizers": []any{"csi-thin.io/node-cleanup"}},
		"spec":     map[string]any{"node": c.node, "requiredBytes": int64(backend.MiB), "accessType": "mount"}})
	create(thinSnapGVR, map[string]any{"kind": "ThinSnapshot",
		"metadata": map[string]any{"name": otherSnap, "labels": map[string]any{"csi-thin.io/node": other}, "finalizers": []any{"csi-thin.io/node-cleanup"}},
		"spec":     map[string]any{"node": other, "sourceVolumeID": otherVol}})
	create(thinNodeGVR, map[string]any{"kind": "ThinNode", "metadata": map[string]any{"name": other}})

	type write struct {
		name     string
		gvr      schema.GroupVersionResource
		object   string
		patch    string
		status   bool
		createTN string // create a ThinNode of this name instead of patching
	}
	failed := `{"status":{"phase":"Failed","code":"Internal","message":"set by another node's agent"}}`
	strip := `{"metadata":{"finalizers":null}}`
	unhealthy := `{"status":{"healthy":false,"message":"set by another node's agent"}}`
	denied := []write{
		{name: "other node's volume marked Failed", gvr: thinVolumeGVR, object: otherVol, patch: failed, status: true},
		{name: "other node's volume finalizer stripped", gvr: thinVolumeGVR, object: otherVol, patch: strip},
		{name: "other node's snapshot marked Failed", gvr: thinSnapGVR, object: otherSnap, patch: failed, status: true},
		{name: "other node's snapshot finalizer stripped", gvr: thinSnapGVR, object: otherSnap, patch: strip},
		{name: "other node's ThinNode marked unhealthy", gvr: thinNodeGVR, object: other, patch: unhealthy, status: true},
		{name: "other node's ThinNode created", gvr: thinNodeGVR, createTN: other + "-2"},
	}
	allowed := []write{
		{name: "own volume's status", gvr: thinVolumeGVR, object: ownVol, patch: failed, status: true},
		{name: "own volume's finalizer", gvr: thinVolumeGVR, object: ownVol, patch: strip},
		{name: "own ThinNode's status", gvr: thinNodeGVR, object: c.node, patch: unhealthy, status: true},
	}
	do := func(dyn dynamic.Interface, w write) error {
		dry := []string{metav1.DryRunAll} // never change the real objects
		if w.createTN != "" {
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "csi-thin.io/v1alpha1", "kind": "ThinNode", "metadata": map[string]any{"name": w.createTN}}}
			_, err := dyn.Resource(w.gvr).Create(ctx, u, metav1.CreateOptions{DryRun: dry})
			return err
		}
		var sub []string
		if w.status {
			sub = []string{"status"}
		}
		_, err := dyn.Resource(w.gvr).Patch(ctx, w.object, types.MergePatchType, []byte(w.patch), metav1.PatchOptions{DryRun: dry}, sub...)
		return err
	}
	agentDyn := dynamic.NewForConfigOrDie(agentCfg)
	for _, w := range denied {
		// The admin may: the write itself is valid.
		if err := do(admin, w); err != nil {
			t.Fatalf("%s, as the admin: %v", w.name, err)
		}
		err := do(agentDyn, w)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "own node") {
			t.Errorf("%s, as node %s's agent: %v, want Forbidden by the own-node policy", w.name, c.node, err)
		}
	}
	for _, w := range allowed {
		if err := do(agentDyn, w); err != nil {
			t.Errorf("%s, as node %s's agent: %v, want allowed", w.name, c.node, err)
		}
	}

	// A token of the same service account that names no node.
	tr, err := c.kube.CoreV1().ServiceAccounts(c.driver).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unboundCfg := rest.AnonymousClientConfig(cfg)
	unboundCfg.BearerToken = tr.Status.Token
	unbound := dynamic.NewForConfigOrDie(unboundCfg)
	for _, w := range allowed {
		if err := do(unbound, w); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "names no node") {
			t.Errorf("%s with a token bound to no node: %v, want Forbidden", w.name, err)
		}
	}
	t.Logf("node scope: %d writes to node %s's objects denied to node %s's agent, %d to its own allowed", len(denied), other, c.node, len(allowed))
}

// podToken is the service-account token the kubelet projected into pod,
// read from the kubelet's dir on this host (the test runs on the node).
func podToken(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	kubeletDir := envOr("E2E_KUBELET_DIR", "/var/lib/kubelet")
	paths, _ := filepath.Glob(filepath.Join(kubeletDir, "pods", string(pod.UID), "volumes", "kubernetes.io~projected", "*", "token"))
	if len(paths) == 0 {
		t.Fatalf("no projected token of pod %s under %s", pod.Name, kubeletDir)
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
