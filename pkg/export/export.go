// Package export keeps snapshot streams in an S3-compatible object store.
//
// An export is two objects under <prefix>csi-thin-exports/v1/<volume>/<snapshot>/:
// "stream", the snapshot's volume stream as the stream layer produced it
// (opaque here), uploaded in parts so memory stays bounded whatever its
// length; and "manifest.json", written last, that names the volume, the
// snapshot, the parent export an incremental stream applies on, and the
// stream's length and SHA-256. An export exists exactly when its manifest
// does: an upload that died half-way leaves at most a stream without a
// manifest, which List never shows and GarbageCollect removes.
//
// The store has no locks: the caller runs at most one Put or Delete per
// volume at a time (the driver's per-ID lock), since two Puts of one
// snapshot would overwrite each other's stream, and a Put of a child
// racing a Delete of its parent could leave the child without it (Chain
// then refuses it).
package export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// FormatVersion is the manifest format this package writes and reads.
const FormatVersion = 1

// Errors callers tell apart (wrapped with the details).
var (
	// ErrInvalid: a malformed ID, name or configuration; nothing was sent.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: no such export (no manifest), or no such bucket.
	ErrNotFound = errors.New("export not found")
	// ErrCorrupt: the export's objects do not match its manifest (a stream
	// missing, truncated, longer or altered; an unreadable manifest).
	ErrCorrupt = errors.New("export corrupt")
	// ErrInUse: the export is the parent of another export.
	ErrInUse = errors.New("export in use")
	// ErrConflict: the snapshot is exported already, on another parent.
	ErrConflict = errors.New("export conflict")
	// ErrAuth: the store refused the credentials.
	ErrAuth = errors.New("object store refused the credentials")
)

const (
	root         = "csi-thin-exports/v1/"
	streamName   = "stream"
	manifestName = "manifest.json"
	// maxChain bounds an incremental chain (and a loop in a forged one).
	maxChain = 1000
	// maxManifest bounds what a manifest read may allocate.
	maxManifest = 64 << 10
)

// Manifest describes one export.
type Manifest struct {
	FormatVersion int    `json:"formatVersion"`
	Volume        string `json:"volume"`
	Snapshot      string `json:"snapshot"`
	// Parent is the export this stream is incremental against ("" for a full one).
	Parent  string    `json:"parent,omitempty"`
	Length  int64     `json:"length"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`
}

// ID is the export's ID: "<volume>/<snapshot>".
func (m Manifest) ID() string { return m.Volume + "/" + m.Snapshot }

// Store is a bucket (and prefix) that holds exports.
type Store struct {
	client   *minio.Client
	bucket   string
	prefix   string
	partSize uint64
	now      func() time.Time
}

// New checks cfg and returns a Store; it does not contact the server.
func New(cfg Config) (*Store, error) {
	cl, err := cfg.client()
	if err != nil {
		return nil, err
	}
	part := cfg.PartSize
	if part == 0 {
		part = DefaultPartSize
	}
	return &Store{client: cl, bucket: cfg.Bucket, prefix: cfg.Prefix + root, partSize: part, now: time.Now}, nil
}

// ParseID splits an export ID into its volume and snapshot IDs, refusing
// anything else: the parts become object keys, so nothing but the two ID
// shapes may pass.
func ParseID(id string) (volumeID, snapshotID string, err error) {
	v, s, ok := strings.Cut(id, "/")
	if !ok || !backend.IsVolumeID(v) || !backend.IsSnapshotID(s) {
		return "", "", fmt.Errorf("%w: export ID %q: want <volume ID>/<snapshot ID>", ErrInvalid, id)
	}
	return v, s, nil
}

func (s *Store) volumeDir(volumeID string) string { return s.prefix + volumeID + "/" }

func (s *Store) key(volumeID, snapshotID, name string) string {
	return s.volumeDir(volumeID) + snapshotID + "/" + name
}

