package rbac

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	"sigs.k8s.io/yaml"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
	"github.com/csi-thin/csi-thin/internal/testenv"
)

// k8sBin holds etcd and kube-apiserver (test/cluster/build.sh).
var k8sBin = kubeapi.BinDir()

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startAPIServer runs etcd and kube-apiserver on loopback (no kubelet,
// no controllers) and returns an admin config.
func startAPIServer(t *testing.T) *rest.Config {
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(k8sBin, b)); err != nil {
			testenv.Missing(t, b+" (test/cluster/build.sh k8s)")
		}
	}
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": []byte(`admin-token,admin,admin,"system:masters"` + "\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	client, peer, metrics, secure := freePort(t), freePort(t), freePort(t), freePort(t)
	url := func(p int) string { return fmt.Sprintf("http://127.0.0.1:%d", p) }
	start := func(name string, args ...string) {
		cmd := exec.Command(filepath.Join(k8sBin, name), args...)
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); log.Close() })
	}
	start("etcd", "--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", url(client), "--advertise-client-urls", url(client),
		"--listen-peer-urls", url(peer), "--initial-advertise-peer-urls", url(peer),
		"--initial-cluster", "default="+url(peer), "--listen-metrics-urls", url(metrics),
		"--unsafe-no-fsync", "--log-level", "warn")
	start("kube-apiserver", "--etcd-servers", url(client), "--secure-port", fmt.Sprint(secure),
		"--bind-address", "127.0.0.1", "--advertise-address", "10.250.1.1", "--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"), "--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"), "--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.250.0.0/24", "--profiling=false")
	cfg := &rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", secure), BearerToken: "admin-token",
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 50, Burst: 100}
	kube := kubernetes.NewForConfigOrDie(cfg)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background()); err == nil {
			return cfg
		} else if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "kube-apiserver.log"))
			t.Fatalf("kube-apiserver not ready: %v\n%s", err, out[max(0, len(out)-3000):])
		}
	}
}

var kindGVR = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition":         {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"ServiceAccount":                   {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"ValidatingAdmissionPolicy":        {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
	"ValidatingAdmissionPolicyBinding": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
}

var (
	thinVolumes   = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinvolumes"}
	thinSnapshots = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinsnapshots"}
	thinNodes     = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thinnodes"}
	thinGroups    = schema.GroupVersionResource{Group: "csi-thin.io", Version: "v1alpha1", Resource: "thingroupsnapshots"}
)

