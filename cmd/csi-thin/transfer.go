package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
// controller keeps the transfer CA and token key, signs the node agents'
// certificate requests and grants the tokens of cross-node copies
// (router.Copies); each node agent gets its certificate, serves its
// pool's snapshots at --transfer-address to peers holding a token,
// publishes that address in its ThinNode, and pulls the copies made on
// its node (nodeagent.Puller).

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
	issuer    atomic.Pointer[transfer.Issuer]
}

// Issuer is the token issuer once the trust is loaded, else nil.
func (s *transferSigner) Issuer() *transfer.Issuer { return s.issuer.Load() }

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
	s.issuer.Store(transfer.NewIssuer(trust.TokenKey))
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
	host      string // advertised
	stateDir  string
	client    atomic.Pointer[transfer.Client]
	// publish is called with the address other agents reach the server
	// at once it listens ("" when it stops).
	publish func(string)
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
	return &transferAgent{cfg: cfg, namespace: ns, node: node, pool: streamer, addr: o.transferAddr, host: o.transferHost, stateDir: o.transferStateDir}, nil
}

// Client is the client cross-node copies pull with, nil until this node
// has its transfer identity.
func (a *transferAgent) Client() *transfer.Client {
	if a == nil {
		return nil
	}
	return a.client.Load()
}

// advertised is the address other agents dial: the listener's port on
// the advertised host (or on the listener's own host when it names one).
func advertised(host string, ln net.Addr) string {
	lhost, port, err := net.SplitHostPort(ln.String())
	if err != nil {
		return ""
	}
	if host == "" {
		if ip := net.ParseIP(lhost); ip == nil || ip.IsUnspecified() {
			return ""
		}
		host = lhost
	}
	return net.JoinHostPort(host, port)
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
	tc, err := transfer.NewClient(transfer.ClientConfig{Certificate: id.Certificate, RootCAs: trust.Roots})
	if err != nil {
		return err
	}
	a.client.Store(tc)
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
		addr := advertised(a.host, ln.Addr())
		klog.InfoS("transfer server listening", "node", a.node, "address", ln.Addr().String(), "advertised", addr)
		if addr == "" {
			klog.InfoS("transfer address not published: no --transfer-advertise-host (POD_IP) and the listener names no host; copies to other nodes cannot pull from this one", "node", a.node)
		}
		if a.publish != nil {
			a.publish(addr)
			defer a.publish("")
		}
		return srv.Serve(ctx, ln)
	})
}
