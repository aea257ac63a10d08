package transferpki

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	certv1client "k8s.io/client-go/kubernetes/typed/certificates/v1"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

const (
	// SignerName is the signer of node agents' transfer certificates.
	SignerName = "csi-thin.io/transfer"
	// NodeNameExtra is the extra field in which the API server records the
	// node of the pod whose service-account token made a request.
	NodeNameExtra = "authentication.kubernetes.io/node-name"
)

// Signer approves and signs the CertificateSigningRequests of SignerName
// whose requester is the node agents' service account on the node the
// request names, and denies the others (the controller runs it).
type Signer struct {
	Client certv1client.CertificatesV1Interface
	CA     *pki.CA
	// AgentUser is the agents' service account as a user name:
	// system:serviceaccount:<namespace>:<name>.
	AgentUser string
}

// Run signs until ctx ends: a list, then a watch, again after each end.
func (s *Signer) Run(ctx context.Context) error {
	csrs := s.Client.CertificateSigningRequests()
	sel := fields.OneTermEqualSelector("spec.signerName", SignerName).String()
	for ctx.Err() == nil {
		list, err := csrs.List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			klog.ErrorS(err, "list transfer certificate requests")
			sleep(ctx, 5*time.Second)
			continue
		}
		for i := range list.Items {
			s.handle(ctx, &list.Items[i])
		}
		w, err := csrs.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion})
		if err != nil {
			klog.ErrorS(err, "watch transfer certificate requests")
			sleep(ctx, 5*time.Second)
			continue
		}
		for ev := range w.ResultChan() {
			if csr, ok := ev.Object.(*certv1.CertificateSigningRequest); ok && (ev.Type == watch.Added || ev.Type == watch.Modified) {
				s.handle(ctx, csr)
			}
		}
		w.Stop()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (s *Signer) handle(ctx context.Context, csr *certv1.CertificateSigningRequest) {
	err := s.Sign(ctx, csr)
	switch {
	case err == nil || ctx.Err() != nil:
	case apierrors.IsConflict(err):
		// An event older than our own last update: the watch brings the
		// newer version (a certificate is never issued twice: the update
		// that would do it conflicts).
		klog.V(2).InfoS("transfer certificate request changed meanwhile", "csr", csr.Name)
	default:
		klog.ErrorS(err, "transfer certificate request", "csr", csr.Name)
	}
}

// Sign decides one request: nothing to do for another signer's or a
// decided one; denied with its reason when the requester is not the agent
// of the node it asks for; else approved and signed.
func (s *Signer) Sign(ctx context.Context, csr *certv1.CertificateSigningRequest) error {
	if csr.Spec.SignerName != SignerName || len(csr.Status.Certificate) > 0 ||
		hasCondition(csr, certv1.CertificateDenied) || hasCondition(csr, certv1.CertificateFailed) {
		return nil
	}
	csrs := s.Client.CertificateSigningRequests()
	node, reason, msg := s.check(csr)
	if reason != "" {
		csr.Status.Conditions = append(csr.Status.Conditions, certv1.CertificateSigningRequestCondition{
			Type: certv1.CertificateDenied, Status: corev1.ConditionTrue, Reason: reason, Message: msg,
		})
		_, err := csrs.UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
		klog.InfoS("transfer certificate request denied", "csr", csr.Name, "user", csr.Spec.Username, "reason", reason, "message", msg)
		return err
	}
	if !hasCondition(csr, certv1.CertificateApproved) {
		csr.Status.Conditions = append(csr.Status.Conditions, certv1.CertificateSigningRequestCondition{
			Type: certv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "NodeAgent",
			Message: "the node agent of " + node + " asks for its own transfer identity",
		})
		updated, err := csrs.UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("approve: %w", err)
		}
		csr = updated
	}
	cert, err := s.CA.SignNode(node, csr.Spec.Request, timeNow())
	if err != nil {
		return fmt.Errorf("sign for node %s: %w", node, err)
	}
	csr.Status.Certificate = cert
	if _, err := csrs.UpdateStatus(ctx, csr, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	klog.InfoS("transfer certificate issued", "csr", csr.Name, "node", node)
	return nil
}

// check returns the node a request may have a certificate for, or the
// reason (a CamelCase word) and message of its denial.
func (s *Signer) check(csr *certv1.CertificateSigningRequest) (node, reason, msg string) {
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return "", "Malformed", "the request is not a PEM CERTIFICATE REQUEST"
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return "", "Malformed", err.Error()
	}
	node, err = pki.NodeOf(&x509.Certificate{URIs: req.URIs})
	if err != nil {
		return "", "NoNodeIdentity", err.Error()
	}
	if csr.Spec.Username != s.AgentUser {
		return "", "NotANodeAgent", fmt.Sprintf("requested by %q, not the node agents' service account %q", csr.Spec.Username, s.AgentUser)
	}
	if on := csr.Spec.Extra[NodeNameExtra]; len(on) != 1 || on[0] != node {
		return "", "NotThisNode", fmt.Sprintf("asks for node %s, requested from node %v", node, []string(on))
	}
	return node, "", ""
}

func hasCondition(csr *certv1.CertificateSigningRequest, t certv1.RequestConditionType) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == t && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// timeNow is the clock (a variable for tests).
var timeNow = time.Now
