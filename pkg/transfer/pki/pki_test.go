package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"
)

func newCSR(t *testing.T, uris ...*url.URL) []byte {
	t.Helper()
	key, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}, URIs: uris}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestNodeCertificate: a node's certificate, signed from its CSR, chains
// to the CA for both server and client auth, names exactly its node, is
// valid NodeValidity and due for renewal after two thirds of it; the CA
// round-trips through PEM.
func TestNodeCertificate(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("c1", now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := MarshalKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err = LoadCA(ca.CertPEM, keyPEM)
	if err != nil {
		t.Fatalf("load CA: %v", err)
	}
	key, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	node := "worker-1.example.com"
	csr, err := CSR(node, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignNode(node, csr, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := Pool(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Fatalf("verify for %v: %v", usage, err)
		}
	}
	if got, err := NodeOf(cert); err != nil || got != node {
		t.Fatalf("NodeOf = %q, %v; want %q", got, err, node)
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got != NodeValidity+clockSkew {
		t.Fatalf("validity %s", got)
	}
	if cert.IsCA || !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("the certificate is a CA or not over the node's key")
	}
	if NeedsRenewal(cert, now) || !NeedsRenewal(cert, now.Add(NodeValidity*2/3)) || !NeedsRenewal(cert, now.Add(NodeValidity+time.Hour)) {
		t.Fatal("NeedsRenewal: wrong at issue, at two thirds or after expiry")
	}
	// Another CA's pool does not verify it.
	other, err := NewCA("c2", now)
	if err != nil {
		t.Fatal(err)
	}
	otherRoots, _ := Pool(other.CertPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: otherRoots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("verified against another CA")
	}
	if _, err := LoadCA(ca.CertPEM, mustKey(t, other)); err == nil {
		t.Fatal("LoadCA accepted another CA's key")
	}
	if _, err := LoadCA(certPEM, keyPEM); err == nil {
		t.Fatal("LoadCA accepted a node certificate")
	}
}

func mustKey(t *testing.T, ca *CA) []byte {
	b, err := MarshalKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSignNodeRefuses: the issuer signs only for the node that asks, a
// request naming that node alone, over a P-256 key.
func TestSignNodeRefuses(t *testing.T) {
	ca, err := NewCA("c", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p384Key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{NodeURI("n1")}}, p384Key)
	if err != nil {
		t.Fatal(err)
	}
	good := newCSR(t, NodeURI("n1"))
	tampered := []byte(strings.Replace(string(good), "A", "B", 1))
	for _, c := range []struct {
		name, node string
		csr        []byte
	}{
		{"another node's request", "n2", good},
		{"two identities", "n1", newCSR(t, NodeURI("n1"), NodeURI("n2"))},
		{"no identity", "n1", newCSR(t)},
		{"not a node name", "N1/..", good},
		{"P-384 key", "n1", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: p384})},
		{"not PEM", "n1", []byte("junk")},
		{"damaged request", "n1", tampered},
	} {
		if _, err := ca.SignNode(c.node, c.csr, time.Now()); err == nil {
			t.Errorf("%s: signed", c.name)
		}
	}
	if _, err := ca.SignNode("n1", good, time.Now()); err != nil {
		t.Fatalf("good request: %v", err)
	}
}

// TestNodeOf: exactly one transfer URI naming a valid node.
func TestNodeOf(t *testing.T) {
	other, _ := url.Parse("spiffe://example.org/node/n1")
	for _, c := range []struct {
		uris []*url.URL
		want string
	}{
		{[]*url.URL{NodeURI("n1")}, "n1"},
		{[]*url.URL{other, NodeURI("n1")}, "n1"},
		{nil, ""},
		{[]*url.URL{other}, ""},
		{[]*url.URL{NodeURI("n1"), NodeURI("n2")}, ""},
		{[]*url.URL{NodeURI("UPPER")}, ""},
		{[]*url.URL{NodeURI("n1/../n2")}, ""},
	} {
		got, err := NodeOf(&x509.Certificate{URIs: c.uris})
		if got != c.want || (c.want == "") != (err != nil) {
			t.Errorf("NodeOf(%v) = %q, %v; want %q", c.uris, got, err, c.want)
		}
	}
}
