package snapshotexport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/keylock"
)

// Restorer rebuilds a volume on this node from an export: it resolves the
// export's chain (Store.Chain: the full export first) and applies each
// stream in order, the parents as snapshots (ReceiveSnapshot), the last
// as the volume (ReceiveVolume). The parents it received are deleted
// afterwards (the volume does not need them); they carry the name
// RestoreParentName(volume ID) so that a retry after a crash reuses and
// then deletes them. Restores of one source volume's exports run one at a
// time: they would receive, hold and delete the same parents.
type Restorer struct {
	// Secrets reads the store's Secret, uncached (as Reconciler.Secrets).
	Secrets client.Reader
	Pool    backend.Local
	Streams backend.Streamer

	chains keylock.Locks // by source volume ID (chainKey)
}

// chainKey is what restores that may share parents have in common: the
// source volume of their export.
func chainKey(src *thinv1.VolumeSource) string {
	if volumeID, _, err := export.ParseID(src.ID); err == nil {
		return volumeID
	}
	return src.ID
}

// RestoreParentName is the name of a parent snapshot received for the
// restore of volumeID.
func RestoreParentName(volumeID string) string { return "restore-parent-of-" + volumeID }

// Progress is what a restore has read of its chain's streams, and their
// total length (the manifests'; 0 until the chain is resolved). Its
// methods may be called while the restore runs.
type Progress struct {
	done, total atomic.Int64
}

// Bytes returns the bytes read so far and the total.
func (p *Progress) Bytes() (done, total int64) {
	if p == nil {
		return 0, 0
	}
	return p.done.Load(), p.total.Load()
}

// Add counts n more bytes read.
func (p *Progress) Add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// SetTotal records the chain's total length.
func (p *Progress) SetTotal(n int64) {
	if p != nil {
		p.total.Store(n)
	}
}

// Restore makes volume req.ID from the export src (kind export),
// counting what it reads into progress (nil: not counted). It is
// idempotent: a volume that exists is returned. Any failure (a missing or
// corrupt link, a stream whose checksum does not match its manifest,
// refused credentials) leaves neither the volume nor a parent behind.
func (r *Restorer) Restore(ctx context.Context, req backend.VolumeRequest, src *thinv1.VolumeSource, progress *Progress) (*backend.Volume, error) {
	logger := klog.FromContext(ctx).WithValues("exportID", src.ID)
	req.Source = backend.Source{}
	unlock, err := r.chains.Lock(ctx, chainKey(src))
	if err != nil {
		return nil, fmt.Errorf("restore %s: wait for another restore of %s's exports: %w", req.ID, chainKey(src), err)
	}
	defer unlock()
	v, err := r.restore(ctx, req, src, progress)
	if cerr := r.removeParents(ctx, req.ID); cerr != nil {
		logger.Error(cerr, "remove the parents received for the restore")
		if err == nil {
			err = cerr // a retry finds the volume and removes them
		}
	}
	return v, err
}

func (r *Restorer) restore(ctx context.Context, req backend.VolumeRequest, src *thinv1.VolumeSource, progress *Progress) (*backend.Volume, error) {
	if v, err := r.Pool.GetVolume(ctx, req.ID); err == nil {
		return v, nil
	} else if !errors.Is(err, backend.ErrNotFound) {
		return nil, err
	}
	if src.Export == nil {
		return nil, fmt.Errorf("restore %s: source export %s names no Secret: %w", req.ID, src.ID, backend.ErrInvalid)
	}
	store, err := openStore(ctx, r.Secrets, src.Export)
	if err != nil {
		if apierrors.IsNotFound(err) || errors.Is(err, export.ErrInvalid) {
			return nil, fmt.Errorf("restore %s: %w: %w", req.ID, backend.ErrPrecondition, err)
		}
		return nil, fmt.Errorf("restore %s: %w", req.ID, err)
	}
	chain, err := store.Chain(ctx, src.ID)
	if err != nil {
		return nil, fmt.Errorf("restore %s from %s: %w", req.ID, src.ID, storeError(err))
	}
	logger := klog.FromContext(ctx)
	var total int64
	var todo []export.Manifest // the parents to receive
	for _, m := range chain[:len(chain)-1] {
		switch s, err := r.Pool.GetSnapshot(ctx, m.Snapshot); {
		case err == nil:
			logger.V(2).Info("parent held already", "snapshotID", m.Snapshot, "name", s.Name)
			continue
		case !errors.Is(err, backend.ErrNotFound):
			return nil, err
		}
		todo = append(todo, m)
		total += m.Length
	}
	last := chain[len(chain)-1]
	progress.SetTotal(total + last.Length)
	for _, m := range todo {
		err := apply(ctx, store, m, progress, func(rd io.Reader) error {
			_, err := r.Streams.ReceiveSnapshot(ctx, m.Snapshot, RestoreParentName(req.ID), rd)
			return err
		}, func() error { return r.Pool.DeleteSnapshot(ctx, m.Snapshot) })
		if err != nil {
			return nil, fmt.Errorf("restore %s: parent %s: %w", req.ID, m.ID(), err)
		}
	}
	var v *backend.Volume
	err = apply(ctx, store, last, progress, func(rd io.Reader) error {
		var err error
		v, err = r.Streams.ReceiveVolume(ctx, req, rd)
		return err
	}, func() error { return r.Pool.DeleteVolume(ctx, req.ID) })
	if err != nil {
		return nil, fmt.Errorf("restore %s: %s: %w", req.ID, last.ID(), err)
	}
	logger.Info("volume restored from export", "links", len(chain), "sizeBytes", v.SizeBytes)
	return v, nil
}

