package transfertest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer"
)

// Env is what RunSuite transfers between: two pools of the same kind, as
// two nodes would have.
type Env struct {
	Source, Target backend.Streamer
	// Snapshot is a snapshot of Source holding at least 8 MiB (the
	// cancelled transfers stop after 1 MiB); Child is a later snapshot of
	// the same volume (sent incrementally against Snapshot).
	Snapshot, Child string
	// AccessType is the source volume's: the full and incremental copies
	// are requested with it and must come back with it ("" asks for and
	// checks nothing).
	AccessType backend.AccessType
	// Received checks that volume v of Target has the content of snapshot
	// (Snapshot or Child) of Source.
	Received func(t *testing.T, v *backend.Volume, snapshot string)
	// NothingLeft checks that Target holds exactly the volumes and
	// snapshots of keep and nothing of a refused or unfinished receive.
	NothingLeft func(t *testing.T, keep []string)
}

// Lister is what Holds reads of a real pool.
type Lister interface {
	ListVolumes(ctx context.Context) ([]*backend.Volume, error)
	ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error)
}

// Holds checks that pool lists exactly the volumes and snapshots of keep:
// the part of a NothingLeft that every kind of pool shares.
func Holds(t testing.TB, pool Lister, keep []string) {
	t.Helper()
	vols, err := pool.ListVolumes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := pool.ListSnapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, v := range vols {
		have = append(have, v.ID)
	}
	for _, s := range snaps {
		have = append(have, s.ID)
	}
	slices.Sort(have)
	if want := slices.Sorted(slices.Values(keep)); !slices.Equal(have, want) {
		t.Fatalf("target holds %v, want %v", have, want)
	}
}

const (
	sourceNode = "node-a"
	targetNode = "node-b"
)

// Server is a running transfer server.
type Server struct {
	Addr string
	// Stop stops it (again: nothing).
	Stop func()
}

// Serve runs a transfer server of cfg on a loopback port; it stops with
// Stop or at the end of owner (which may outlive t: a suite's subtest
// that restarts the server).
func Serve(t, owner testing.TB, cfg transfer.ServerConfig) *Server {
	t.Helper()
	srv, err := transfer.NewServer(cfg)
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
	s := &Server{Addr: ln.Addr().String()}
	stopped := false
	s.Stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			owner.Errorf("transfer server: %v", err)
		}
	}
	owner.Cleanup(s.Stop)
	return s
}

// startServer starts the suite's source for the rest of owner.
func startServer(t, owner *testing.T, c *Cluster, pool backend.Streamer, usedDir string) *Server {
	t.Helper()
	return Serve(t, owner, transfer.ServerConfig{
		Node: sourceNode, Pool: pool, Tokens: c.Tokens, UsedTokensDir: usedDir,
		Certificate: c.NodeCertificate(t, sourceNode), ClientCAs: c.Roots(t),
	})
}

