package transferpki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	certv1client "k8s.io/client-go/kubernetes/typed/certificates/v1"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

const (
	keyFile  = "node.key"
	certFile = "node.crt"
	// RenewCheckInterval is how often Run checks whether the certificate
	// is due for renewal.
	RenewCheckInterval = time.Hour
)

// ErrDenied: the signer refused this node's request.
var ErrDenied = errors.New("transfer certificate request denied")

// NodeIdentity is a node agent's transfer key and certificate: the key
// made on the node and kept in Dir (mode 0600), the certificate asked for
// with a CertificateSigningRequest and kept next to it, renewed when due.
type NodeIdentity struct {
	Client certv1client.CertificatesV1Interface
	Node   string
	Dir    string
	// Roots is the transfer CA an issued certificate must chain to.
	Roots *x509.CertPool
	// PollInterval is how often a pending request is read (default 2 s).
	PollInterval time.Duration

	mu   sync.RWMutex
	pair *tls.Certificate
}

// Certificate is the current key pair (for pkg/transfer's servers and
// clients, which call it per handshake).
func (n *NodeIdentity) Certificate() (*tls.Certificate, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.pair == nil {
		return nil, fmt.Errorf("node %s has no transfer certificate yet", n.Node)
	}
	return n.pair, nil
}

// Run ensures the identity, then checks for renewal every
// RenewCheckInterval until ctx ends.
func (n *NodeIdentity) Run(ctx context.Context) error {
	for {
		if err := n.Ensure(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "transfer identity", "node", n.Node)
			sleep(ctx, time.Minute)
			continue
		}
		sleep(ctx, RenewCheckInterval)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// Ensure loads the key (making it on first use) and the certificate; if
// there is none, it is not this key's, node's or CA's, or it is due for
// renewal, it asks the signer for one and waits for it.
func (n *NodeIdentity) Ensure(ctx context.Context) error {
	key, err := n.loadOrCreateKey()
	if err != nil {
		return err
	}
	var renewing string
	if cert, err := n.loadCertificate(key); err == nil {
		if !pki.NeedsRenewal(cert.Leaf, timeNow()) {
			n.set(cert)
			return nil
		}
		n.set(cert) // still usable while the new one comes
		renewing = cert.Leaf.SerialNumber.String()
	} else if !errors.Is(err, os.ErrNotExist) {
		klog.InfoS("transfer certificate not usable, asking for a new one", "node", n.Node, "err", err)
	}
	certPEM, err := n.request(ctx, key, renewing)
	if err != nil {
		return err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return err
	}
	pair, err := n.verify(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("issued transfer certificate: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(n.Dir, certFile), certPEM, 0o644); err != nil {
		return err
	}
	n.set(pair)
	klog.InfoS("transfer certificate installed", "node", n.Node, "notAfter", pair.Leaf.NotAfter)
	return nil
}

func (n *NodeIdentity) set(pair *tls.Certificate) {
	n.mu.Lock()
	n.pair = pair
	n.mu.Unlock()
}

// request creates (or finds, after a restart) the request for key and
// waits for its certificate. Its name is derived from the node, the key
// and the certificate it renews, so a restarted agent finds its pending
// request.
func (n *NodeIdentity) request(ctx context.Context, key crypto.Signer, renewing string) ([]byte, error) {
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(n.Node + "\x00" + string(pub) + "\x00" + renewing))
	name := "csi-thin-transfer-" + hex.EncodeToString(sum[:16])
	csrs := n.Client.CertificateSigningRequests()
	req, err := pki.CSR(n.Node, key)
	if err != nil {
		return nil, err
	}
	_, err = csrs.Create(ctx, &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": clusterLabel}},
		Spec: certv1.CertificateSigningRequestSpec{
			Request: req, SignerName: SignerName,
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth, certv1.UsageClientAuth},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("transfer certificate request %s: %w", name, err)
	}
	klog.InfoS("transfer certificate requested", "node", n.Node, "csr", name)
	interval := n.PollInterval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for {
		csr, err := csrs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("transfer certificate request %s: %w", name, err)
		}
		for _, c := range csr.Status.Conditions {
			if c.Type == certv1.CertificateDenied || c.Type == certv1.CertificateFailed {
				return nil, fmt.Errorf("%w: %s: %s: %s", ErrDenied, name, c.Reason, c.Message)
			}
		}
		if len(csr.Status.Certificate) > 0 {
			return csr.Status.Certificate, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
	}
}

func (n *NodeIdentity) loadOrCreateKey() (crypto.Signer, error) {
	path := filepath.Join(n.Dir, keyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return pki.ParseKey(b)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("transfer key: %w", err)
	}
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("transfer key: %w", err)
	}
	key, err := pki.NewNodeKey()
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("transfer key: %w", err)
	}
	return key, nil
}

func (n *NodeIdentity) loadCertificate(key crypto.Signer) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(filepath.Join(n.Dir, certFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return nil, err
	}
	return n.verify(certPEM, keyPEM)
}

// verify checks that a certificate is for this key, chains to the CA and
// names this node.
func (n *NodeIdentity) verify(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	leaf := pair.Leaf
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, errors.New("not an ECDSA certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: n.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, err
	}
	if node, err := pki.NodeOf(leaf); err != nil || node != n.Node {
		return nil, fmt.Errorf("certificate names %q, this is %s (%v)", node, n.Node, err)
	}
	return &pair, nil
}

// writeFileAtomic writes path through a synced temporary file and a
// rename, so a crash leaves the old or the new content.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