// Put uploads the stream of snapshotID of volumeID, incremental against the
// export parentID ("" for a full stream), and then its manifest. Memory is
// one part (Config.PartSize), whatever the stream's length. Put is
// idempotent: an export that exists with the same parent is returned as it
// is (r is not read); with another parent it is ErrConflict. An error
// leaves no export (at most a stream without a manifest: GarbageCollect).
func (s *Store) Put(ctx context.Context, volumeID, snapshotID, parentID string, r io.Reader) (Manifest, error) {
	if !backend.IsVolumeID(volumeID) {
		return Manifest{}, fmt.Errorf("%w: volume ID %q", ErrInvalid, volumeID)
	}
	if !backend.IsSnapshotID(snapshotID) {
		return Manifest{}, fmt.Errorf("%w: snapshot ID %q", ErrInvalid, snapshotID)
	}
	id := volumeID + "/" + snapshotID
	logger := klog.FromContext(ctx).WithValues("volumeID", volumeID, "snapshotID", snapshotID, "parent", parentID)
	if parentID != "" {
		pv, ps, err := ParseID(parentID)
		if err != nil {
			return Manifest{}, err
		}
		if pv != volumeID || ps == snapshotID {
			return Manifest{}, fmt.Errorf("%w: export %s cannot be incremental against %s: the parent must be another export of the same volume", ErrInvalid, id, parentID)
		}
		if _, err := s.Manifest(ctx, parentID); err != nil {
			return Manifest{}, fmt.Errorf("parent of %s: %w", id, err)
		}
	}
	switch m, err := s.Manifest(ctx, id); {
	case err == nil && m.Parent == parentID:
		logger.V(2).Info("Export exists already")
		return m, nil
	case err == nil:
		return Manifest{}, fmt.Errorf("%w: %s is exported already against parent %q, not %q", ErrConflict, id, m.Parent, parentID)
	case !errors.Is(err, ErrNotFound):
		return Manifest{}, err
	}

	sum := sha256.New()
	counted := &countingReader{r: io.TeeReader(r, sum)}
	info, err := s.client.PutObject(ctx, s.bucket, s.key(volumeID, snapshotID, streamName), counted, -1, minio.PutObjectOptions{
		PartSize:    s.partSize,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("upload stream of %s after %d bytes: %w", id, counted.n, s.classify(err))
	}
	if info.Size != counted.n {
		return Manifest{}, fmt.Errorf("%w: upload of %s: the store took %d bytes of %d", ErrCorrupt, id, info.Size, counted.n)
	}
	m := Manifest{
		FormatVersion: FormatVersion,
		Volume:        volumeID,
		Snapshot:      snapshotID,
		Parent:        parentID,
		Length:        counted.n,
		SHA256:        hex.EncodeToString(sum.Sum(nil)),
		Created:       s.now().UTC().Truncate(time.Second),
	}
	body, err := json.Marshal(m)
	if err != nil {
		return Manifest{}, err
	}
	if _, err := s.client.PutObject(ctx, s.bucket, s.key(volumeID, snapshotID, manifestName), bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{
		ContentType: "application/json",
	}); err != nil {
		return Manifest{}, fmt.Errorf("write manifest of %s: %w", id, s.classify(err))
	}
	logger.Info("Exported snapshot", "bytes", m.Length, "sha256", m.SHA256)
	return m, nil
}

// Manifest reads and checks the manifest of export id.
func (s *Store) Manifest(ctx context.Context, id string) (Manifest, error) {
	volumeID, snapshotID, err := ParseID(id)
	if err != nil {
		return Manifest{}, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.key(volumeID, snapshotID, manifestName), minio.GetObjectOptions{})
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest of %s: %w", id, s.classify(err))
	}
	defer obj.Close()
	body, err := io.ReadAll(io.LimitReader(obj, maxManifest+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest of %s: %w", id, s.classify(err))
	}
	if len(body) > maxManifest {
		return Manifest{}, fmt.Errorf("%w: manifest of %s is larger than %d bytes", ErrCorrupt, id, maxManifest)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: manifest of %s: %w", ErrCorrupt, id, err)
	}
	if err := m.check(volumeID, snapshotID); err != nil {
		return Manifest{}, fmt.Errorf("%w: manifest of %s: %w", ErrCorrupt, id, err)
	}
	return m, nil
}

// check refuses a manifest that does not describe the export it is
// stored as, or whose fields could not have been written by Put.
func (m Manifest) check(volumeID, snapshotID string) error {
	if m.FormatVersion != FormatVersion {
		return fmt.Errorf("format version %d, this driver reads %d", m.FormatVersion, FormatVersion)
	}
	if m.Volume != volumeID || m.Snapshot != snapshotID {
		return fmt.Errorf("it describes %s/%s", m.Volume, m.Snapshot)
	}
	if m.Parent != "" {
		pv, ps, err := ParseID(m.Parent)
		if err != nil {
			return err
		}
		if pv != volumeID || ps == snapshotID {
			return fmt.Errorf("parent %s is not another export of the volume", m.Parent)
		}
	}
	if m.Length < 0 {
		return fmt.Errorf("length %d", m.Length)
	}
	if sum, err := hex.DecodeString(m.SHA256); err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("sha256 %q is not a SHA-256 in hex", m.SHA256)
	}
	return nil
}

