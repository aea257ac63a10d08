package e2e

import (
	"context"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/csi-thin/csi-thin/pkg/k8s/transferpki"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

// TestTransferIdentities: with the chart's defaults, the controller
// publishes the transfer trust and every node agent holds a transfer
// certificate for its own node, issued through a CertificateSigningRequest
// that the API server recorded as made by the agents' service account
// from that node; a request for another node's identity made with a node
// agent's own token is denied and gets no certificate.
func TestTransferIdentities(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	var trust *transferpki.AgentTrust
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var err error
		if trust, err = transferpki.LoadTrust(ctx, c.kube.CoreV1(), c.driver); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("transfer trust: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	pods, err := c.kube.CoreV1().Pods(c.driver).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
	if err != nil {
		t.Fatal(err)
	}
	agents := map[string]*corev1.Pod{}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Status.Phase == corev1.PodRunning {
			agents[p.Spec.NodeName] = p
		}
	}
	if len(agents) == 0 {
		t.Fatal("no running node agent")
	}
	agentUser := "system:serviceaccount:" + c.driver + ":csi-thin-node"
	for node := range agents {
		var issued *certv1.CertificateSigningRequest
		for issued == nil {
			list, err := c.kube.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range list.Items {
				csr := &list.Items[i]
				if csr.Spec.SignerName != transferpki.SignerName || len(csr.Status.Certificate) == 0 {
					continue
				}
				cert, err := pki.ParseCertificate(csr.Status.Certificate)
				if err != nil {
					t.Fatalf("certificate of %s: %v", csr.Name, err)
				}
				if got, _ := pki.NodeOf(cert); got != node {
					continue
				}
				if _, err := cert.Verify(x509.VerifyOptions{Roots: trust.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Fatalf("certificate of %s does not chain to the published CA: %v", node, err)
				}
				if csr.Spec.Username != agentUser || strings.Join(csr.Spec.Extra[transferpki.NodeNameExtra], ",") != node {
					t.Fatalf("certificate of %s issued for user %q from node %v", node, csr.Spec.Username, csr.Spec.Extra[transferpki.NodeNameExtra])
				}
				issued = csr
			}
			if issued == nil {
				if time.Now().After(deadline) {
					t.Fatalf("no transfer certificate issued for node %s", node)
				}
				time.Sleep(2 * time.Second)
			}
		}
		t.Logf("node %s: transfer certificate issued (%s)", node, issued.Name)
	}

	// A node agent's own token asking for another node's identity.
	agent := agents[c.node]
	if agent == nil {
		t.Fatalf("no running node agent on %s", c.node)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := rest.AnonymousClientConfig(cfg)
	agentCfg.BearerToken = podToken(t, agent)
	id := &transferpki.NodeIdentity{Client: kubernetes.NewForConfigOrDie(agentCfg).CertificatesV1(), Node: "transfer-other-node",
		Dir: t.TempDir(), Roots: trust.Roots, PollInterval: time.Second}
	ictx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = id.Ensure(ictx)
	if err == nil || !strings.Contains(err.Error(), "NotThisNode") {
		t.Fatalf("agent of %s asking for another node's identity: got %v, want a NotThisNode denial", agent.Spec.NodeName, err)
	}
	if _, cerr := id.Certificate(); cerr == nil {
		t.Fatal("a denied identity has a certificate")
	}
	t.Logf("agent of %s asking for another node's identity: %v", agent.Spec.NodeName, err)
}
