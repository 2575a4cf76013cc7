package eventlog

// # Following the event log
//
// A Follower feeds the event log, in stream order, into a projection that
// owns its cursor: the projection stores the last applied stream sequence
// in the same transaction as the state it describes, and the follower
// reads from cursor+1.
//
// The follower reads through an ordered consumer (an ephemeral, in-memory,
// ack-less consumer that the client library recreates at the next expected
// sequence whenever it misses a heartbeat, sees a gap in the delivery
// sequence, or the connection comes back). A durable consumer with explicit
// acks was rejected because it would keep a second cursor on the server
// that can disagree with the projection's: after a crash between the bbolt
// commit and the ack, the server redelivers what the projection already
// holds, and after a projection is restored from a backup or rebuilt, the
// server's cursor is ahead and events are silently skipped. With the
// projection as the only cursor there is nothing to reconcile: the ordered
// consumer starts at cursor+1, needs no acks, leaves no server-side state
// behind, and any number of standbys follow the same stream into their own
// projections.
//
// Invariants:
//   - Records reach Apply in strictly increasing, contiguous stream
//     sequence, starting at the projection's cursor + 1. Each stream
//     message reaches a successful Apply exactly once per Run; across runs
//     the projection's cursor decides, so a restart never applies twice.
//   - Every record that reaches Apply decoded into a valid event. At a
//     message whose payload does not decode (garbage, an invalid event, or
//     an envelope of a newer version: ErrUnsupportedVersion), Run applies
//     the records before it and stops with ErrUndecodable: the cursor never
//     moves past an event the projection did not understand, since the
//     projection would then be missing it without knowing.
//   - If the stream no longer holds cursor+1 (purged, limits, or a different
//     stream whose last sequence is below the cursor), Run stops with
//     ErrCursorGap instead of skipping.
//   - The cursor counts in one stream, named by StreamID (its name and
//     creation time). Run hands the identity to Bind before following, and
//     stops with ErrCursorGap and ErrStreamChanged if the projection counts
//     in another; it stops likewise once the stream it follows is replaced
//     by another of the same name (seen within CheckInterval, and by every
//     CatchUp, so no decision taken after a CatchUp rests on a replaced
//     stream).
//   - Group commit: the follower reads and decodes the log in batches of at
//     most ReadBatch records while the previous Apply commits, and hands
//     the next Apply every batch read meanwhile, merged, up to MaxBatch
//     records. Under load one commit (and one fsync) then covers what
//     arrived during the last one, so the commit rate follows the disk
//     instead of the batch size; when idle a batch is applied as soon as
//     it is read (after MaxWait). The merged batch is still contiguous
//     and the projection stores its cursor in the same transaction, so a
//     crash replays exactly what was not committed.
//   - When Apply fails, the follower re-reads the cursor (Apply may have
//     committed before failing), drops what is already applied and retries
//     the rest with exponential backoff, ApplyRetries times; then Run stops
//     with the error. Apply must therefore commit a batch atomically.
//
// Connections: the follower rides out server restarts and network outages
// as long as its nats.Conn keeps reconnecting. Create it with Connect, or
// with nats.MaxReconnects(-1); a connection that gives up and closes ends
// Run with an error.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
)

// ErrCursorGap is returned (wrapped) when the stream no longer holds the
// sequence after the projection's cursor, or holds fewer messages than the
// projection has applied. The projection cannot follow that stream any
// more: rebuild it.
var ErrCursorGap = errors.New("events: cursor gap")

// ErrUndecodable is returned (wrapped, with the decoding error) by Run at
// a stream message that does not decode into a valid event. The projection
// stays at the sequence before it. If a newer refgc wrote it (the chain
// then also holds ErrUnsupportedVersion, or names an unknown kind),
// upgrade; otherwise rebuild the projection, which passes over it.
var ErrUndecodable = errors.New("events: undecodable event in the log")

// ErrFollowerStopped is returned (wrapped) by WaitApplied and CatchUp once
// Run has returned.
var ErrFollowerStopped = errors.New("events: follower stopped")

// Follower defaults. DefaultMaxBatch is what one commit may cover under a
// backlog: of the sizes measured (1,000 to 32,000), it commits the most
// events per second of new images into a projection that holds earlier
// ones (docs/bench/limits.md). The queue holds up to about twice that many
// decoded records.
const (
	DefaultMaxBatch      = 16000
	DefaultReadBatch     = 1000
	DefaultMaxWait       = time.Millisecond
	DefaultCheckInterval = 2 * time.Second
	DefaultApplyRetries  = 8
)

