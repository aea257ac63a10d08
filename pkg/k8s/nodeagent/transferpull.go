package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/volstream"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Defaults of a Puller.
const (
	DefaultProgressInterval = 2 * time.Second
	DefaultEventInterval    = 30 * time.Second
	// DefaultCopyAttempts bounds the receives of one copy: past it, the
	// volume fails (the router deletes it and the caller's retry starts
	// a new copy).
	DefaultCopyAttempts = 8
	// retryBackoff times the attempt number is the pause before asking
	// for the next token, at most maxRetryBackoff.
	retryBackoff    = 3 * time.Second
	maxRetryBackoff = 30 * time.Second
	// waitIdentity: the node's transfer identity is not there yet.
	waitIdentity = 5 * time.Second
)

// Puller makes this node's cross-node copies (ThinVolumes whose
// spec.source.node is another node): it pulls the stream of the source
// snapshot from the source node's agent with the one-time token the
// controller granted (router.Copies), and reports the progress in the
// ThinVolume's status and as Events. Each receive runs in its own
// goroutine, so a long copy holds no reconcile worker; deleting the
// ThinVolume cancels it (Cancel), and the pool then removes what it had
// received.
//
// The token protocol: before a receive starts, its token's ID is written
// to status.transfer.spentTokenID (so an agent killed half-way knows,
// when back, that the token is spent); the controller grants a new token
// whenever the granted one is spent, and the agent, finding the token
// spent and no receive running, asks for one by setting the phase
// AwaitingToken.
type Puller struct {
	Client    client.Client
	APIReader client.Reader // status writes re-read past the cache
	Pool      backend.Local
	Streams   backend.Streamer
	// Transfers returns this node's transfer client; nil until the node
	// has its transfer identity.
	Transfers func() *transfer.Client
	Recorder  events.EventRecorder
	Changed   func()
	// Metrics, if set, counts bytes received and receives in flight.
	Metrics *TransferMetrics
	// ProgressInterval is the least time between two progress writes to
	// the status, EventInterval between two progress Events.
	ProgressInterval, EventInterval time.Duration
	// Attempts bounds the receives of one copy.
	Attempts int32

	mu      sync.Mutex
	base    context.Context
	stop    context.CancelFunc
	running map[string]*receive
}

