// Package pki makes the transfer CA of a cluster and the per-node
// certificates that node agents present to each other when one pulls a
// volume stream from another (pkg/transfer). crypto/x509 only, ECDSA P-256;
// no cert-manager.
//
// A node's identity is one URI SAN, spiffe://transfer.csi-thin.io/node/<node>
// (NodeURI): a Kubernetes node name is a DNS subdomain of up to 253
// characters, which does not fit a DNS SAN under a suffix, while a URI
// holds it whole and cannot be confused with a host name a public CA
// would sign. A node certificate is valid for both ends of a TLS
// connection (server and client auth): the source agent serves, the
// target agent pulls.
//
// Validity and rotation: the CA lives CAValidity (10 years); a node
// certificate NodeValidity (90 days). The issuer (the controller) re-signs
// a node's certificate once NeedsRenewal says so (two thirds of its life
// gone); agents reload their key pair per handshake (tls.Config's
// GetCertificate/GetClientCertificate), so a renewed certificate needs no
// restart. Rotating the CA means trusting the old and the new CA at once
// (a pool of both) until every node certificate is re-signed.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	// CAValidity is how long a new transfer CA is valid.
	CAValidity = 10 * 365 * 24 * time.Hour
	// NodeValidity is how long a node certificate is valid.
	NodeValidity = 90 * 24 * time.Hour
	// clockSkew backdates NotBefore: nodes' clocks differ a little.
	clockSkew = 5 * time.Minute

	uriScheme = "spiffe"
	uriHost   = "transfer.csi-thin.io"
	uriPrefix = "/node/"
)

// ErrNoNodeIdentity: a certificate names no node (or more than one).
var ErrNoNodeIdentity = errors.New("certificate names no transfer node")

// NodeURI is the identity a node certificate carries as its URI SAN.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: uriPrefix + node}
}

// CheckNodeName refuses what cannot be a Kubernetes node name.
func CheckNodeName(node string) error {
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return fmt.Errorf("node name %q: %s", node, strings.Join(errs, "; "))
	}
	return nil
}

// NodeOf returns the node a (verified) certificate names: its one
// transfer URI SAN.
func NodeOf(cert *x509.Certificate) (string, error) {
	var nodes []string
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && u.Host == uriHost && strings.HasPrefix(u.Path, uriPrefix) {
			nodes = append(nodes, strings.TrimPrefix(u.Path, uriPrefix))
		}
	}
	if len(nodes) != 1 {
		return "", fmt.Errorf("%w (%d transfer URIs)", ErrNoNodeIdentity, len(nodes))
	}
	if err := CheckNodeName(nodes[0]); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoNodeIdentity, err)
	}
	return nodes[0], nil
}

// CA is a transfer CA: its certificate and the key that signs node
// certificates (held by the controller only).
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert encoded: what the agents trust.
	CertPEM []byte
}

// NewCA makes a self-signed CA named after the cluster.
func NewCA(cluster string, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "csi-thin transfer CA " + cluster, Organization: []string{"csi-thin.io"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// LoadCA reads a CA from its PEM certificate and PKCS#8 key (as
// MarshalKey writes it).
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA: the certificate is not a CA")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("CA: the key does not belong to the certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// NewNodeKey makes a node's private key (it stays on the node).
func NewNodeKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// CSR is the certificate request a node agent sends the issuer for its key.
func CSR(node string, key crypto.Signer) ([]byte, error) {
	if err := CheckNodeName(node); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: node},
		URIs:    []*url.URL{NodeURI(node)},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("CSR of node %s: %w", node, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// SignNode signs a certificate for node over the public key of csrPEM.
// The issuer decides the node (who asked), not the request: a request
// naming another node is refused, and only the node's URI goes into the
// certificate whatever else the request asks for.
func (ca *CA) SignNode(node string, csrPEM []byte, now time.Time) ([]byte, error) {
	if err := CheckNodeName(node); err != nil {
		return nil, err
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("CSR: no PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != NodeURI(node).String() {
		return nil, fmt.Errorf("CSR of node %s asks for %v", node, csr.URIs)
	}
	if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, errors.New("CSR: the key is not ECDSA P-256")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(NodeValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node},
		URIs:         []*url.URL{NodeURI(node)},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certificate of node %s: %w", node, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// NeedsRenewal reports whether a certificate has used up two thirds of
// its validity (or is not valid yet or any more) at now.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return now.Before(cert.NotBefore) || now.After(cert.NotBefore.Add(life*2/3))
}

// MarshalKey encodes a private key as PEM PKCS#8.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes a PEM PKCS#8 private key.
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("key: no PEM PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key: %T cannot sign", k)
	}
	return s, nil
}

// ParseCertificate decodes the first PEM certificate of certPEM.
func ParseCertificate(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE")
	}
	return x509.ParseCertificate(block.Bytes)
}

// Pool is a certificate pool of the PEM CA certificates in caPEM (more
// than one while a CA rotates).
func Pool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate in the bundle")
	}
	return pool, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