// FollowerConfig configures a Follower.
type FollowerConfig struct {
	// Stream to follow; DefaultStreamName if empty.
	Stream string
	// Cursor returns the projection's last applied stream sequence (0 for
	// an empty projection). Required.
	Cursor func() (uint64, error)
	// Apply commits a batch, and the cursor to its last record's Seq,
	// durably and atomically. The follower moves on only after it returns
	// nil. Apply must not keep batch after it returns. Required.
	Apply func(batch []events.Record) error
	// Bind, if set, is called by Run with the stream's StreamID before
	// anything is applied: the projection records it, or refuses it with
	// an error wrapping ErrStreamChanged if its cursor counts in another
	// stream (Run then stops with ErrCursorGap too). Any other error
	// stops Run as it is. (*refcount.Projection).BindStream is one.
	Bind func(streamID string) error
	// MaxBatch bounds the records of one Apply; DefaultMaxBatch if zero.
	// Batches read while the previous Apply ran are merged up to it.
	MaxBatch int
	// ReadBatch bounds the records read into one batch before it is
	// handed on (merged with others if Apply is busy); DefaultReadBatch if
	// zero, never more than MaxBatch.
	ReadBatch int
	// MaxWait is how long a batch waits for more messages after its first
	// one; DefaultMaxWait if zero, no wait if negative. Messages that are
	// already buffered are always taken, so under load batches fill up to
	// ReadBatch whatever MaxWait is.
	MaxWait time.Duration
	// CheckInterval is how often the follower reads the stream's state to
	// refresh its lag and check the cursor; DefaultCheckInterval if zero.
	CheckInterval time.Duration
	// ApplyRetries is how many times a failed Apply is retried before Run
	// stops; DefaultApplyRetries if zero, none if negative.
	ApplyRetries int
	// ApplyBackoff is the first wait before retrying Apply, doubling up to
	// 5 s; 50 ms if zero.
	ApplyBackoff time.Duration
	// Logger; slog.Default() if nil.
	Logger *slog.Logger
	// Registerer receives the follower's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Follower applies the event log to a projection. See the comment at the
// top of this file for its guarantees.
type Follower struct {
	js  jetstream.JetStream
	cfg FollowerConfig
	log *slog.Logger

	started atomic.Bool

	mu         sync.Mutex
	applied    uint64
	streamLast uint64
	notify     chan struct{} // closed and replaced whenever applied changes or Run ends
	stopped    bool
	runErr     error
	stream     jetstream.Stream
	streamID   string                  // the identity of the stream Run follows; "" before Run
	stopRun    context.CancelCauseFunc // ends Run with a cause; nil outside Run

	lag       prometheus.Gauge
	appliedG  prometheus.Gauge
	records   prometheus.Counter
	undecoded prometheus.Counter
	applyErrs prometheus.Counter
	applyDur  prometheus.Observer
}

// NewFollower checks cfg, reads the projection's cursor and returns a
// Follower that Run starts.
func NewFollower(js jetstream.JetStream, cfg FollowerConfig) (*Follower, error) {
	if cfg.Cursor == nil || cfg.Apply == nil {
		return nil, errors.New("events: follower needs Cursor and Apply")
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStreamName
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.ReadBatch <= 0 {
		cfg.ReadBatch = DefaultReadBatch
	}
	cfg.ReadBatch = min(cfg.ReadBatch, cfg.MaxBatch)
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.ApplyRetries == 0 {
		cfg.ApplyRetries = DefaultApplyRetries
	}
	if cfg.ApplyBackoff <= 0 {
		cfg.ApplyBackoff = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cur, err := cfg.Cursor()
	if err != nil {
		return nil, fmt.Errorf("events: follower: read cursor: %w", err)
	}
	f := &Follower{
		js:      js,
		cfg:     cfg,
		log:     cfg.Logger.With("stream", cfg.Stream),
		applied: cur,
		notify:  make(chan struct{}),
	}
	if reg := cfg.Registerer; reg != nil {
		l := prometheus.Labels{"stream": cfg.Stream}
		f.lag = prom.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refgc_follower_lag_events",
			Help: "Events in the stream that the projection has not applied yet.",
		}, []string{"stream"})).With(l)
		f.appliedG = prom.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refgc_follower_applied_sequence",
			Help: "The last stream sequence the projection has applied.",
		}, []string{"stream"})).With(l)
		f.records = prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_follower_records_applied_total",
			Help: "Records applied to the projection.",
		}, []string{"stream"})).With(l)
		f.undecoded = prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_follower_undecodable_total",
			Help: "Stream messages that did not decode into a valid event (the follower stops at them).",
		}, []string{"stream"})).With(l)
		f.applyErrs = prom.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_follower_apply_errors_total",
			Help: "Failed Apply calls (each is retried or stops the follower).",
		}, []string{"stream"})).With(l)
		f.applyDur = prom.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "refgc_follower_apply_seconds",
			Help:    "Duration of successful Apply calls.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"stream"})).With(l)
		f.appliedG.Set(float64(cur))
	}
	return f, nil
}