type receive struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// NewPuller returns a Puller with its defaults; Start ends its receives.
func NewPuller(c client.Client, api client.Reader, pool backend.Local, streams backend.Streamer, transfers func() *transfer.Client, rec events.EventRecorder) *Puller {
	base, stop := context.WithCancel(context.Background())
	return &Puller{Client: c, APIReader: api, Pool: pool, Streams: streams, Transfers: transfers, Recorder: rec,
		ProgressInterval: DefaultProgressInterval, EventInterval: DefaultEventInterval, Attempts: DefaultCopyAttempts,
		base: base, stop: stop, running: map[string]*receive{}}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (p *Puller) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable: at the manager's end, the receives
// in flight are cancelled (each removes what it received) and waited for.
func (p *Puller) Start(ctx context.Context) error {
	<-ctx.Done()
	p.stop()
	p.mu.Lock()
	var waits []chan struct{}
	for _, r := range p.running {
		waits = append(waits, r.done)
	}
	p.mu.Unlock()
	for _, w := range waits {
		<-w
	}
	return nil
}

// Cancel ends the receive of volume id, if one runs, and waits until the
// pool has removed what it received.
func (p *Puller) Cancel(id string) {
	p.mu.Lock()
	r := p.running[id]
	p.mu.Unlock()
	if r == nil {
		return
	}
	klog.InfoS("cancelling the copy: its volume is being deleted", "volumeID", id)
	r.cancel()
	<-r.done
}

func (p *Puller) busy(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running[id] != nil
}

// Reconcile moves the copy tv (Pending, on this node) on: nothing while
// its receive runs; else Ready if the pool holds the volume (a receive
// that completed before the agent restarted), a new receive if a fresh
// token is granted, or a request for one.
func (p *Puller) Reconcile(ctx context.Context, tv *thinv1.ThinVolume) (ctrl.Result, error) {
	logger := klog.FromContext(ctx)
	if p.busy(tv.Name) {
		return ctrl.Result{}, nil
	}
	if v, err := p.Pool.GetVolume(ctx, tv.Name); err == nil {
		logger.Info("the copy's volume is in the pool already: received before a restart")
		return ctrl.Result{}, p.finish(ctx, tv.Name, v, nil)
	} else if !errors.Is(err, backend.ErrNotFound) {
		return ctrl.Result{}, fmt.Errorf("look for the copy's volume: %w", err)
	}
	src := tv.Spec.Source
	st := tv.Status.Transfer
	if st == nil {
		st = &thinv1.TransferStatus{}
	}
	token, addr := tv.Annotations[wellknown.AnnotationTransferToken], tv.Annotations[wellknown.AnnotationTransferSource]
	claims, perr := transfer.ParseUnverified(token)
	usable := token != "" && addr != "" && perr == nil && claims.ID != st.SpentTokenID && time.Now().Before(claims.ExpiresAt()) &&
		claims.Snapshot == src.SnapshotID && claims.Source == src.Node && claims.Target == tv.Spec.Node && claims.Transfer == tv.Name
	var tc *transfer.Client
	if p.Transfers != nil {
		tc = p.Transfers()
	}
	if !usable || tc == nil {
		if st.Phase != thinv1.TransferAwaitingToken {
			next := st.DeepCopy()
			next.Phase = thinv1.TransferAwaitingToken
			if err := p.writeTransfer(ctx, tv, next); err != nil {
				return ctrl.Result{}, ignoreConflict(err)
			}
		}
		if tc == nil {
			logger.Info("copy waits for this node's transfer identity")
			return ctrl.Result{RequeueAfter: waitIdentity}, nil
		}
		logger.V(2).Info("copy waits for a transfer token from the controller", "spentTokenID", st.SpentTokenID)
		return ctrl.Result{}, nil // the grant (an annotation) brings the next reconcile
	}
	// Spend the token before using it: killed half-way, the agent must
	// not try it again (the source would refuse it as replayed).
	next := st.DeepCopy()
	next.Phase, next.SpentTokenID, next.Attempts, next.BytesDone = thinv1.TransferReceiving, claims.ID, st.Attempts+1, 0
	if err := p.writeTransfer(ctx, tv, next); err != nil {
		return ctrl.Result{}, ignoreConflict(err)
	}
	p.start(tv.DeepCopy(), tc, addr, token, claims)
	return ctrl.Result{}, nil
}

// writeTransfer writes status.transfer (with the phase Pending kept).
func (p *Puller) writeTransfer(ctx context.Context, tv *thinv1.ThinVolume, st *thinv1.TransferStatus) error {
	tv.Status.Transfer = st
	tv.Status.ObservedGeneration = tv.Generation
	if tv.Status.Phase == "" {
		tv.Status.Phase = thinv1.PhasePending
	}
	return p.Client.Status().Update(ctx, tv)
}

func (p *Puller) start(tv *thinv1.ThinVolume, tc *transfer.Client, addr, token string, claims transfer.Claims) {
	ctx, cancel := context.WithCancel(p.base)
	r := &receive{cancel: cancel, done: make(chan struct{})}
	p.mu.Lock()
	p.running[tv.Name] = r
	p.mu.Unlock()
	go func() {
		defer close(r.done)
		defer cancel()
		logger := klog.Background().WithValues("volumeID", tv.Name, "snapshotID", claims.Snapshot, "sourceNode", claims.Source,
			"sourceAddress", addr, "tokenID", claims.ID, "attempt", tv.Status.Transfer.Attempts)
		ctx = klog.NewContext(ctx, logger)
		v, err := p.receive(ctx, tv, tc, addr, token)
		if err != nil && ctx.Err() == nil && !final(err) && tv.Status.Transfer.Attempts < p.Attempts {
			// Still "running" during the pause: a token granted
			// meanwhile waits for it.
			pause := min(time.Duration(tv.Status.Transfer.Attempts)*retryBackoff, maxRetryBackoff)
			logger.Info("copy attempt failed; asking for a new token", "err", err.Error(), "retryIn", pause)
			p.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "TransferRetry", "CreateVolume",
				"attempt %d of the copy from node %s failed (retrying with a new token in %s): %s", tv.Status.Transfer.Attempts, claims.Source, pause, err.Error())
			select {
			case <-time.After(pause):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			p.done(tv.Name)
			logger.Info("copy cancelled; the pool removed what it had received")
			return
		}
		if err != nil && !final(err) && tv.Status.Transfer.Attempts < p.Attempts {
			// Not running before the status asks for a token: the
			// reconcile that status brings must start the next attempt.
			p.done(tv.Name)
			if werr := p.update(p.base, tv.Name, func(cur *thinv1.ThinVolume) bool {
				if cur.Status.Transfer == nil || cur.Status.Transfer.SpentTokenID != claims.ID {
					return false
				}
				cur.Status.Transfer.Phase, cur.Status.Transfer.Message = thinv1.TransferAwaitingToken, err.Error()
				return true
			}); werr != nil {
				logger.Error(werr, "write the copy's status")
			}
			return
		}
		if err != nil && !final(err) {
			err = fmt.Errorf("%d attempts of the copy failed, the last: %w", tv.Status.Transfer.Attempts, err)
		}
		// Still running while the verdict is written: a reconcile in
		// between (the controller grants a token as soon as one is spent)
		// would otherwise start one attempt past the limit.
		if werr := p.finish(p.base, tv.Name, v, err); werr != nil {
			logger.Error(werr, "write the copy's verdict")
		}
		p.done(tv.Name)
	}()
}

// done forgets the receive of volume id: a reconcile may start another.
func (p *Puller) done(id string) {
	p.mu.Lock()
	delete(p.running, id)
	p.mu.Unlock()
}

// final errors end the copy: another attempt would fail the same way.
func final(err error) bool {
	return errors.Is(err, backend.ErrNoSpace) || errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrUnsupported)
}

