package export_test

// These tests run against a real S3 server: SeaweedFS started by
// internal/s3test (test/s3/build.sh builds it); they skip without it
// outside CI.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/csi-thin/csi-thin/internal/s3test"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
)

const partSize = 8 << 20

func newStore(t *testing.T, srv *s3test.Server, modify func(*export.Config)) *export.Store {
	t.Helper()
	cfg := export.Config{
		Endpoint:        "http://" + srv.Endpoint,
		Bucket:          srv.Bucket,
		AccessKeyID:     srv.AccessKey,
		SecretAccessKey: srv.SecretKey,
		PartSize:        partSize,
	}
	if modify != nil {
		modify(&cfg)
	}
	st, err := export.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func streamKey(volumeID, snapshotID, name string) string {
	return "csi-thin-exports/v1/" + volumeID + "/" + snapshotID + "/" + name
}

// onlyStream hides bytes.Reader's WriterTo/Seeker/Len, so the store sees
// a stream of unknown length like a pipe from the stream layer.
type onlyStream struct{ r io.Reader }

func (o onlyStream) Read(p []byte) (int, error) { return o.r.Read(p) }

func TestRoundTrip64MiB(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	st := newStore(t, srv, nil)
	ctx := context.Background()
	vol, snap := backend.VolumeIDFor("pvc-round-trip"), backend.SnapshotIDFor("snap-round-trip")
	data := randomBytes(t, 64<<20)
	m, err := st.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if m.Length != int64(len(data)) || m.SHA256 != hex.EncodeToString(sum[:]) || m.Volume != vol || m.Snapshot != snap || m.Parent != "" {
		t.Fatalf("manifest %+v does not describe the stream", m)
	}
	// Uploaded in parts of partSize: S3 multipart ETags end in -<parts>.
	info, err := srv.Client.StatObject(ctx, srv.Bucket, streamKey(vol, snap, "stream"), minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("-%d", len(data)/partSize); !strings.HasSuffix(info.ETag, want) {
		t.Errorf("stream ETag %q: want a multipart upload of %s parts", info.ETag, want[1:])
	}
	var got bytes.Buffer
	gm, err := st.Get(ctx, m.ID(), &got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("Get returned %d bytes that differ from the %d put", got.Len(), len(data))
	}
	if gm != m {
		t.Fatalf("Get's manifest %+v, Put's %+v", gm, m)
	}
	// Idempotent: the same export again is the one stored; the reader is not read.
	again, err := st.Put(ctx, vol, snap, "", failingReader{t})
	if err != nil || again != m {
		t.Fatalf("Put again = %+v, %v; want %+v", again, err, m)
	}
	// An empty stream is a valid export too.
	empty, err := st.Put(ctx, vol, backend.SnapshotIDFor("empty"), "", onlyStream{bytes.NewReader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	got.Reset()
	if _, err := st.Get(ctx, empty.ID(), &got); err != nil || got.Len() != 0 || empty.Length != 0 {
		t.Fatalf("empty export: %+v, Get %d bytes, %v", empty, got.Len(), err)
	}
}

type failingReader struct{ t *testing.T }

func (f failingReader) Read([]byte) (int, error) {
	f.t.Error("the stream was read")
	return 0, errors.New("must not be read")
}

func TestIncrementalChain(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	st := newStore(t, srv, nil)
	ctx := context.Background()
	vol := backend.VolumeIDFor("pvc-chain")
	full, inc1, inc2 := backend.SnapshotIDFor("full"), backend.SnapshotIDFor("inc1"), backend.SnapshotIDFor("inc2")
	put := func(snap, parent string) export.Manifest {
		t.Helper()
		m, err := st.Put(ctx, vol, snap, parent, onlyStream{bytes.NewReader(randomBytes(t, 1<<20))})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	mFull := put(full, "")
	mInc1 := put(inc1, mFull.ID())
	mInc2 := put(inc2, mInc1.ID())
	// Another volume's exports are not in this volume's chain or list.
	other := backend.VolumeIDFor("pvc-other")
	if _, err := st.Put(ctx, other, full, "", onlyStream{bytes.NewReader([]byte("x"))}); err != nil {
		t.Fatal(err)
	}

	ids := func(ms []export.Manifest) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.ID())
		}
		return strings.Join(s, " ")
	}
	for _, tt := range []struct {
		id   string
		want []export.Manifest
	}{
		{mInc2.ID(), []export.Manifest{mFull, mInc1, mInc2}},
		{mInc1.ID(), []export.Manifest{mFull, mInc1}},
		{mFull.ID(), []export.Manifest{mFull}},
	} {
		chain, err := st.Chain(ctx, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if ids(chain) != ids(tt.want) {
			t.Errorf("Chain(%s) = %s, want %s", tt.id, ids(chain), ids(tt.want))
		}
	}
	list, err := st.List(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("List = %s, want the 3 exports of %s", ids(list), vol)
	}

	// A parent must be an existing export of the same volume, and an
	// export's parent cannot change.
	if _, err := st.Put(ctx, vol, backend.SnapshotIDFor("x"), other+"/"+full, onlyStream{bytes.NewReader(nil)}); !errors.Is(err, export.ErrInvalid) {
		t.Errorf("parent of another volume: %v, want ErrInvalid", err)
	}
	if _, err := st.Put(ctx, vol, backend.SnapshotIDFor("x"), vol+"/"+backend.SnapshotIDFor("never"), onlyStream{bytes.NewReader(nil)}); !errors.Is(err, export.ErrNotFound) {
		t.Errorf("missing parent: %v, want ErrNotFound", err)
	}
	if _, err := st.Put(ctx, vol, inc2, mFull.ID(), failingReader{t}); !errors.Is(err, export.ErrConflict) {
		t.Errorf("re-export on another parent: %v, want ErrConflict", err)
	}

	// A parent still needed is kept; leaves go first.
	for _, id := range []string{mFull.ID(), mInc1.ID()} {
		if err := st.Delete(ctx, id); !errors.Is(err, export.ErrInUse) {
			t.Fatalf("Delete(%s) = %v, want ErrInUse", id, err)
		}
	}
	if _, err := st.Chain(ctx, mInc2.ID()); err != nil {
		t.Fatalf("the chain after refused deletes: %v", err)
	}
	for _, id := range []string{mInc2.ID(), mInc1.ID(), mFull.ID(), mFull.ID()} {
		if err := st.Delete(ctx, id); err != nil {
			t.Fatalf("Delete(%s): %v", id, err)
		}
	}
	if list, err := st.List(ctx, vol); err != nil || len(list) != 0 {
		t.Fatalf("List after deletes = %s, %v", ids(list), err)
	}
	if n := countObjects(t, srv, "csi-thin-exports/v1/"+vol+"/"); n != 0 {
		t.Fatalf("%d objects of %s left after deleting its exports", n, vol)
	}
	if list, err := st.List(ctx, other); err != nil || len(list) != 1 {
		t.Fatalf("the other volume's exports: %s, %v", ids(list), err)
	}
}

func countObjects(t *testing.T, srv *s3test.Server, prefix string) int {
	t.Helper()
	n := 0
	for obj := range srv.Client.ListObjects(context.Background(), srv.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		n++
	}
	return n
}

// recordingWriter counts what Get wrote.
type recordingWriter struct{ n int }

func (w *recordingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func TestDamagedExportRefused(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	st := newStore(t, srv, nil)
	ctx := context.Background()
	vol := backend.VolumeIDFor("pvc-damage")
	data := randomBytes(t, 3<<20)
	putObject := func(key string, b []byte) {
		t.Helper()
		if _, err := srv.Client.PutObject(ctx, srv.Bucket, key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 1
	tests := []struct {
		name string
		// damage alters the objects of export vol/snap.
		damage func(snap string)
		// early: refused before a byte reaches the writer.
		early bool
		want  string
	}{
		{"one bit flipped", func(snap string) { putObject(streamKey(vol, snap, "stream"), flipped) }, false, "sha256"},
		{"truncated", func(snap string) { putObject(streamKey(vol, snap, "stream"), data[:len(data)-1]) }, true, "bytes"},
		{"longer", func(snap string) { putObject(streamKey(vol, snap, "stream"), append(bytes.Clone(data), 0)) }, true, "bytes"},
		{"stream missing", func(snap string) {
			if err := srv.Client.RemoveObject(ctx, srv.Bucket, streamKey(vol, snap, "stream"), minio.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}, true, "missing"},
		{"manifest not JSON", func(snap string) { putObject(streamKey(vol, snap, "manifest.json"), []byte("{")) }, true, "manifest"},
		{"manifest of another snapshot", func(snap string) {
			other, err := st.Put(ctx, vol, backend.SnapshotIDFor("other-"+snap), "", onlyStream{bytes.NewReader(data)})
			if err != nil {
				t.Fatal(err)
			}
			obj, err := srv.Client.GetObject(ctx, srv.Bucket, streamKey(vol, other.Snapshot, "manifest.json"), minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer obj.Close()
			b, err := io.ReadAll(obj)
			if err != nil {
				t.Fatal(err)
			}
			putObject(streamKey(vol, snap, "manifest.json"), b)
		}, true, "describes"},
		{"manifest with an escaping parent", func(snap string) {
			m := fmt.Sprintf(`{"formatVersion":1,"volume":%q,"snapshot":%q,"parent":"../../x","length":%d,"sha256":"%x","created":"2026-01-01T00:00:00Z"}`,
				vol, snap, len(data), sha256.Sum256(data))
			putObject(streamKey(vol, snap, "manifest.json"), []byte(m))
		}, true, "export ID"},
		{"manifest of a newer format", func(snap string) {
			m := fmt.Sprintf(`{"formatVersion":2,"volume":%q,"snapshot":%q,"length":%d,"sha256":"%x","created":"2026-01-01T00:00:00Z"}`,
				vol, snap, len(data), sha256.Sum256(data))
			putObject(streamKey(vol, snap, "manifest.json"), []byte(m))
		}, true, "format version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := backend.SnapshotIDFor(tt.name)
			m, err := st.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader(data)})
			if err != nil {
				t.Fatal(err)
			}
			tt.damage(snap)
			var w recordingWriter
			_, err = st.Get(ctx, m.ID(), &w)
			if !errors.Is(err, export.ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Get = %v, want ErrCorrupt saying %q", err, tt.want)
			}
			if tt.early && w.n != 0 {
				t.Fatalf("Get wrote %d bytes before refusing the export", w.n)
			}
			// An incremental export on top of it cannot be rebuilt either.
			if _, err := st.Chain(ctx, m.ID()); tt.early && strings.Contains(tt.name, "manifest") && !errors.Is(err, export.ErrCorrupt) {
				t.Fatalf("Chain = %v, want ErrCorrupt", err)
			}
		})
	}

	// A chain whose parent's manifest is gone is refused as a whole.
	base, err := st.Put(ctx, vol, backend.SnapshotIDFor("base"), "", onlyStream{bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
	child, err := st.Put(ctx, vol, backend.SnapshotIDFor("child"), base.ID(), onlyStream{bytes.NewReader(data[:10])})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Client.RemoveObject(ctx, srv.Bucket, streamKey(vol, base.Snapshot, "manifest.json"), minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Chain(ctx, child.ID()); !errors.Is(err, export.ErrNotFound) || !strings.Contains(err.Error(), "chain of "+child.ID()) {
		t.Fatalf("Chain with its parent gone = %v, want ErrNotFound naming the chain", err)
	}
	if _, err := st.Get(ctx, vol+"/"+backend.SnapshotIDFor("never exported"), io.Discard); !errors.Is(err, export.ErrNotFound) {
		t.Fatalf("Get of a missing export = %v, want ErrNotFound", err)
	}
}

// errAfter yields n random bytes, then fails like a stream whose producer died.
type errAfter struct{ n int }

func (e *errAfter) Read(p []byte) (int, error) {
	if e.n == 0 {
		return 0, errors.New("producer died")
	}
	p = p[:min(len(p), e.n)]
	_, _ = rand.Read(p)
	e.n -= len(p)
	return len(p), nil
}

func TestHalfUploadInvisibleAndCollected(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	st := newStore(t, srv, nil)
	ctx := context.Background()
	vol := backend.VolumeIDFor("pvc-half")
	kept, err := st.Put(ctx, vol, backend.SnapshotIDFor("kept"), "", onlyStream{bytes.NewReader(randomBytes(t, 1<<20))})
	if err != nil {
		t.Fatal(err)
	}

	// 1. The stream fails after 2.5 parts: no export, no object, no open
	// multipart upload (the upload is aborted).
	died := backend.SnapshotIDFor("died")
	if _, err := st.Put(ctx, vol, died, "", &errAfter{n: partSize * 5 / 2}); err == nil || !strings.Contains(err.Error(), "producer died") {
		t.Fatalf("Put of a failing stream = %v, want its error", err)
	}
	if _, err := st.Manifest(ctx, vol+"/"+died); !errors.Is(err, export.ErrNotFound) {
		t.Fatalf("the failed export's manifest: %v, want ErrNotFound", err)
	}
	if n := countObjects(t, srv, "csi-thin-exports/v1/"+vol+"/"+died+"/"); n != 0 {
		t.Fatalf("a failed Put left %d objects", n)
	}

	// 2. A crash after the stream, before the manifest; and 3. a crash in
	// the middle of a multipart upload (parts sent, never completed).
	crashed := backend.SnapshotIDFor("crashed")
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, streamKey(vol, crashed, "stream"), bytes.NewReader([]byte("partial")), 7, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: srv.Client}
	midway := backend.SnapshotIDFor("midway")
	uploadID, err := core.NewMultipartUpload(ctx, srv.Bucket, streamKey(vol, midway, "stream"), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := randomBytes(t, partSize)
	if _, err := core.PutObjectPart(ctx, srv.Bucket, streamKey(vol, midway, "stream"), uploadID, 1, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}

	list, err := st.List(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != kept {
		t.Fatalf("List = %+v, want only %s", list, kept.ID())
	}
	if _, err := st.Get(ctx, vol+"/"+crashed, io.Discard); !errors.Is(err, export.ErrNotFound) {
		t.Fatalf("Get of a stream without manifest = %v, want ErrNotFound", err)
	}

	// Recent leftovers may be uploads in progress: spared.
	removed, err := st.GarbageCollect(ctx, time.Now().Add(-time.Hour))
	if err != nil || len(removed) != 0 {
		t.Fatalf("GarbageCollect(an hour ago) = %v, %v; want nothing removed", removed, err)
	}
	removed, err = st.GarbageCollect(ctx, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := streamKey(vol, crashed, "stream") + " " + streamKey(vol, midway, "stream")
	if strings.Join(removed, " ") != want {
		t.Fatalf("GarbageCollect removed %q, want %q", removed, want)
	}
	if n := countObjects(t, srv, "csi-thin-exports/v1/"+vol+"/"+crashed+"/"); n != 0 {
		t.Fatalf("the orphaned stream is still there (%d objects)", n)
	}
	for up := range srv.Client.ListIncompleteUploads(ctx, srv.Bucket, "csi-thin-exports/", true) {
		t.Fatalf("an unfinished upload survived: %+v", up)
	}
	if _, err := st.Get(ctx, kept.ID(), io.Discard); err != nil {
		t.Fatalf("the complete export after garbage collection: %v", err)
	}
}

func TestWrongCredentials(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	ctx := context.Background()
	vol, snap := backend.VolumeIDFor("pvc-auth"), backend.SnapshotIDFor("snap-auth")
	good := newStore(t, srv, nil)
	m, err := good.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader([]byte("data"))})
	if err != nil {
		t.Fatal(err)
	}
	for name, modify := range map[string]func(*export.Config){
		"wrong secret key":   func(c *export.Config) { c.SecretAccessKey += "x" },
		"unknown access key": func(c *export.Config) { c.AccessKeyID = "nobody" },
	} {
		t.Run(name, func(t *testing.T) {
			st := newStore(t, srv, modify)
			if _, err := st.Put(ctx, vol, backend.SnapshotIDFor("other"), "", onlyStream{bytes.NewReader([]byte("data"))}); !errors.Is(err, export.ErrAuth) {
				t.Errorf("Put = %v, want ErrAuth", err)
			}
			if _, err := st.Get(ctx, m.ID(), io.Discard); !errors.Is(err, export.ErrAuth) {
				t.Errorf("Get = %v, want ErrAuth", err)
			}
			if _, err := st.List(ctx, vol); !errors.Is(err, export.ErrAuth) {
				t.Errorf("List = %v, want ErrAuth", err)
			}
			if err := st.Delete(ctx, m.ID()); !errors.Is(err, export.ErrAuth) {
				t.Errorf("Delete = %v, want ErrAuth", err)
			}
		})
	}
	if _, err := good.Get(ctx, m.ID(), io.Discard); err != nil {
		t.Fatalf("the export after refused requests: %v", err)
	}
}

func TestPrefixAndBucket(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	ctx := context.Background()
	vol, snap := backend.VolumeIDFor("pvc-prefix"), backend.SnapshotIDFor("snap-prefix")
	st := newStore(t, srv, func(c *export.Config) { c.Prefix = "cluster-a/" })
	if _, err := st.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader([]byte("data"))}); err != nil {
		t.Fatal(err)
	}
	if n, all := countObjects(t, srv, "cluster-a/csi-thin-exports/v1/"+vol+"/"+snap+"/"), countObjects(t, srv, ""); n != 2 || all != 2 {
		t.Fatalf("%d objects under the prefix, %d in the bucket; want the 2 of the export", n, all)
	}
	// The same bucket without the prefix holds no exports.
	if list, err := newStore(t, srv, nil).List(ctx, vol); err != nil || len(list) != 0 {
		t.Fatalf("List without the prefix = %v, %v", list, err)
	}
	noBucket := newStore(t, srv, func(c *export.Config) { c.Bucket = "no-such-bucket" })
	if _, err := noBucket.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader([]byte("data"))}); !errors.Is(err, export.ErrNotFound) || !strings.Contains(err.Error(), "no-such-bucket") {
		t.Fatalf("Put into a missing bucket = %v, want ErrNotFound naming it", err)
	}
}

// An HTTPS endpoint with a private CA: trusted through the CA bundle (or,
// for tests, InsecureSkipVerify); refused without it.
func TestCABundle(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTestTLS(t)
	ctx := context.Background()
	vol, snap := backend.VolumeIDFor("pvc-tls"), backend.SnapshotIDFor("snap-tls")
	https := func(c *export.Config) { c.Endpoint = "https://" + srv.Endpoint }
	withCA := newStore(t, srv, func(c *export.Config) { https(c); c.CABundle = srv.CACert })
	m, err := withCA.Put(ctx, vol, snap, "", onlyStream{bytes.NewReader([]byte("over TLS"))})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := withCA.Get(ctx, m.ID(), &got); err != nil || got.String() != "over TLS" {
		t.Fatalf("Get over TLS = %q, %v", got.String(), err)
	}
	if _, err := newStore(t, srv, https).List(ctx, vol); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("List without the CA bundle = %v, want a certificate error", err)
	}
	if list, err := newStore(t, srv, func(c *export.Config) { https(c); c.InsecureSkipVerify = true }).List(ctx, vol); err != nil || len(list) != 1 {
		t.Fatalf("List with InsecureSkipVerify = %v, %v", list, err)
	}
}