// Applied returns the last stream sequence the projection has applied.
func (f *Follower) Applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Lag returns how many stream messages the projection has not applied yet,
// as of the last stream state the follower saw.
func (f *Follower) Lag() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lagLocked()
}

func (f *Follower) lagLocked() uint64 {
	if f.streamLast > f.applied {
		return f.streamLast - f.applied
	}
	return 0
}

// WaitApplied blocks until the projection has applied seq, ctx ends, or Run
// returns (ErrFollowerStopped).
func (f *Follower) WaitApplied(ctx context.Context, seq uint64) error {
	for {
		f.mu.Lock()
		applied, ch, stopped, runErr := f.applied, f.notify, f.stopped, f.runErr
		f.mu.Unlock()
		if applied >= seq {
			return nil
		}
		if stopped {
			return fmt.Errorf("%w at sequence %d, short of %d: %v", ErrFollowerStopped, applied, seq, runErr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("events: waiting for sequence %d (applied %d): %w", seq, applied, ctx.Err())
		}
	}
}

// CatchUp reads the stream's last sequence (one request to the server) and
// waits until the projection has applied it; it returns that sequence. A
// decision taken after CatchUp returns sees every event the stream held
// when CatchUp was called.
func (f *Follower) CatchUp(ctx context.Context) (uint64, error) {
	s, err := f.streamHandle(ctx)
	if err != nil {
		return 0, err
	}
	applied := f.Applied()
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("events: catch up: stream %s info: %w", f.cfg.Stream, err)
	}
	if err := f.checkIdentity(info, applied); err != nil {
		f.mu.Lock()
		stop := f.stopRun
		f.mu.Unlock()
		if stop != nil {
			stop(err)
		}
		return 0, err
	}
	last := info.State.LastSeq
	f.seeStreamLast(last, true)
	if last < applied {
		return 0, f.aheadError(applied, last)
	}
	if err := f.WaitApplied(ctx, last); err != nil {
		return 0, err
	}
	return last, nil
}

func (f *Follower) streamHandle(ctx context.Context) (jetstream.Stream, error) {
	f.mu.Lock()
	s := f.stream
	f.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := f.js.Stream(ctx, f.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("events: stream %s: %w", f.cfg.Stream, err)
	}
	f.mu.Lock()
	f.stream = s
	f.mu.Unlock()
	return s, nil
}

// seeStreamLast records the stream's last sequence; exact replaces the
// previous value (a stream info), otherwise only a larger one is kept (a
// message's own view).
func (f *Follower) seeStreamLast(last uint64, exact bool) {
	f.mu.Lock()
	if exact || last > f.streamLast {
		f.streamLast = last
	}
	lag := f.lagLocked()
	f.mu.Unlock()
	if f.lag != nil {
		f.lag.Set(float64(lag))
	}
}

func (f *Follower) gapError(cursor, first uint64) error {
	return fmt.Errorf("%w: the projection at sequence %d cannot follow stream %s whose first sequence is %d "+
		"(sequences %d to %d are gone, purged or aged out): rebuild the projection with `refgc rebuild`",
		ErrCursorGap, cursor, f.cfg.Stream, first, cursor+1, first-1)
}

func (f *Follower) aheadError(cursor, last uint64) error {
	return fmt.Errorf("%w: the projection at sequence %d cannot follow stream %s whose last sequence is %d "+
		"(the stream was recreated, or the projection belongs to another stream): rebuild the projection with `refgc rebuild`",
		ErrCursorGap, cursor, f.cfg.Stream, last)
}

