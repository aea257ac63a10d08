package transfer_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
)

// TestServerTLS: the server speaks TLS 1.3 only, and takes its
// certificate anew for every handshake (a renewed one needs no restart).
func TestServerTLS(t *testing.T) {
	c := transfertest.NewCluster(t)
	cert := c.NodeCertificate(t, "node-a")
	var calls atomic.Int32
	srv, err := transfer.NewServer(transfer.ServerConfig{
		Node: "node-a", Pool: &transfertest.MemPool{Objects: map[string][]byte{}}, Tokens: c.Tokens, UsedTokensDir: t.TempDir(),
		Certificate: func() (*tls.Certificate, error) { calls.Add(1); return cert() }, ClientCAs: c.Roots(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	dial := func(maxVersion uint16) error {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
			InsecureSkipVerify: true, MaxVersion: maxVersion, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return c.NodeCertificate(t, "node-b")()
			},
		})
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(tls.VersionTLS12); err == nil {
		t.Fatal("a TLS 1.2 handshake succeeded")
	}
	for i := range 2 {
		if err := dial(tls.VersionTLS13); err != nil {
			t.Fatalf("TLS 1.3 handshake %d: %v", i, err)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("certificate taken %d times for 2 handshakes", n)
	}
}
