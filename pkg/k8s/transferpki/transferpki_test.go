package transferpki_test

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/k8s/transferpki"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

const (
	namespace = "csi-thin"
	agentSA   = "csi-thin-node"
	agentUser = "system:serviceaccount:" + namespace + ":" + agentSA
)

// as is a client acting as user on node (as the API server records a
// request made with a pod's service-account token), allowed to create
// and read certificate requests.
func as(t *testing.T, admin *kubernetes.Clientset, cfg *rest.Config, user, node string) *kubernetes.Clientset {
	t.Helper()
	ctx := context.Background()
	name := "csr-" + filepath.Base(user) + "-" + node
	_, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"certificatesigningrequests"},
			Verbs: []string{"create", "get", "list", "watch"}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Extra: map[string][]string{transferpki.NodeNameExtra: {node}}}
	return kubernetes.NewForConfigOrDie(c)
}

func countCSRs(t *testing.T, c *kubernetes.Clientset) int {
	t.Helper()
	l, err := c.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

// TestTrustAndNodeCertificates runs against a real kube-apiserver: the
// controller's trust is made once and published; a node agent gets a
// certificate for its own node through a CertificateSigningRequest and
// keeps key and certificate across a restart without asking again; a
// request for another node's identity, or by a user that is not the
// agents' service account, is denied and gets no certificate; a request
// for another signer is left alone; and two agents' certificates and the
// published token key carry a transfer.
func TestTrustAndNodeCertificates(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api := kubeapi.ForTest(t)
	admin := kubernetes.NewForConfigOrDie(api.Config)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	trust, err := transferpki.EnsureTrust(ctx, admin.CoreV1(), namespace)
	if err != nil {
		t.Fatal(err)
	}
	again, err := transferpki.EnsureTrust(ctx, admin.CoreV1(), namespace)
	if err != nil {
		t.Fatal(err)
	}
	if !again.CA.Cert.Equal(trust.CA.Cert) || !again.TokenKey.Equal(trust.TokenKey) {
		t.Fatal("a second EnsureTrust made a new CA or token key")
	}
	agentTrust, err := transferpki.LoadTrust(ctx, admin.CoreV1(), namespace)
	if err != nil {
		t.Fatal(err)
	}

	signer := &transferpki.Signer{Client: admin.CertificatesV1(), CA: trust.CA, AgentUser: agentUser}
	done := make(chan error, 1)
	go func() { done <- signer.Run(ctx) }()
	defer func() { cancel(); <-done }()

	identity := func(c *kubernetes.Clientset, node, dir string) *transferpki.NodeIdentity {
		return &transferpki.NodeIdentity{Client: c.CertificatesV1(), Node: node, Dir: dir, Roots: agentTrust.Roots, PollInterval: 100 * time.Millisecond}
	}
	ensure := func(id *transferpki.NodeIdentity) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return id.Ensure(ctx)
	}

	dirA, dirB := t.TempDir(), t.TempDir()
	agentA := as(t, admin, api.Config, agentUser, "node-a")
	a := identity(agentA, "node-a", dirA)
	if err := ensure(a); err != nil {
		t.Fatalf("node-a: %v", err)
	}
	pair, err := a.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if node, err := pki.NodeOf(pair.Leaf); err != nil || node != "node-a" {
		t.Fatalf("node-a's certificate names %q (%v)", node, err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: agentTrust.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dirA, "node.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	// A restarted agent uses what it has.
	n := countCSRs(t, admin)
	restarted := identity(agentA, "node-a", dirA)
	if err := ensure(restarted); err != nil {
		t.Fatal(err)
	}
	if again, _ := restarted.Certificate(); !again.Leaf.Equal(pair.Leaf) || countCSRs(t, admin) != n {
		t.Fatal("a restarted agent asked for a new certificate")
	}

	// node-b's agent asking for node-a's identity; someone else asking
	// for node-a's: denied, nothing issued, nothing written.
	for _, c := range []struct {
		name, reason string
		client       *kubernetes.Clientset
	}{
		{"a user that is not the agents' service account", "NotANodeAgent", as(t, admin, api.Config, agentUser+"x", "node-a")},
		{"node-b's agent", "NotThisNode", as(t, admin, api.Config, agentUser, "node-b")},
	} {
		dir := t.TempDir()
		err := ensure(identity(c.client, "node-a", dir))
		if !errors.Is(err, transferpki.ErrDenied) || !strings.Contains(err.Error(), c.reason) {
			t.Fatalf("%s asking for node-a: got %v, want %v (%s)", c.name, err, transferpki.ErrDenied, c.reason)
		}
		if _, err := os.Stat(filepath.Join(dir, "node.crt")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a certificate was written (%v)", c.name, err)
		}
	}
	l, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, csr := range l.Items {
		denied := false
		for _, cond := range csr.Status.Conditions {
			denied = denied || cond.Type == certv1.CertificateDenied
		}
		if denied && len(csr.Status.Certificate) > 0 {
			t.Fatalf("denied request %s has a certificate", csr.Name)
		}
	}

	// Another signer's request stays undecided.
	key, _ := pki.NewNodeKey()
	req, _ := pki.CSR("node-a", key)
	other, err := agentA.CertificatesV1().CertificateSigningRequests().Create(ctx, &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "other-signer"},
		Spec:       certv1.CertificateSigningRequestSpec{Request: req, SignerName: "example.com/other", Usages: []certv1.KeyUsage{certv1.UsageClientAuth}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := identity(as(t, admin, api.Config, agentUser, "node-b"), "node-b", dirB)
	if err := ensure(b); err != nil {
		t.Fatalf("node-b: %v", err)
	}
	if got, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, other.Name, metav1.GetOptions{}); err != nil ||
		len(got.Status.Conditions) != 0 || len(got.Status.Certificate) != 0 {
		t.Fatalf("another signer's request was decided: %+v %v", got.Status, err)
	}

	// The two identities and the published token key carry a transfer.
	snap := backend.SnapshotIDFor("s")
	src := &transfertest.MemPool{Objects: map[string][]byte{snap: []byte("payload of the snapshot")}}
	dst := &transfertest.MemPool{Objects: map[string][]byte{}}
	srv := transfertest.Serve(t, t, transfer.ServerConfig{Node: "node-a", Pool: src, Tokens: agentTrust.Tokens,
		UsedTokensDir: t.TempDir(), Certificate: a.Certificate, ClientCAs: agentTrust.Roots})
	client, err := transfer.NewClient(transfer.ClientConfig{Certificate: b.Certificate, RootCAs: agentTrust.Roots})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := transfer.NewIssuer(trust.TokenKey).Mint(transfer.Claims{Transfer: "t1", Snapshot: snap, Source: "node-a", Target: "node-b"}, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v, err := client.ReceiveVolume(ctx, dst, srv.Addr, tok, backend.VolumeRequest{ID: backend.VolumeIDFor("v"), Name: "v"})
	if err != nil {
		t.Fatalf("transfer with issued identities: %v", err)
	}
	if string(dst.Objects[v.ID]) != "payload of the snapshot" {
		t.Fatalf("received %q", dst.Objects[v.ID])
	}
}
