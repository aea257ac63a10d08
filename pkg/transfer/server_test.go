package transfer_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/transfer/transfertest"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// TestServerTLS: the server speaks TLS 1.3 only, and takes its
// certificate anew for every handshake (a renewed one needs no restart).
func TestServerTLS(t *testing.T) {
	c := transfertest.NewCluster(t)
	cert := c.NodeCertificate(t, "node-a")
	var calls atomic.Int32
	srv := transfertest.Serve(t, t, transfer.ServerConfig{
		Node: "node-a", Pool: &transfertest.MemPool{Objects: map[string][]byte{}}, Tokens: c.Tokens, UsedTokensDir: t.TempDir(),
		Certificate: func() (*tls.Certificate, error) { calls.Add(1); return cert() }, ClientCAs: c.Roots(t),
	})
	dial := func(maxVersion uint16) error {
		conn, err := tls.Dial("tcp", srv.Addr, &tls.Config{
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

// stallingPool sends a header and a frame of its snapshot, then nothing
// until the send is cancelled.
type stallingPool struct{ *transfertest.MemPool }

func (p stallingPool) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	sw, err := volstream.NewWriter(w, volstream.Header{Kind: volstream.KindBtrfs, VolumeBytes: backend.GiB, AllocatedBytes: 4 << 20, SnapshotID: id})
	if err != nil {
		return backend.SendStats{}, err
	}
	if _, err := sw.Write(make([]byte, 3<<19)); err != nil {
		return backend.SendStats{}, err
	}
	<-ctx.Done()
	return backend.SendStats{}, ctx.Err()
}

// TestStalledSourceEndsTransfer: a source that stops sending mid-stream
// ends the transfer after the client's idle timeout with ErrIdle, and the
// target keeps nothing.
func TestStalledSourceEndsTransfer(t *testing.T) {
	c := transfertest.NewCluster(t)
	snap := backend.SnapshotIDFor("stalled")
	srv := transfertest.Serve(t, t, transfer.ServerConfig{
		Node: "node-a", Pool: stallingPool{&transfertest.MemPool{Objects: map[string][]byte{}}}, Tokens: c.Tokens,
		UsedTokensDir: t.TempDir(), Certificate: c.NodeCertificate(t, "node-a"), ClientCAs: c.Roots(t),
	})
	ctx := context.Background()
	client, err := transfer.NewClient(transfer.ClientConfig{Certificate: c.NodeCertificate(t, "node-b"), RootCAs: c.Roots(t), IdleTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	dst := &transfertest.MemPool{Objects: map[string][]byte{}}
	tok := c.Token(t, "t-stalled", snap, "", "node-a", "node-b", time.Minute)
	_, err = client.ReceiveVolume(ctx, dst, srv.Addr, tok, backend.VolumeRequest{ID: backend.VolumeIDFor("stalled"), Name: "stalled"})
	if !errors.Is(err, transfer.ErrIdle) {
		t.Fatalf("stalled source: got %v, want %v", err, transfer.ErrIdle)
	}
	if ids := dst.IDs(); len(ids) != 0 {
		t.Fatalf("target holds %v", ids)
	}
}

// unwindingPool starts a send, then, once cancelled, takes a while to
// clean up (as an LVM send releasing its metadata snapshot does).
type unwindingPool struct {
	*transfertest.MemPool
	started chan struct{}
	unwound atomic.Bool
}

func (p *unwindingPool) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	sw, err := volstream.NewWriter(w, volstream.Header{Kind: volstream.KindBtrfs, VolumeBytes: backend.GiB, AllocatedBytes: 4 << 20, SnapshotID: id})
	if err != nil {
		return backend.SendStats{}, err
	}
	if _, err := sw.Write(make([]byte, 3<<19)); err != nil {
		return backend.SendStats{}, err
	}
	close(p.started)
	<-ctx.Done()
	time.Sleep(300 * time.Millisecond)
	p.unwound.Store(true)
	return backend.SendStats{}, ctx.Err()
}

// TestStopWaitsForSendsToUnwind: a stopped server returns from Serve only
// after the sends it cancelled have returned, so an agent that exits
// after Serve leaves nothing held on the source.
func TestStopWaitsForSendsToUnwind(t *testing.T) {
	c := transfertest.NewCluster(t)
	snap := backend.SnapshotIDFor("unwinding")
	pool := &unwindingPool{MemPool: &transfertest.MemPool{Objects: map[string][]byte{}}, started: make(chan struct{})}
	srv := transfertest.Serve(t, t, transfer.ServerConfig{
		Node: "node-a", Pool: pool, Tokens: c.Tokens,
		UsedTokensDir: t.TempDir(), Certificate: c.NodeCertificate(t, "node-a"), ClientCAs: c.Roots(t),
	})
	client, err := transfer.NewClient(transfer.ClientConfig{Certificate: c.NodeCertificate(t, "node-b"), RootCAs: c.Roots(t)})
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Token(t, "t-unwinding", snap, "", "node-a", "node-b", time.Minute)
	received := make(chan error, 1)
	go func() {
		_, err := client.ReceiveVolume(context.Background(), &transfertest.MemPool{Objects: map[string][]byte{}}, srv.Addr, tok,
			backend.VolumeRequest{ID: backend.VolumeIDFor("unwinding"), Name: "unwinding"})
		received <- err
	}()
	select {
	case <-pool.started:
	case err := <-received:
		t.Fatalf("the transfer ended before the send started: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the send did not start")
	}
	srv.Stop()
	if !pool.unwound.Load() {
		t.Fatal("Serve returned while a cancelled send was still unwinding")
	}
	if err := <-received; err == nil {
		t.Fatal("a transfer cut by the server's stop was received whole")
	}
}