// receive runs one attempt: the stream from the source into the pool,
// with progress in the status and as Events.
func (p *Puller) receive(ctx context.Context, tv *thinv1.ThinVolume, tc *transfer.Client, addr, token string) (*backend.Volume, error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	body, _, err := tc.Open(ctx, addr, token)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	pr := &progressReader{r: body}
	if p.Metrics != nil {
		p.Metrics.inFlight.Inc()
		defer p.Metrics.inFlight.Dec()
		pr.count = p.Metrics.received.Add
	}
	src := tv.Spec.Source
	logger.Info("copy started")
	p.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "TransferStarted", "CreateVolume",
		"copying snapshot %s from node %s (attempt %d)", src.SnapshotID, src.Node, tv.Status.Transfer.Attempts)
	report := make(chan struct{})
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		p.reportProgress(ctx, tv, pr, report)
	}()
	req := requestOf(tv)
	req.Source = backend.Source{}
	v, err := p.Streams.ReceiveVolume(ctx, req, pr)
	close(report)
	<-reported
	if err != nil {
		return nil, fmt.Errorf("copy from node %s: %w", src.Node, err)
	}
	done, total := pr.progress()
	logger.Info("copy received and verified", "streamBytes", done, "allocatedBytes", total, "sizeBytes", v.SizeBytes, "duration", time.Since(start))
	p.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Transferred", "CreateVolume",
		"copied snapshot %s from node %s: %d bytes streamed (%d allocated) in %s, verified", src.SnapshotID, src.Node, done, total, time.Since(start).Round(time.Millisecond))
	return v, nil
}

