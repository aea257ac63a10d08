// Package transfer moves volume streams (pkg/volstream) between node
// agents: the source node's agent serves a snapshot's stream
// (backend.Streamer.SendSnapshot) over HTTPS with TLS 1.3 and required
// client certificates of the cluster's transfer CA (pkg/transfer/pki); the
// target node's agent pulls it (Client) into ReceiveVolume or
// ReceiveSnapshot. Each transfer is authorised by a one-time token the
// controller signs (Issuer) for one snapshot, one source and one target.
// The stream's own checksums stay end to end: TLS protects it in transit,
// the receiver's volstream.Reader still verifies every frame and the
// trailer.
package transfer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

const (
	streamPath = "/v1/stream"
	// errorHeader carries a refusal's name (wireErrors) to the client.
	errorHeader = "Csi-Thin-Transfer-Error"
)

// ServerConfig is what a source node's agent serves with.
type ServerConfig struct {
	// Node is this node's name: tokens must name it as their source.
	Node string
	// Pool sends the snapshots.
	Pool backend.Streamer
	// Tokens checks the controller's signature on tokens.
	Tokens *Verifier
	// UsedTokensDir persists the IDs of accepted tokens (UsedTokens).
	UsedTokensDir string
	// Certificate returns this node's certificate (called per handshake,
	// so that a renewed one is picked up).
	Certificate func() (*tls.Certificate, error)
	// ClientCAs are the transfer CA(s) a peer's certificate must chain to.
	ClientCAs *x509.CertPool
	// Now is the clock (tests); time.Now by default.
	Now func() time.Time
}

// unwindTimeout bounds how long Serve waits, once stopped, for cancelled
// sends to return (a send releases what it holds on the source, such as
// LVM's metadata snapshot, while it unwinds).
const unwindTimeout = 30 * time.Second

// Server serves snapshots' streams to authorised peers.
type Server struct {
	cfg  ServerConfig
	used *UsedTokens

	mu       sync.Mutex
	stopping bool
	sends    sync.WaitGroup // requests being served; Add only while !stopping
}

// NewServer checks cfg and opens the used-token record.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := pki.CheckNodeName(cfg.Node); err != nil {
		return nil, fmt.Errorf("transfer server: %w", err)
	}
	if cfg.Pool == nil || cfg.Tokens == nil || cfg.Certificate == nil || cfg.ClientCAs == nil || cfg.UsedTokensDir == "" {
		return nil, errors.New("transfer server: pool, token verifier, certificate, client CAs and used-token directory are all required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	used, err := OpenUsedTokens(cfg.UsedTokensDir, cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("transfer server: %w", err)
	}
	return &Server{cfg: cfg, used: used}, nil
}

// TLSConfig is the server's TLS: 1.3 only, a client certificate asked
// for. TLS checks that the peer holds the certificate's key; the chain to
// the transfer CA is verified per request (peerNode), before anything
// else, as kube-apiserver does: a refusal is then an HTTP answer the peer
// reads as ErrUnauthenticated, where a refusal inside the handshake
// reaches a TLS 1.3 client only as a broken connection, after it sent its
// request (and sometimes not even as an alert).
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cfg.Certificate()
		},
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// Serve serves on ln (plain TCP: TLS is added here) until ctx ends, then
// stops accepting and cancels the transfers in flight.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 30 * time.Second,
		// Handshake refusals (no or foreign certificate) land here.
		ErrorLog:    log.New(klogWriter{}, "", 0),
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.ServeTLS(ln, "", "")
	s.waitForSends()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// waitForSends refuses new requests and waits (up to unwindTimeout) for
// those in flight, whose contexts ended with Serve's, to return: the
// agent exits only after its sends have cleaned up after themselves.
func (s *Server) waitForSends() {
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.sends.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(unwindTimeout):
		klog.InfoS("transfer server stopped with sends still unwinding", "waited", unwindTimeout)
	}
}

// begin counts a request in, unless the server is stopping.
func (s *Server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.sends.Add(1)
	return true
}

type klogWriter struct{}

