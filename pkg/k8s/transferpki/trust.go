// Package transferpki gets the transfer CA, the controller's token key and
// the node certificates of pkg/transfer to where they are used, through
// the Kubernetes API and without cert-manager:
//
//   - The controller keeps the CA and the token signing key in the Secret
//     TrustSecret (made on first start, EnsureTrust) and publishes what
//     the agents need to trust, the CA certificate and the token public
//     key, in the ConfigMap TrustConfigMap (LoadTrust).
//   - A node agent makes its key on its node (it never leaves it) and asks
//     for a certificate with a Kubernetes CertificateSigningRequest for
//     the signer SignerName (NodeIdentity). The controller (Signer) signs
//     a request only for the node its requester runs on: the requester
//     must be the agents' service account, and the API server records the
//     node of the pod whose service-account token made the request in the
//     request's extra field NodeNameExtra (service-account tokens bound to
//     a pod carry their node), which must name the node the request asks
//     for. A compromised agent can therefore not get another node's
//     identity.
package transferpki

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

const (
	// TrustSecret holds the CA certificate and key and the token key
	// (the controller's only).
	TrustSecret = "csi-thin-transfer-ca"
	// TrustConfigMap holds what agents trust: the CA certificate(s) and
	// the token public key(s).
	TrustConfigMap = "csi-thin-transfer-trust"

	keyCACert    = "ca.crt"
	keyCAKey     = "ca.key"
	keyTokenKey  = "token.key"
	keyTokenPub  = "token.pub"
	pemTokenKey  = "ED25519 PRIVATE KEY"
	pemTokenPub  = "ED25519 PUBLIC KEY"
	clusterLabel = "csi-thin"
)

// Trust is what the controller holds.
type Trust struct {
	CA       *pki.CA
	TokenKey ed25519.PrivateKey
}

// EnsureTrust returns the CA and token key of namespace's TrustSecret,
// making them if the Secret does not exist (replicas racing: the first
// create wins, the others read it), and makes TrustConfigMap match.
func EnsureTrust(ctx context.Context, c corev1client.CoreV1Interface, namespace string) (*Trust, error) {
	secrets := c.Secrets(namespace)
	sec, err := secrets.Get(ctx, TrustSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		sec, err = newTrustSecret(namespace)
		if err == nil {
			sec, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
			if err == nil {
				klog.InfoS("created the transfer CA and token key", "secret", namespace+"/"+TrustSecret)
			}
		}
		if apierrors.IsAlreadyExists(err) {
			sec, err = secrets.Get(ctx, TrustSecret, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("transfer trust secret %s/%s: %w", namespace, TrustSecret, err)
	}
	t, err := parseTrust(sec)
	if err != nil {
		return nil, fmt.Errorf("transfer trust secret %s/%s: %w", namespace, TrustSecret, err)
	}
	if err := publish(ctx, c, namespace, t); err != nil {
		return nil, err
	}
	return t, nil
}

func newTrustSecret(namespace string) (*corev1.Secret, error) {
	ca, err := pki.NewCA(namespace, timeNow())
	if err != nil {
		return nil, err
	}
	caKey, err := pki.MarshalKey(ca.Key)
	if err != nil {
		return nil, err
	}
	_, tokenKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: TrustSecret, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/part-of": clusterLabel}},
		Type:       corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			keyCACert: ca.CertPEM, keyCAKey: caKey,
			keyTokenKey: pem.EncodeToMemory(&pem.Block{Type: pemTokenKey, Bytes: tokenKey.Seed()}),
		},
	}, nil
}

func parseTrust(sec *corev1.Secret) (*Trust, error) {
	ca, err := pki.LoadCA(sec.Data[keyCACert], sec.Data[keyCAKey])
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(sec.Data[keyTokenKey])
	if block == nil || block.Type != pemTokenKey || len(block.Bytes) != ed25519.SeedSize {
		return nil, errors.New("token key: no PEM " + pemTokenKey)
	}
	return &Trust{CA: ca, TokenKey: ed25519.NewKeyFromSeed(block.Bytes)}, nil
}

// publish makes TrustConfigMap hold the CA certificate and token public
// key of t.
func publish(ctx context.Context, c corev1client.CoreV1Interface, namespace string, t *Trust) error {
	pub := t.TokenKey.Public().(ed25519.PublicKey)
	data := map[string]string{
		keyCACert:   string(t.CA.CertPEM),
		keyTokenPub: string(pem.EncodeToMemory(&pem.Block{Type: pemTokenPub, Bytes: pub})),
	}
	cms := c.ConfigMaps(namespace)
	cm, err := cms.Get(ctx, TrustConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: TrustConfigMap, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/part-of": clusterLabel}},
			Data:       data,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return publish(ctx, c, namespace, t)
		}
	} else if err == nil && (cm.Data[keyCACert] != data[keyCACert] || cm.Data[keyTokenPub] != data[keyTokenPub]) {
		cm.Data = data
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("transfer trust configmap %s/%s: %w", namespace, TrustConfigMap, err)
	}
	return nil
}

// AgentTrust is what a node agent trusts: the transfer CA(s) and the
// controller's token key(s).
type AgentTrust struct {
	Roots  *x509.CertPool
	Tokens *transfer.Verifier
	// CAPEM is the CA bundle as published.
	CAPEM []byte
}

// LoadTrust reads TrustConfigMap (a mounted copy of it works the same
// through ParseTrust).
func LoadTrust(ctx context.Context, c corev1client.CoreV1Interface, namespace string) (*AgentTrust, error) {
	cm, err := c.ConfigMaps(namespace).Get(ctx, TrustConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("transfer trust configmap %s/%s: %w", namespace, TrustConfigMap, err)
	}
	return ParseTrust([]byte(cm.Data[keyCACert]), []byte(cm.Data[keyTokenPub]))
}

// ParseTrust reads a CA bundle and a PEM bundle of ed25519 token public
// keys.
func ParseTrust(caPEM, tokenPubPEM []byte) (*AgentTrust, error) {
	roots, err := pki.Pool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("transfer CA: %w", err)
	}
	var keys []ed25519.PublicKey
	for rest := bytes.TrimSpace(tokenPubPEM); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil || block.Type != pemTokenPub || len(block.Bytes) != ed25519.PublicKeySize {
			return nil, errors.New("token public key: not a PEM " + pemTokenPub)
		}
		keys = append(keys, ed25519.PublicKey(block.Bytes))
	}
	if len(keys) == 0 {
		return nil, errors.New("no token public key")
	}
	return &AgentTrust{Roots: roots, Tokens: transfer.NewVerifier(keys...), CAPEM: caPEM}, nil
}