// Get writes the stream of export id to w and verifies it against the
// manifest: a stream object that is missing or whose size differs is
// refused before a byte is written; one whose content differs is reported
// (ErrCorrupt) after the copy, so w's consumer must discard what it got
// when Get fails.
func (s *Store) Get(ctx context.Context, id string, w io.Writer) (Manifest, error) {
	m, err := s.Manifest(ctx, id)
	if err != nil {
		return Manifest{}, err
	}
	key := s.key(m.Volume, m.Snapshot, streamName)
	st, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if err := s.classify(err); errors.Is(err, ErrNotFound) {
			return Manifest{}, fmt.Errorf("%w: %s: the stream object is missing", ErrCorrupt, id)
		}
		return Manifest{}, fmt.Errorf("stream of %s: %w", id, s.classify(err))
	}
	if st.Size != m.Length {
		return Manifest{}, fmt.Errorf("%w: %s: the stream object has %d bytes, the manifest says %d", ErrCorrupt, id, st.Size, m.Length)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return Manifest{}, fmt.Errorf("stream of %s: %w", id, s.classify(err))
	}
	defer obj.Close()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), io.LimitReader(obj, m.Length+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("stream of %s after %d bytes: %w", id, n, s.classify(err))
	}
	if n != m.Length {
		return Manifest{}, fmt.Errorf("%w: %s: read %d bytes of the stream, the manifest says %d", ErrCorrupt, id, n, m.Length)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != m.SHA256 {
		return Manifest{}, fmt.Errorf("%w: %s: the stream's sha256 is %s, the manifest says %s", ErrCorrupt, id, got, m.SHA256)
	}
	return m, nil
}

// Chain returns the exports to apply, in order, to rebuild export id: its
// full ancestor first, id last. A missing or corrupt link fails the whole
// chain.
func (s *Store) Chain(ctx context.Context, id string) ([]Manifest, error) {
	var chain []Manifest
	seen := map[string]bool{}
	for next := id; next != ""; {
		if seen[next] || len(chain) == maxChain {
			return nil, fmt.Errorf("%w: the chain of %s loops or is longer than %d exports", ErrCorrupt, id, maxChain)
		}
		seen[next] = true
		m, err := s.Manifest(ctx, next)
		if err != nil {
			if next != id {
				return nil, fmt.Errorf("chain of %s: %w", id, err)
			}
			return nil, err
		}
		chain = append(chain, m)
		next = m.Parent
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}

// List returns the exports of volumeID (those with a manifest), oldest first.
func (s *Store) List(ctx context.Context, volumeID string) ([]Manifest, error) {
	if !backend.IsVolumeID(volumeID) {
		return nil, fmt.Errorf("%w: volume ID %q", ErrInvalid, volumeID)
	}
	var out []Manifest
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.volumeDir(volumeID), Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("list exports of %s: %w", volumeID, s.classify(obj.Err))
		}
		snapshotID, name, ok := strings.Cut(strings.TrimPrefix(obj.Key, s.volumeDir(volumeID)), "/")
		if !ok || name != manifestName || !backend.IsSnapshotID(snapshotID) {
			continue
		}
		m, err := s.Manifest(ctx, volumeID+"/"+snapshotID)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Snapshot < out[j].Snapshot
	})
	return out, nil
}