// checkIdentity returns an error wrapping ErrCursorGap and ErrStreamChanged
// if info is not of the stream Run follows (nil before Run).
func (f *Follower) checkIdentity(info *jetstream.StreamInfo, cursor uint64) error {
	f.mu.Lock()
	want := f.streamID
	f.mu.Unlock()
	if got := StreamID(info); want != "" && got != want {
		return fmt.Errorf("%w: %w: the projection at sequence %d follows stream %s, which was replaced by %s "+
			"(deleted and created again): rebuild the projection with `refgc rebuild`", ErrCursorGap, events.ErrStreamChanged, cursor, want, got)
	}
	return nil
}

// bind hands the stream's identity to cfg.Bind and records it for the
// checks while Run follows the stream.
func (f *Follower) bind(info *jetstream.StreamInfo, cursor uint64) error {
	id := StreamID(info)
	if f.cfg.Bind != nil {
		if err := f.cfg.Bind(id); err != nil {
			if errors.Is(err, events.ErrStreamChanged) {
				return fmt.Errorf("%w: the projection at sequence %d cannot follow stream %s: %w: rebuild the projection with `refgc rebuild`",
					ErrCursorGap, cursor, id, err)
			}
			return fmt.Errorf("events: follower: bind to stream %s: %w", id, err)
		}
	}
	f.mu.Lock()
	f.streamID = id
	f.mu.Unlock()
	return nil
}

// checkStream compares the stream's state with the cursor: the stream must
// still hold cursor+1 (or end at the cursor) and must not end before it.
func (f *Follower) checkStream(st jetstream.StreamState, cursor uint64) error {
	if st.LastSeq < cursor {
		return f.aheadError(cursor, st.LastSeq)
	}
	if st.Msgs > 0 && st.FirstSeq > cursor+1 {
		return f.gapError(cursor, st.FirstSeq)
	}
	if st.Msgs == 0 && st.LastSeq > cursor {
		// Empty, yet sequences beyond the cursor were written: all purged.
		return f.gapError(cursor, st.LastSeq+1)
	}
	return nil
}

// Run follows the stream until ctx ends (it then returns nil) or a fatal
// error: ErrCursorGap, ErrUndecodable, Apply failing past its retries, the
// stream disappearing, or the connection closing for good. Run may be
// called once.
func (f *Follower) Run(ctx context.Context) (err error) {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("events: follower: Run called twice")
	}
	defer func() {
		if ctx.Err() != nil && !errors.Is(err, ErrCursorGap) && !errors.Is(err, ErrUndecodable) {
			err = nil
		}
		f.mu.Lock()
		f.stopped = true
		f.runErr = err
		close(f.notify)
		f.notify = make(chan struct{})
		f.mu.Unlock()
		if err != nil {
			f.log.Error("follower stopped", "applied", f.Applied(), "err", err)
		}
	}()

	cursor, err := f.cfg.Cursor()
	if err != nil {
		return fmt.Errorf("events: follower: read cursor: %w", err)
	}
	f.mu.Lock()
	f.applied = cursor
	f.mu.Unlock()

	s, err := f.openStream(ctx)
	if err != nil {
		return err
	}
	info := s.CachedInfo()
	if err := f.bind(info, cursor); err != nil {
		return err
	}
	if err := f.checkStream(info.State, cursor); err != nil {
		return err
	}
	f.seeStreamLast(info.State.LastSeq, true)

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.mu.Lock()
	f.stopRun = cancel
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.stopRun = nil
		f.mu.Unlock()
	}()

	cons, err := s.OrderedConsumer(runCtx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   cursor + 1,
	})
	if err != nil {
		return fmt.Errorf("events: follower: create consumer on %s: %w", f.cfg.Stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(max(2*f.cfg.ReadBatch, 500)))
	if err != nil {
		return fmt.Errorf("events: follower: consume %s: %w", f.cfg.Stream, err)
	}
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		it.Stop()
		wg.Wait()
	}()
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-runCtx.Done()
		it.Stop() // also ends the consumer's internal reconnect loop
	}()
	go func() {
		defer wg.Done()
		f.watch(runCtx, cancel)
	}()

	f.log.Info("follower started", "cursor", cursor, "stream_last", info.State.LastSeq)
	err = f.loop(runCtx, it)
	if cause := context.Cause(runCtx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	if err == nil && ctx.Err() == nil {
		err = errors.New("events: follower: message iterator ended")
	}
	return err
}