// RunSuite proves the transport on env: a full and an incremental
// transfer arrive whole; every refusal (peer without a certificate or
// with one of another CA, a source that is not the token's, a token
// signed by another key, for another target, expired, replayed, also
// after the source restarted; an unknown snapshot) has its error and
// gRPC code and leaves nothing on the target; a transfer cancelled by
// the target, or cut by the source, half-way leaves nothing either.
func RunSuite(t *testing.T, env Env) {
	ctx := context.Background()
	c := NewCluster(t)
	usedDir := t.TempDir()
	suiteT := t
	srv := startServer(t, suiteT, c, env.Source, usedDir)
	client := func(cert func() (*tls.Certificate, error), roots *x509.CertPool) *transfer.Client {
		cl, err := transfer.NewClient(transfer.ClientConfig{Certificate: cert, RootCAs: roots})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	target := client(c.NodeCertificate(t, targetNode), c.Roots(t))
	token := func(snapshot, parent string) string {
		return c.Token(t, "t-"+snapshot, snapshot, parent, sourceNode, targetNode, time.Minute)
	}
	var keep []string
	volID := func(name string) string { return backend.VolumeIDFor("transfer-" + name) }

	received := func(t *testing.T, v *backend.Volume, snapshot string) {
		t.Helper()
		if env.AccessType != "" && v.AccessType != env.AccessType {
			t.Fatalf("volume %s received as %q, requested %q", v.ID, v.AccessType, env.AccessType)
		}
		env.Received(t, v, snapshot)
	}
	t.Run("full and incremental", func(t *testing.T) {
		v, err := target.ReceiveVolume(ctx, env.Target, srv.Addr, token(env.Snapshot, ""),
			backend.VolumeRequest{ID: volID("full"), Name: "full", AccessType: env.AccessType})
		if err != nil {
			t.Fatalf("full transfer: %v", err)
		}
		received(t, v, env.Snapshot)
		keep = append(keep, v.ID)
		s, err := target.ReceiveSnapshot(ctx, env.Target, srv.Addr, token(env.Snapshot, ""), env.Snapshot, "parent")
		if err != nil {
			t.Fatalf("snapshot transfer: %v", err)
		}
		keep = append(keep, s.ID)
		v, err = target.ReceiveVolume(ctx, env.Target, srv.Addr, token(env.Child, env.Snapshot),
			backend.VolumeRequest{ID: volID("incremental"), Name: "incremental", AccessType: env.AccessType})
		if err != nil {
			t.Fatalf("incremental transfer: %v", err)
		}
		received(t, v, env.Child)
		keep = append(keep, v.ID)
		env.NothingLeft(t, keep)
	})

	other := NewCluster(t)
	_, strangerKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name   string
		client *transfer.Client
		token  func() string
		want   error
		code   codes.Code
	}{
		{"no client certificate", client(nil, c.Roots(t)), func() string { return token(env.Snapshot, "") },
			transfer.ErrUnauthenticated, codes.Unauthenticated},
		{"certificate of another CA", client(other.NodeCertificate(t, targetNode), c.Roots(t)), func() string { return token(env.Snapshot, "") },
			transfer.ErrUnauthenticated, codes.Unauthenticated},
		{"source not the token's", target, func() string {
			return c.Token(t, "t-other-source", env.Snapshot, "", "node-c", targetNode, time.Minute)
		}, transfer.ErrUnauthenticated, codes.Unauthenticated},
		{"token signed by another key", target, func() string {
			tok, _, err := transfer.NewIssuer(strangerKey).Mint(transfer.Claims{Transfer: "t-forged", Snapshot: env.Snapshot,
				Source: sourceNode, Target: targetNode}, time.Now(), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, transfer.ErrBadToken, codes.Unauthenticated},
		{"token for another target", target, func() string {
			return c.Token(t, "t-other-target", env.Snapshot, "", sourceNode, "node-c", time.Minute)
		}, transfer.ErrWrongTarget, codes.PermissionDenied},
		{"token presented by its source", client(c.NodeCertificate(t, sourceNode), c.Roots(t)), func() string {
			return token(env.Snapshot, "")
		}, transfer.ErrWrongTarget, codes.PermissionDenied},
		{"expired token", target, func() string {
			tok, _, err := c.Issuer.Mint(transfer.Claims{Transfer: "t-expired", Snapshot: env.Snapshot,
				Source: sourceNode, Target: targetNode}, time.Now().Add(-2*time.Minute), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, transfer.ErrExpired, codes.Unauthenticated},
		{"unknown snapshot", target, func() string { return token(backend.SnapshotIDFor("no-such-snapshot"), "") },
			backend.ErrNotFound, codes.NotFound},
	}
	for i, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			_, err := r.client.ReceiveVolume(ctx, env.Target, srv.Addr, r.token(), backend.VolumeRequest{ID: volID(fmt.Sprint("refused-", i)), Name: "refused"})
			if !errors.Is(err, r.want) || transfer.Code(err) != r.code {
				t.Fatalf("got %v (code %s), want %v (%s)", err, transfer.Code(err), r.want, r.code)
			}
			env.NothingLeft(t, keep)
		})
	}

	t.Run("replayed token", func(t *testing.T) {
		tok := token(env.Snapshot, "")
		v, err := target.ReceiveVolume(ctx, env.Target, srv.Addr, tok, backend.VolumeRequest{ID: volID("first-use"), Name: "first-use"})
		if err != nil {
			t.Fatalf("first use: %v", err)
		}
		keep = append(keep, v.ID)
		_, err = target.ReceiveVolume(ctx, env.Target, srv.Addr, tok, backend.VolumeRequest{ID: volID("replay"), Name: "replay"})
		if !errors.Is(err, transfer.ErrReplayed) || transfer.Code(err) != codes.PermissionDenied {
			t.Fatalf("replay: got %v (code %s), want %v", err, transfer.Code(err), transfer.ErrReplayed)
		}
		env.NothingLeft(t, keep)
		// The source's agent restarts (same state directory).
		srv.Stop()
		srv = startServer(t, suiteT, c, env.Source, usedDir)
		_, err = target.ReceiveVolume(ctx, env.Target, srv.Addr, tok, backend.VolumeRequest{ID: volID("replay-after-restart"), Name: "replay"})
		if !errors.Is(err, transfer.ErrReplayed) {
			t.Fatalf("replay after a restart: got %v, want %v", err, transfer.ErrReplayed)
		}
		env.NothingLeft(t, keep)
	})

	t.Run("cancelled by the target half-way", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		pool := &cancelAfter{Streamer: env.Target, n: 1 << 20, cancel: cancel}
		_, err := target.ReceiveVolume(cctx, pool, srv.Addr, token(env.Snapshot, ""), backend.VolumeRequest{ID: volID("cancelled"), Name: "cancelled"})
		if err == nil || pool.read < pool.n {
			t.Fatalf("cancelled after %d bytes: got %v, want an error", pool.read, err)
		}
		env.NothingLeft(t, keep)
	})

	t.Run("cut by the source half-way", func(t *testing.T) {
		srv.Stop()
		srv = startServer(t, suiteT, c, &failAfter{Streamer: env.Source, n: 4 << 20}, usedDir)
		_, err := target.ReceiveVolume(ctx, env.Target, srv.Addr, token(env.Snapshot, ""), backend.VolumeRequest{ID: volID("cut"), Name: "cut"})
		// The target refuses the stream as incomplete (no trailer).
		if !errors.Is(err, backend.ErrInvalid) {
			t.Fatalf("a stream cut by the source: got %v, want %v", err, backend.ErrInvalid)
		}
		env.NothingLeft(t, keep)
	})
}

// cancelAfter cancels the receive's context once n bytes were read.
type cancelAfter struct {
	backend.Streamer
	n, read int64
	cancel  func()
}

func (c *cancelAfter) ReceiveVolume(ctx context.Context, req backend.VolumeRequest, r io.Reader) (*backend.Volume, error) {
	return c.Streamer.ReceiveVolume(ctx, req, readFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		c.read += int64(n)
		if c.read >= c.n {
			c.cancel()
		}
		return n, err
	}))
}

// failAfter's sends fail after n bytes.
type failAfter struct {
	backend.Streamer
	n int64
}

func (f *failAfter) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	written := int64(0)
	return f.Streamer.SendSnapshot(ctx, id, parentID, writeFunc(func(p []byte) (int, error) {
		if written+int64(len(p)) > f.n {
			return 0, errors.New("source failed")
		}
		written += int64(len(p))
		return w.Write(p)
	}))
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

type writeFunc func([]byte) (int, error)

func (f writeFunc) Write(p []byte) (int, error) { return f(p) }
