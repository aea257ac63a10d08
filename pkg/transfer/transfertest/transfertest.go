// Package transfertest sets up what transfers between node agents need
// in tests: a transfer CA with node certificates, and the controller's
// token key.
package transfertest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

// Cluster is one cluster's transfer trust: its CA and token key.
type Cluster struct {
	CA     *pki.CA
	Issuer *transfer.Issuer
	Tokens *transfer.Verifier
}

// NewCluster makes a CA and a token key.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	ca, err := pki.NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Cluster{CA: ca, Issuer: transfer.NewIssuer(priv), Tokens: transfer.NewVerifier(pub)}
}

// Roots is the pool of the cluster's CA.
func (c *Cluster) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pool, err := pki.Pool(c.CA.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// NodeCertificate is a key pair for node signed by the cluster's CA, made
// as an agent would: its own key, a CSR, the CA's signature.
func (c *Cluster) NodeCertificate(t testing.TB, node string) func() (*tls.Certificate, error) {
	t.Helper()
	key, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CSR(node, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := c.CA.SignNode(node, csr, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return func() (*tls.Certificate, error) { return &pair, nil }
}

// Token mints a token for snapshot (and parent) from source to target,
// valid for ttl.
func (c *Cluster) Token(t testing.TB, transferID, snapshot, parent, source, target string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := c.Issuer.Mint(transfer.Claims{Transfer: transferID, Snapshot: snapshot, Parent: parent, Source: source, Target: target}, time.Now(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