// openStream looks the stream up, waiting out a server that is not
// reachable yet; a stream that does not exist is fatal.
func (f *Follower) openStream(ctx context.Context) (jetstream.Stream, error) {
	wait := f.cfg.ApplyBackoff
	for {
		s, err := f.js.Stream(ctx, f.cfg.Stream)
		if err == nil {
			f.mu.Lock()
			f.stream = s
			f.mu.Unlock()
			return s, nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrConnectionClosed) {
			return nil, fmt.Errorf("events: follower: stream %s: %w", f.cfg.Stream, err)
		}
		f.log.Warn("follower: stream not reachable yet", "err", err, "retry_in", wait)
		if !sleepCtx(ctx, wait) {
			return nil, ctx.Err()
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// watch refreshes the stream's state every CheckInterval: the lag, and the
// check that the stream has not been replaced by a shorter one or purged
// under an idle follower.
func (f *Follower) watch(ctx context.Context, stop context.CancelCauseFunc) {
	t := time.NewTicker(f.cfg.CheckInterval)
	defer t.Stop()
	var suspect uint64 // applied when the last check suspected a purge; 0 if none
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s, err := f.streamHandle(ctx)
		if err != nil {
			continue
		}
		before := f.Applied()
		reqCtx, cancel := context.WithTimeout(ctx, f.cfg.CheckInterval)
		info, err := s.Info(reqCtx)
		cancel()
		if err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				stop(fmt.Errorf("%w: the projection at sequence %d cannot follow stream %s, which was deleted: "+
					"rebuild the projection with `refgc rebuild` once the stream exists again", ErrCursorGap, before, f.cfg.Stream))
				return
			}
			f.log.Debug("follower: stream info", "err", err)
			continue
		}
		if err := f.checkIdentity(info, before); err != nil {
			stop(err)
			return
		}
		st := info.State
		f.seeStreamLast(st.LastSeq, true)
		if st.LastSeq < before {
			stop(f.aheadError(before, st.LastSeq))
			return
		}
		// A purge past the cursor shows as soon as the next message
		// arrives; when none arrives, confirm on two checks in a row with
		// no progress before stopping.
		after := f.Applied()
		if after == before && f.checkStream(st, after) != nil {
			if suspect == after {
				stop(f.checkStream(st, after))
				return
			}
			suspect = after
		} else {
			suspect = 0
		}
	}
}

// chunk is a batch of records read ahead, or the error that ends reading.
type chunk struct {
	recs []events.Record
	err  error
}