// apply streams export m into receive. The store verifies the stream
// against its manifest only at its end, possibly after the receiver
// accepted it (its own checksums matched): then undo removes what was
// received.
func apply(ctx context.Context, store *export.Store, m export.Manifest, progress *Progress, receive func(io.Reader) error, undo func() error) error {
	pr, pw := io.Pipe()
	got := make(chan error, 1)
	go func() {
		_, err := store.Get(ctx, m.ID(), &countingWriter{w: pw, progress: progress})
		pw.CloseWithError(err)
		got <- err
	}()
	err := receive(pr)
	if err == nil {
		_, err = io.Copy(io.Discard, pr) // let Get reach its verification
	}
	pr.CloseWithError(errors.New("receive ended"))
	gerr := <-got
	switch {
	case err != nil && gerr != nil && isStoreRefusal(gerr):
		return storeError(gerr) // the cause of the receiver's failure
	case errors.Is(err, backend.ErrInvalid):
		// The receiver refused the stream (its own checksums): the
		// request is fine, the export is damaged.
		return fmt.Errorf("%w: export %s is damaged: %v", backend.ErrPrecondition, m.ID(), err)
	case err != nil:
		return err
	case gerr != nil:
		if uerr := undo(); uerr != nil {
			return fmt.Errorf("%w (and removing what was received: %w)", storeError(gerr), uerr)
		}
		return storeError(gerr)
	}
	return nil
}

// countingWriter adds what it writes to a restore's progress.
type countingWriter struct {
	w        io.Writer
	progress *Progress
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.progress.Add(int64(n))
	return n, err
}

func isStoreRefusal(err error) bool {
	return errors.Is(err, export.ErrNotFound) || errors.Is(err, export.ErrCorrupt) || errors.Is(err, export.ErrAuth) || errors.Is(err, export.ErrInvalid)
}

// storeError gives a store's refusal the backend's error for it.
func storeError(err error) error {
	switch {
	case errors.Is(err, export.ErrNotFound):
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	case errors.Is(err, export.ErrCorrupt), errors.Is(err, export.ErrAuth), errors.Is(err, export.ErrInvalid):
		return fmt.Errorf("%w: %w", backend.ErrPrecondition, err)
	}
	return err
}

// Discard deletes what a restore of volumeID from src left behind: the
// parents an attempt received before its agent was killed, when the
// volume is deleted before any retry could reuse and delete them. It
// waits for a restore of the same chain, which may be using them. It is
// idempotent.
func (r *Restorer) Discard(ctx context.Context, volumeID string, src *thinv1.VolumeSource) error {
	unlock, err := r.chains.Lock(ctx, chainKey(src))
	if err != nil {
		return fmt.Errorf("discard the restore of %s: wait for another restore of %s's exports: %w", volumeID, chainKey(src), err)
	}
	defer unlock()
	return r.removeParents(ctx, volumeID)
}

// removeParents deletes the parents received for volumeID's restore.
func (r *Restorer) removeParents(ctx context.Context, volumeID string) error {
	snaps, err := r.Pool.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range snaps {
		if s.Name == RestoreParentName(volumeID) {
			if err := r.Pool.DeleteSnapshot(ctx, s.ID); err != nil && !errors.Is(err, backend.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
