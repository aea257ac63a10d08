package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	certv1client "k8s.io/client-go/kubernetes/typed/certificates/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/k8s/transferpki"
	"github.com/csi-thin/csi-thin/pkg/transfer"
)

// Node-to-node transfers (docs/mobility.md): with --transfer, the
// controller keeps the transfer CA and token key and signs the node
// agents' certificate requests; each node agent gets its certificate and
// serves its pool's snapshots at --transfer-address to peers holding a
// token. Nothing asks for a transfer yet.

// serviceAccountNamespace is where an in-cluster pod finds its namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// transferNamespace is the namespace of the transfer Secret and ConfigMap:
// --transfer-namespace, else the pod's own.
func transferNamespace(o *options) (string, error) {
	if o.transferNamespace != "" {
		return o.transferNamespace, nil
	}
	b, err := os.ReadFile(serviceAccountNamespace)
	if err != nil {
		return "", fmt.Errorf("--transfer-namespace unset and not in a pod: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// retry runs f until it succeeds or ctx ends, logging each failure.
func retry(ctx context.Context, what string, f func() error) error {
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		klog.ErrorS(err, what)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
		}
	}
}

// transferSigner is the controller's part.
type transferSigner struct {
	cfg       *rest.Config
	namespace string
	agentUser string
}

func newTransferSigner(o *options, cfg *rest.Config) (*transferSigner, error) {
	ns, err := transferNamespace(o)
	if err != nil {
		return nil, err
	}
	sa := o.transferAgentSA
	if !strings.Contains(sa, ":") {
		sa = ns + ":" + sa
	}
	return &transferSigner{cfg: cfg, namespace: ns, agentUser: "system:serviceaccount:" + sa}, nil
}

func (s *transferSigner) Run(ctx context.Context) error {
	core, err := corev1client.NewForConfig(s.cfg)
	if err != nil {
		return err
	}
	certs, err := certv1client.NewForConfig(s.cfg)
	if err != nil {
		return err
	}
	var trust *transferpki.Trust
	if err := retry(ctx, "transfer trust", func() (err error) {
		trust, err = transferpki.EnsureTrust(ctx, core, s.namespace)
		return err
	}); err != nil || trust == nil {
		return nil
	}
	klog.InfoS("transfer certificate signer running", "signer", transferpki.SignerName, "agents", s.agentUser)
	return (&transferpki.Signer{Client: certs, CA: trust.CA, AgentUser: s.agentUser}).Run(ctx)
}

// transferAgent is a node agent's part.
type transferAgent struct {
	cfg       *rest.Config
	namespace string
	node      string
	pool      backend.Streamer
	addr      string
	stateDir  string
}

func newTransferAgent(o *options, cfg *rest.Config, node string, pool backend.Local) (*transferAgent, error) {
	streamer, ok := pool.(backend.Streamer)
	if !ok {
		klog.InfoS("transfers off: this backend does not stream volumes yet", "node", node, "backend", pool.Kind())
		return nil, nil
	}
	ns, err := transferNamespace(o)
	if err != nil {
		return nil, err
	}
	return &transferAgent{cfg: cfg, namespace: ns, node: node, pool: streamer, addr: o.transferAddr, stateDir: o.transferStateDir}, nil
}

func (a *transferAgent) Run(ctx context.Context) error {
	core, err := corev1client.NewForConfig(a.cfg)
	if err != nil {
		return err
	}
	certs, err := certv1client.NewForConfig(a.cfg)
	if err != nil {
		return err
	}
	var trust *transferpki.AgentTrust
	if err := retry(ctx, "transfer trust", func() (err error) {
		trust, err = transferpki.LoadTrust(ctx, core, a.namespace)
		return err
	}); err != nil || trust == nil {
		return nil
	}
	id := &transferpki.NodeIdentity{Client: certs, Node: a.node, Dir: filepath.Join(a.stateDir, "identity"), Roots: trust.Roots}
	if err := retry(ctx, "transfer identity", func() error { return id.Ensure(ctx) }); err != nil {
		return nil
	}
	go id.Run(ctx) // renewals
	// A transfer server that cannot start (port taken, state directory
	// unwritable) is logged and retried: the agent's CSI service goes on.
	return retry(ctx, "transfer server", func() error {
		srv, err := transfer.NewServer(transfer.ServerConfig{
			Node: a.node, Pool: a.pool, Tokens: trust.Tokens, UsedTokensDir: filepath.Join(a.stateDir, "used-tokens"),
			Certificate: id.Certificate, ClientCAs: trust.Roots,
		})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("transfer server: %w", err)
		}
		klog.InfoS("transfer server listening", "node", a.node, "address", ln.Addr().String())
		return srv.Serve(ctx, ln)
	})
}