func (klogWriter) Write(p []byte) (int, error) {
	klog.InfoS("transfer server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// ServeHTTP serves POST /v1/stream with "Authorization: Bearer <token>".
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.begin() {
		http.Error(w, "stopping", http.StatusServiceUnavailable)
		return
	}
	defer s.sends.Done()
	if r.URL.Path != streamPath {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	peer, err := peerNode(r.TLS, s.cfg.ClientCAs)
	if err != nil {
		s.refuse(w, peer, Claims{}, err)
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.refuse(w, peer, Claims{}, fmt.Errorf("%w: no bearer token", ErrBadToken))
		return
	}
	c, err := s.authorize(peer, token)
	if err != nil {
		s.refuse(w, peer, c, err)
		return
	}
	s.send(w, r, peer, c)
}

// authorize checks a token for peer, in an order that tells a peer
// nothing about a token it could not have been given: signature and
// form, expiry, source, target; then records it as used.
func (s *Server) authorize(peer, token string) (Claims, error) {
	c, err := s.cfg.Tokens.Verify(token, s.cfg.Now())
	if err != nil {
		return c, err
	}
	if c.Source != s.cfg.Node {
		return c, fmt.Errorf("%w: source %s, this is %s", ErrWrongSource, c.Source, s.cfg.Node)
	}
	if c.Target != peer {
		return c, fmt.Errorf("%w: target %s, the peer is %s", ErrWrongTarget, c.Target, peer)
	}
	// Used from here on, whatever happens to the send: a retry gets a
	// new token.
	if err := s.used.Use(c); err != nil {
		return c, err
	}
	if err := s.used.Prune(s.cfg.Now()); err != nil {
		klog.ErrorS(err, "prune used transfer tokens")
	}
	return c, nil
}

// send streams the snapshot. Until the first byte is written a failure is
// an error response; after it, the connection is aborted, and the stream,
// without its trailer, reads as truncated on the other side.
func (s *Server) send(w http.ResponseWriter, r *http.Request, peer string, c Claims) {
	lw := &lazyWriter{w: w}
	start := time.Now()
	klog.InfoS("transfer started", "transferID", c.Transfer, "snapshotID", c.Snapshot, "parentID", c.Parent, "target", peer)
	st, err := s.cfg.Pool.SendSnapshot(r.Context(), c.Snapshot, c.Parent, lw)
	if err != nil {
		if !lw.started {
			s.refuse(w, peer, c, err)
			return
		}
		klog.ErrorS(err, "transfer failed mid-stream", "transferID", c.Transfer, "snapshotID", c.Snapshot,
			"parentID", c.Parent, "target", peer, "streamBytes", st.StreamBytes)
		panic(http.ErrAbortHandler)
	}
	klog.InfoS("transfer sent", "transferID", c.Transfer, "snapshotID", c.Snapshot, "parentID", c.Parent,
		"target", peer, "streamBytes", st.StreamBytes, "allocatedBytes", st.AllocatedBytes, "duration", time.Since(start))
}

// refuse answers an error with its HTTP status and wire name.
func (s *Server) refuse(w http.ResponseWriter, peer string, c Claims, err error) {
	klog.InfoS("transfer refused", "transferID", c.Transfer, "snapshotID", c.Snapshot, "parentID", c.Parent,
		"peer", peer, "tokenID", c.ID, "err", err)
	name, status := "", http.StatusInternalServerError
	for _, we := range wireErrors {
		if errors.Is(err, we.err) {
			name = we.name
			break
		}
	}
	switch {
	case errors.Is(err, ErrUnauthenticated), errors.Is(err, ErrBadToken), errors.Is(err, ErrExpired):
		status = http.StatusUnauthorized
	case name != "":
		status = http.StatusForbidden
	case errors.Is(err, backend.ErrNotFound):
		status, name = http.StatusNotFound, "not-found"
	case errors.Is(err, backend.ErrPrecondition):
		status, name = http.StatusPreconditionFailed, "failed-precondition"
	case errors.Is(err, backend.ErrInvalid):
		status, name = http.StatusBadRequest, "invalid"
	case errors.Is(err, backend.ErrBusy):
		status, name = http.StatusConflict, "busy"
	case errors.Is(err, backend.ErrUnavailable):
		status, name = http.StatusServiceUnavailable, "unavailable"
	}
	if name != "" {
		w.Header().Set(errorHeader, name)
	}
	http.Error(w, err.Error(), status)
}

// peerNode verifies the client's certificate chain against the transfer
// CA (for client auth) and returns the node it names.
func peerNode(cs *tls.ConnectionState, roots *x509.CertPool) (string, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	return verifiedNode(cs.PeerCertificates, roots, x509.ExtKeyUsageClientAuth)
}

// verifiedNode checks chain[0] against roots (chain[1:] as
// intermediates) for usage, and returns the node it names.
func verifiedNode(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) (string, error) {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	node, err := pki.NodeOf(chain[0])
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return node, nil
}

// lazyWriter sends the response's status only with the first byte.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/vnd.csi-thin.volstream")
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}