// TestOwnNodePolicyOnAPIServer applies the chart's CRDs, node agent RBAC
// and own-node policy to a real kube-apiserver and writes, with a token
// of the node agent's service account bound to a pod on node-a (as the
// kubelet's projected token is), to objects of node-a and node-b: every
// write to node-b's ThinVolume, ThinSnapshot, ThinGroupSnapshot and ThinNode (status,
// finalizers, create) is Forbidden by the policy, while the admin may
// make it; the same writes to node-a's objects are allowed; a token of
// the service account bound to no pod may write nothing.
// TestNodeAgentScopedToItsNode (test/e2e) repeats it on the full cluster
// with the token the kubelet really projected.
func TestOwnNodePolicyOnAPIServer(t *testing.T) {
	cfg := startAPIServer(t)
	ctx := context.Background()
	kube := kubernetes.NewForConfigOrDie(cfg)
	admin := dynamic.NewForConfigOrDie(cfg)
	const ns, sa = "csi-thin", "csi-thin-node"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	docs, source := render(t)
	applied := 0
	for _, d := range docs {
		var o object
		if err := yaml.Unmarshal(d, &o); err != nil {
			t.Fatal(err)
		}
		gvr, ok := kindGVR[o.Kind]
		if !ok || o.Kind != "CustomResourceDefinition" && !strings.HasPrefix(o.Metadata.Name, sa) {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(d, &u.Object); err != nil {
			t.Fatal(err)
		}
		var err error
		if o.Kind == "ServiceAccount" {
			_, err = admin.Resource(gvr).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
		} else {
			_, err = admin.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("apply %s %s from %s: %v", o.Kind, o.Metadata.Name, source, err)
		}
		applied++
	}
	t.Logf("applied %d objects from %s", applied, source)

	nodes := map[string]types.UID{}
	for _, n := range []string{"node-a", "node-b"} {
		node, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodes[n] = node.UID
	}
	var pod *corev1.Pod
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		p, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent"},
			Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
		if err == nil {
			pod = p
			break
		}
		if time.Now().After(deadline) { // the service account admission waits for the SA's cache
			t.Fatal(err)
		}
	}
	token := func(bound bool) dynamic.Interface {
		req := &authnv1.TokenRequest{}
		if bound {
			req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr, err := kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := rest.AnonymousClientConfig(cfg)
		c.BearerToken = tr.Status.Token
		if bound {
			review, err := kubernetes.NewForConfigOrDie(c).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := review.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != "node-a" {
				t.Fatalf("pod-bound token's extra %v: want node-name [node-a]", review.Status.UserInfo.Extra)
			}
		}
		return dynamic.NewForConfigOrDie(c)
	}
	agent, unbound := token(true), token(false)

	vol := func(n string) string { return "v-" + strings.Repeat(n[len(n)-1:], 32) } // v-aaaa…, v-bbbb…
	mk := func(gvr schema.GroupVersionResource, obj map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: obj}
		u.SetAPIVersion("csi-thin.io/v1alpha1")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			_, err := admin.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
			if err == nil {
				return
			}
			if time.Now().After(deadline) { // CRDs become served shortly after creation
				t.Fatalf("create %s: %v", gvr.Resource, err)
			}
		}
	}
	fin := []any{"csi-thin.io/node-cleanup"}
	for _, n := range []string{"node-a", "node-b"} {
		mk(thinVolumes, map[string]any{"kind": "ThinVolume", "metadata": map[string]any{"name": vol(n), "finalizers": fin},
			"spec": map[string]any{"node": n, "requiredBytes": int64(1 << 20), "accessType": "mount"}})
		mk(thinSnapshots, map[string]any{"kind": "ThinSnapshot", "metadata": map[string]any{"name": "s" + vol(n)[1:], "finalizers": fin},
			"spec": map[string]any{"node": n, "sourceVolumeID": vol(n)}})
		mk(thinGroups, map[string]any{"kind": "ThinGroupSnapshot", "metadata": map[string]any{"name": "g" + vol(n)[1:], "finalizers": fin},
			"spec": map[string]any{"node": n, "sourceVolumeIDs": []any{vol(n)}}})
		mk(thinNodes, map[string]any{"kind": "ThinNode", "metadata": map[string]any{"name": n}})
	}
	type write struct {
		gvr         schema.GroupVersionResource
		name, patch string
		status      bool
	}
	failed := `{"status":{"phase":"Failed","message":"set by another node's agent"}}`
	strip := `{"metadata":{"finalizers":null}}`
	writes := func(n string) []write {
		return []write{
			{thinVolumes, vol(n), failed, true},
			{thinVolumes, vol(n), strip, false},
			{thinSnapshots, "s" + vol(n)[1:], failed, true},
			{thinSnapshots, "s" + vol(n)[1:], strip, false},
			{thinGroups, "g" + vol(n)[1:], failed, true},
			{thinGroups, "g" + vol(n)[1:], strip, false},
			{thinNodes, n, `{"status":{"healthy":false,"message":"set by another node's agent"}}`, true},
		}
	}
	do := func(c dynamic.Interface, w write) error {
		var sub []string
		if w.status {
			sub = []string{"status"}
		}
		_, err := c.Resource(w.gvr).Patch(ctx, w.name, types.MergePatchType, []byte(w.patch), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, sub...)
		return err
	}
	create := func(c dynamic.Interface, name string) error {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "csi-thin.io/v1alpha1", "kind": "ThinNode", "metadata": map[string]any{"name": name}}}
		_, err := c.Resource(thinNodes).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	denied := func(err error, why string) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), why)
	}

	// The policy takes effect a moment after it is created.
	first := writes("node-b")[0]
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		err := do(agent, first)
		if denied(err, "own node") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-a's agent marking node-b's volume Failed: %v, want Forbidden by the own-node policy", err)
		}
	}
	for _, w := range writes("node-b") {
		if err := do(admin, w); err != nil {
			t.Errorf("admin: %s %s %s: %v", w.gvr.Resource, w.name, w.patch, err)
		}
		if err := do(agent, w); !denied(err, "own node") {
			t.Errorf("node-a's agent: %s %s %s (status %v): %v, want Forbidden", w.gvr.Resource, w.name, w.patch, w.status, err)
		}
	}
	if err := create(agent, "node-c"); !denied(err, "own node") {
		t.Errorf("node-a's agent creating node-c's ThinNode: %v, want Forbidden", err)
	}
	for _, w := range writes("node-a") {
		if err := do(agent, w); err != nil {
			t.Errorf("node-a's agent on its own %s %s %s: %v, want allowed", w.gvr.Resource, w.name, w.patch, err)
		}
		if err := do(unbound, w); !denied(err, "names no node") {
			t.Errorf("token bound to no pod: %s %s: %v, want Forbidden", w.gvr.Resource, w.name, err)
		}
	}
	if err := admin.Resource(thinNodes).Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := create(agent, "node-a"); err != nil {
		t.Errorf("node-a's agent creating its own ThinNode: %v", err)
	}
}