// loop applies what read decodes: the next batches are read and decoded
// while the current one is being applied, and merged into one Apply (group
// commit) up to MaxBatch records.
func (f *Follower) loop(ctx context.Context, it jetstream.MessagesContext) error {
	readCtx, cancel := context.WithCancel(ctx)
	// Room for what one full Apply takes, so that reading runs ahead by as
	// much as the next commit can merge.
	ch := make(chan chunk, max(1, f.cfg.MaxBatch/f.cfg.ReadBatch))
	go func() {
		defer close(ch)
		f.read(readCtx, it, ch)
	}()
	defer func() {
		cancel()
		it.Stop()      // Next may be inside the consumer's reconnect loop, which only Stop ends
		for range ch { // let read finish
		}
	}()
	var carry *chunk // a chunk taken from ch that did not fit the last merge
	for {
		var c chunk
		if carry != nil {
			c, carry = *carry, nil
		} else {
			var ok bool
			if c, ok = <-ch; !ok {
				return nil
			}
		}
		recs := c.recs // read makes a new slice for every batch: growing it is safe
	merge:
		for c.err == nil && len(recs) < f.cfg.MaxBatch {
			select {
			case next, ok := <-ch:
				if !ok {
					break merge
				}
				if len(recs)+len(next.recs) > f.cfg.MaxBatch {
					carry = &next
					break merge
				}
				recs = append(recs, next.recs...)
				c.err = next.err
			default:
				break merge
			}
		}
		if len(recs) > 0 {
			if err := f.apply(ctx, recs); err != nil {
				return err
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if c.err != nil {
			return c.err
		}
	}
}

// read takes messages from it into batches of at most ReadBatch records,
// waiting up to MaxWait after a batch's first message for more, and sends
// them on ch; it returns when ctx ends or after sending an error.
func (f *Follower) read(ctx context.Context, it jetstream.MessagesContext, ch chan<- chunk) {
	next := f.Applied() + 1 // the sequence the next record must carry
	send := func(c chunk) bool {
		select {
		case ch <- c:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				send(chunk{err: fmt.Errorf("events: follower: %w", err)})
				return
			}
			f.log.Warn("follower: next message", "err", err)
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		var deadline time.Time
		if f.cfg.MaxWait > 0 {
			deadline = time.Now().Add(f.cfg.MaxWait)
		}
		batch := make([]events.Record, 0, min(f.cfg.ReadBatch, 64))
		var stop error // a gap, or a record that does not decode
		for {
			rec, ok, err := f.record(msg, next)
			if err != nil {
				stop = err
				break
			}
			if ok {
				batch = append(batch, rec)
				next++
			}
			if len(batch) >= f.cfg.ReadBatch {
				break
			}
			wait := 20 * time.Microsecond // take what is already buffered
			if rem := time.Until(deadline); rem > wait {
				wait = rem
			}
			msg, err = it.Next(jetstream.NextMaxWait(wait))
			if err != nil {
				break // a timeout, or an error the outer Next sees again
			}
		}
		if !send(chunk{recs: batch, err: stop}) || stop != nil {
			return
		}
	}
}

// record turns a message into a Record; ok is false for a message at or
// below the cursor (a redelivery), and err is a gap past it or, wrapping
// ErrUndecodable, a message that does not decode.
func (f *Follower) record(msg jetstream.Msg, next uint64) (events.Record, bool, error) {
	md, err := msg.Metadata()
	if err != nil {
		// Not a JetStream message: cannot place it, so cannot apply it.
		f.log.Warn("follower: message without metadata", "subject", msg.Subject(), "err", err)
		return events.Record{}, false, nil
	}
	seq := md.Sequence.Stream
	f.seeStreamLast(seq+md.NumPending, false)
	switch {
	case seq < next:
		return events.Record{}, false, nil
	case seq > next:
		return events.Record{}, false, f.gapError(next-1, seq)
	}
	rec := decodeRecord(seq, msg.Data())
	if rec.Err != nil {
		if f.undecoded != nil {
			f.undecoded.Inc()
		}
		return events.Record{}, false, f.undecodableError(seq, msg.Subject(), rec.Err)
	}
	return rec, true, nil
}

// decodeRecord is the one decoder of the log's records, for the follower
// and for a replay: the event at seq, decoded and validated (Valid), or a
// record with Err set.
func decodeRecord(seq uint64, data []byte) events.Record {
	ev, err := events.Decode(data)
	if err != nil {
		return events.Record{Seq: seq, Err: err}
	}
	return events.Record{Seq: seq, Event: ev, Valid: true}
}

func (f *Follower) undecodableError(seq uint64, subject string, err error) error {
	todo := "upgrade refgc if a newer version wrote it; otherwise rebuild the projection with `refgc rebuild`, which passes over it"
	if errors.Is(err, events.ErrUnsupportedVersion) {
		todo = "upgrade refgc to a version that reads it"
	}
	return fmt.Errorf("%w: stream %s sequence %d (subject %s): %w; the projection stays at sequence %d: %s",
		ErrUndecodable, f.cfg.Stream, seq, subject, err, seq-1, todo)
}

// apply commits batch through cfg.Apply, retrying as the file comment says.
func (f *Follower) apply(ctx context.Context, batch []events.Record) error {
	last := batch[len(batch)-1].Seq
	wait := f.cfg.ApplyBackoff
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := f.cfg.Apply(batch)
		if err == nil {
			if f.applyDur != nil {
				f.applyDur.Observe(time.Since(start).Seconds())
			}
			break
		}
		if f.applyErrs != nil {
			f.applyErrs.Inc()
		}
		first := batch[0].Seq
		if attempt >= f.cfg.ApplyRetries {
			return fmt.Errorf("events: follower: apply sequences %d to %d: %w", first, last, err)
		}
		f.log.Warn("follower: apply failed, retrying", "first", first, "last", last,
			"attempt", attempt+1, "retry_in", wait, "err", err)
		if !sleepCtx(ctx, wait) {
			return nil
		}
		wait = min(2*wait, 5*time.Second)
		cur, cerr := f.cfg.Cursor()
		if cerr != nil {
			continue
		}
		if cur < first-1 {
			return fmt.Errorf("events: follower: the projection's cursor went back from %d to %d", first-1, cur)
		}
		i := 0
		for i < len(batch) && batch[i].Seq <= cur {
			i++
		}
		batch = batch[i:]
		if len(batch) == 0 {
			break // the failed Apply had committed after all
		}
	}
	f.mu.Lock()
	f.applied = last
	lag := f.lagLocked()
	// Metrics first, then the waiters: whoever WaitApplied releases sees
	// them already counted.
	if f.records != nil {
		f.records.Add(float64(len(batch)))
		f.appliedG.Set(float64(last))
		f.lag.Set(float64(lag))
	}
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