// reportProgress writes bytesDone/bytesTotal at most every
// ProgressInterval and an Event at most every EventInterval, until stop,
// and then once more (a copy faster than the interval reports its bytes
// too).
func (p *Puller) reportProgress(ctx context.Context, tv *thinv1.ThinVolume, pr *progressReader, stop <-chan struct{}) {
	progressReporter{
		interval:      p.ProgressInterval,
		eventInterval: p.EventInterval,
		bytes:         pr.progress,
		write: func(ctx context.Context, done, total int64) error {
			return patchTransfer(ctx, p.Client, tv.Name, map[string]any{"bytesDone": done, "bytesTotal": total})
		},
		event: func(done, total int64) {
			p.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Transferring", "CreateVolume",
				"received %d of %d bytes from node %s", done, total, tv.Spec.Source.Node)
		},
		final: true,
	}.run(ctx, stop)
}

// finish writes the copy's verdict: Ready with the received volume, or
// Failed with the error's code (the router deletes the volume then).
func (p *Puller) finish(ctx context.Context, id string, v *backend.Volume, cause error) error {
	now := metav1.Now()
	var written *thinv1.ThinVolume
	err := p.update(ctx, id, func(tv *thinv1.ThinVolume) bool {
		written = tv
		if tv.Status.Phase == thinv1.PhaseReady || tv.Status.Phase == thinv1.PhaseFailed {
			return false
		}
		st := tv.Status.Transfer
		if st == nil {
			st = &thinv1.TransferStatus{}
			tv.Status.Transfer = st
		}
		tv.Status.ObservedGeneration = tv.Generation
		tv.Status.OperationStatus = operation(cause)
		setReady(&tv.Status.Conditions, tv.Generation, cause, thinv1.ReasonCreated)
		if cause != nil {
			tv.Status.Phase = thinv1.PhaseFailed
			st.Message = cause.Error()
			return true
		}
		tv.Status.Phase = thinv1.PhaseReady
		tv.Status.SizeBytes = v.SizeBytes
		setHealthy(&tv.Status.Conditions, tv.Generation, v.Condition)
		st.Phase, st.CompletionTime, st.Message = thinv1.TransferReceived, &now, ""
		if st.BytesTotal > 0 && st.BytesDone < st.BytesTotal {
			st.BytesDone = st.BytesTotal
		}
		return true
	})
	if err != nil || written == nil {
		return err
	}
	if cause != nil {
		klog.FromContext(ctx).Error(cause, "copy failed", "volumeID", id)
		p.Recorder.Eventf(written, nil, corev1.EventTypeWarning, "CreateFailed", "CreateVolume", "%s", cause.Error())
	} else if p.Changed != nil {
		p.Changed()
	}
	return nil
}

// update applies change to the current ThinVolume id's status and writes
// it, again on a conflict; change returns false to write nothing.
func (p *Puller) update(ctx context.Context, id string, change func(*thinv1.ThinVolume) bool) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		tv := &thinv1.ThinVolume{}
		var reader client.Reader = p.Client
		if p.APIReader != nil {
			reader = p.APIReader
		}
		if err := reader.Get(ctx, client.ObjectKey{Name: id}, tv); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		if !tv.DeletionTimestamp.IsZero() || !change(tv) {
			return nil
		}
		return p.Client.Status().Update(ctx, tv)
	})
}

// progressReader counts what the receive read of the stream, and reads
// the snapshot's allocated bytes from the stream's header.
type progressReader struct {
	r      io.Reader
	done   atomic.Int64
	total  atomic.Int64
	head   []byte
	parsed bool
	count  func(float64)
}

// headerMax is more than any stream header (two IDs of 34 bytes and 30
// bytes of fixed fields).
const headerMax = 256

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.done.Add(int64(n))
		if p.count != nil {
			p.count(float64(n))
		}
		if !p.parsed {
			p.head = append(p.head, b[:min(n, headerMax-len(p.head))]...)
			if sr, herr := volstream.NewReader(bytes.NewReader(p.head)); herr == nil {
				p.total.Store(sr.Header().AllocatedBytes)
				p.parsed = true
			} else if len(p.head) >= headerMax {
				p.parsed = true // not a header we read: the pool refuses the stream
			}
		}
	}
	return n, err
}

func (p *progressReader) progress() (done, total int64) { return p.done.Load(), p.total.Load() }
