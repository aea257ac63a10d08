package transfer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// ClientConfig is what a target node's agent pulls with.
type ClientConfig struct {
	// Certificate returns this node's certificate (per handshake).
	Certificate func() (*tls.Certificate, error)
	// RootCAs are the transfer CA(s) the source's certificate must chain to.
	RootCAs *x509.CertPool
	// IdleTimeout ends a transfer whose source sent nothing for this long
	// (DefaultIdleTimeout if zero): a stalled source must not hold the
	// target's receive for ever.
	IdleTimeout time.Duration
}

// DefaultIdleTimeout is ClientConfig.IdleTimeout's default.
const DefaultIdleTimeout = 2 * time.Minute

// ErrIdle: the source sent nothing for the client's IdleTimeout.
var ErrIdle = errors.New("source idle")

// Client pulls streams from source nodes' agents.
type Client struct{ cfg ClientConfig }

// NewClient checks cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.RootCAs == nil {
		return nil, errors.New("transfer client: the transfer CA is required")
	}
	return &Client{cfg: cfg}, nil
}

// Open asks the source at addr (host:port) for the stream token
// authorises, after checking that the source's certificate names the
// token's source node. The caller reads and closes the stream; cancelling
// ctx ends it.
func (c *Client) Open(ctx context.Context, addr, token string) (io.ReadCloser, Claims, error) {
	claims, err := ParseUnverified(token)
	if err != nil {
		return nil, claims, err
	}
	idle := c.cfg.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	ctx, cancel := context.WithCancelCause(ctx)
	// The connection, the request and then every read of the body must
	// make progress within idle.
	timer := time.AfterFunc(idle, func() { cancel(fmt.Errorf("%w for %s", ErrIdle, idle)) })
	fail := func(err error) (io.ReadCloser, Claims, error) {
		timer.Stop()
		cancel(nil)
		if cause := context.Cause(ctx); errors.Is(cause, ErrIdle) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		return nil, claims, err
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain and the node identity are checked in VerifyConnection
		// (the source is known by its node name, not a host name).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifySource(cs, c.cfg.RootCAs, claims.Source)
		},
		NextProtos: []string{"h2", "http/1.1"},
	}
	if c.cfg.Certificate != nil {
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.cfg.Certificate()
		}
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 30 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+streamPath, nil)
	if err != nil {
		tr.CloseIdleConnections()
		return fail(fmt.Errorf("transfer %s from %s: %w", claims.Transfer, addr, err))
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		tr.CloseIdleConnections()
		return fail(fmt.Errorf("transfer %s from %s (%s): %w", claims.Transfer, claims.Source, addr, classifyConnError(err)))
	}
	if resp.StatusCode != http.StatusOK {
		defer tr.CloseIdleConnections()
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fail(fmt.Errorf("transfer %s refused by %s: %w", claims.Transfer, claims.Source,
			&refusal{err: wireError(resp.Header.Get(errorHeader), resp.StatusCode), msg: strings.TrimSpace(string(msg))}))
	}
	return &body{ReadCloser: resp.Body, tr: tr, ctx: ctx, cancel: cancel, timer: timer, idle: idle}, claims, nil
}

// ReceiveVolume pulls the stream token authorises into the volume req of
// pool. A refusal by the source leaves nothing on pool (the receive does
// not start); a stream cut or cancelled half-way is refused by the pool,
// which removes what it received.
func (c *Client) ReceiveVolume(ctx context.Context, pool backend.Streamer, addr, token string, req backend.VolumeRequest) (*backend.Volume, error) {
	r, claims, err := c.Open(ctx, addr, token)
	if err != nil {
		klog.InfoS("transfer not started", "transferID", claims.Transfer, "volumeID", req.ID, "snapshotID", claims.Snapshot, "source", claims.Source, "err", err)
		return nil, err
	}
	defer r.Close()
	v, err := pool.ReceiveVolume(ctx, req, r)
	if err != nil {
		klog.InfoS("transfer failed", "transferID", claims.Transfer, "volumeID", req.ID, "snapshotID", claims.Snapshot, "source", claims.Source, "err", err)
		return nil, fmt.Errorf("transfer %s from %s: %w", claims.Transfer, claims.Source, err)
	}
	klog.InfoS("transfer received", "transferID", claims.Transfer, "volumeID", req.ID, "snapshotID", claims.Snapshot, "parentID", claims.Parent, "source", claims.Source)
	return v, nil
}

// ReceiveSnapshot pulls the stream token authorises into snapshot id of
// pool (e.g. the parent of later incremental transfers).
func (c *Client) ReceiveSnapshot(ctx context.Context, pool backend.Streamer, addr, token, id, name string) (*backend.Snapshot, error) {
	r, claims, err := c.Open(ctx, addr, token)
	if err != nil {
		klog.InfoS("transfer not started", "transferID", claims.Transfer, "snapshotID", id, "source", claims.Source, "err", err)
		return nil, err
	}
	defer r.Close()
	s, err := pool.ReceiveSnapshot(ctx, id, name, r)
	if err != nil {
		klog.InfoS("transfer failed", "transferID", claims.Transfer, "snapshotID", id, "source", claims.Source, "err", err)
		return nil, fmt.Errorf("transfer %s from %s: %w", claims.Transfer, claims.Source, err)
	}
	klog.InfoS("transfer received", "transferID", claims.Transfer, "snapshotID", id, "sentSnapshotID", claims.Snapshot, "parentID", claims.Parent, "source", claims.Source)
	return s, nil
}

// verifySource checks the server's chain against the transfer CA and that
// it names node.
func verifySource(cs tls.ConnectionState, roots *x509.CertPool, node string) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the source sent no certificate", ErrUnauthenticated)
	}
	got, err := verifiedNode(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return fmt.Errorf("source certificate: %w", err)
	}
	if got != node {
		return fmt.Errorf("%w: the source is %s, the token names %s", ErrUnauthenticated, got, node)
	}
	return nil
}

// classifyConnError marks a TLS refusal, either side's, as
// ErrUnauthenticated (the source refused this node's certificate, or
// this node refused the source's).
func classifyConnError(err error) error {
	if errors.Is(err, ErrUnauthenticated) {
		return err
	}
	var opErr *net.OpError
	var verr *tls.CertificateVerificationError
	if (errors.As(err, &opErr) && opErr.Op == "remote error") || errors.As(err, &verr) ||
		strings.Contains(err.Error(), "remote error: tls:") {
		return fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return err
}

// wireError is the error a refusal's name stands for.
func wireError(name string, status int) error {
	for _, w := range wireErrors {
		if w.name == name {
			return w.err
		}
	}
	switch name {
	case "not-found":
		return backend.ErrNotFound
	case "failed-precondition":
		return backend.ErrPrecondition
	case "invalid":
		return backend.ErrInvalid
	case "busy":
		return backend.ErrBusy
	case "unavailable":
		return backend.ErrUnavailable
	}
	return fmt.Errorf("HTTP status %d", status)
}

// refusal is the source's refusal: its message, and the error it names.
type refusal struct {
	err error
	msg string
}

func (r *refusal) Error() string {
	if r.msg == "" {
		return r.err.Error()
	}
	return r.msg
}

func (r *refusal) Unwrap() error { return r.err }

// body closes the transport's connections with the stream.
type body struct {
	io.ReadCloser
	tr     *http.Transport
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	idle   time.Duration
}

// Read restarts the idle timer with every read that made progress, and
// names ErrIdle when the timer ended the transfer.
func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, ErrIdle) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return n, err
}

func (b *body) Close() error {
	b.timer.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	b.tr.CloseIdleConnections()
	return err
}