// Delete removes export id, manifest first (so it is gone at once), then
// its stream. An export that another export names as its parent is
// refused (ErrInUse); a missing one is not an error.
func (s *Store) Delete(ctx context.Context, id string) error {
	volumeID, snapshotID, err := ParseID(id)
	if err != nil {
		return err
	}
	all, err := s.List(ctx, volumeID)
	if err != nil {
		return err
	}
	var children []string
	for _, m := range all {
		if m.Parent == id {
			children = append(children, m.ID())
		}
	}
	if len(children) > 0 {
		return fmt.Errorf("%w: %s is the parent of %s", ErrInUse, id, strings.Join(children, ", "))
	}
	for _, name := range []string{manifestName, streamName} {
		if err := s.client.RemoveObject(ctx, s.bucket, s.key(volumeID, snapshotID, name), minio.RemoveObjectOptions{}); err != nil {
			if err := s.classify(err); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("delete %s of %s: %w", name, id, err)
			}
		}
	}
	klog.FromContext(ctx).Info("Deleted export", "volumeID", volumeID, "snapshotID", snapshotID)
	return nil
}

// GarbageCollect removes what failed uploads left behind, older than
// cutoff (so that uploads in progress are spared): stream objects without
// a manifest and unfinished multipart uploads. It returns the keys removed.
func (s *Store) GarbageCollect(ctx context.Context, cutoff time.Time) ([]string, error) {
	logger := klog.FromContext(ctx)
	type snapshotObjects struct {
		hasManifest bool
		stream      *minio.ObjectInfo
	}
	bySnapshot := map[string]*snapshotObjects{}
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("list exports: %w", s.classify(obj.Err))
		}
		dir, name := path.Split(obj.Key)
		e := bySnapshot[dir]
		if e == nil {
			e = &snapshotObjects{}
			bySnapshot[dir] = e
		}
		switch name {
		case manifestName:
			e.hasManifest = true
		case streamName:
			o := obj
			e.stream = &o
		}
	}
	var removed []string
	dirs := make([]string, 0, len(bySnapshot))
	for dir := range bySnapshot {
		dirs = append(dirs, dir)
	}
	sort.Strings(dirs)
	for _, dir := range dirs {
		e := bySnapshot[dir]
		if e.hasManifest || e.stream == nil || !e.stream.LastModified.Before(cutoff) {
			continue
		}
		if err := s.client.RemoveObject(ctx, s.bucket, e.stream.Key, minio.RemoveObjectOptions{}); err != nil {
			return removed, fmt.Errorf("remove orphaned stream %s: %w", e.stream.Key, s.classify(err))
		}
		logger.Info("Removed a stream without manifest", "key", e.stream.Key, "bytes", e.stream.Size)
		removed = append(removed, e.stream.Key)
	}
	for up := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if up.Err != nil {
			return removed, fmt.Errorf("list unfinished uploads: %w", s.classify(up.Err))
		}
		if !up.Initiated.Before(cutoff) {
			continue
		}
		if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, up.Key); err != nil {
			return removed, fmt.Errorf("abort unfinished upload %s: %w", up.Key, s.classify(err))
		}
		logger.Info("Aborted an unfinished upload", "key", up.Key)
		removed = append(removed, up.Key)
	}
	return removed, nil
}

// classify wraps the store's error in the package's sentinel for it.
func (s *Store) classify(err error) error {
	resp, ok := errorsAs(err)
	if !ok {
		return err
	}
	switch resp.Code {
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("%w (%s: %s): %w", ErrAuth, resp.Code, resp.Message, err)
	case "NoSuchKey":
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case "NoSuchBucket":
		return fmt.Errorf("%w: bucket %s does not exist: %w", ErrNotFound, s.bucket, err)
	}
	return err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
