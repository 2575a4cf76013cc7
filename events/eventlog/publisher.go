package eventlog

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
)

// Headers of a dead letter. The raw body is the message payload.
const (
	HeaderDeadLetterReason    = "Refgc-Reason"
	HeaderDeadLetterDetail    = "Refgc-Detail"
	HeaderDeadLetterSource    = "Refgc-Source"
	HeaderDeadLetterID        = "Refgc-Id"
	HeaderDeadLetterTime      = "Refgc-Time"
	HeaderDeadLetterTruncated = "Refgc-Truncated"
)

// DefaultMaxInflight bounds the unacknowledged publishes of one PublishBatch.
const DefaultMaxInflight = 1024

// PublisherConfig configures a Publisher. The zero value gives the defaults.
type PublisherConfig struct {
	// Stream is the event log the publishes must land in (checked by the
	// server through the Nats-Expected-Stream header); DefaultStreamName if empty.
	Stream string
	// DeadLetterStream likewise for dead letters; DefaultDeadLetterStreamName if empty.
	DeadLetterStream string
	// MaxInflight bounds the unacknowledged publishes of one PublishBatch;
	// DefaultMaxInflight if zero. Keep it below the JetStream context's
	// async max pending (4000 unless set with jetstream.WithPublishAsyncMaxPending).
	MaxInflight int
	// Registerer receives the publisher's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// PubResult is the server's answer to one publish: the stream sequence the
// event is stored at, and whether it was already stored (same id within the
// duplicate window), in which case Seq is that of the first copy.
type PubResult struct {
	Seq       uint64
	Duplicate bool
}

// DeadLetter is a notification that could not become an event: it is kept,
// raw, in the dead-letter stream for an operator to inspect or replay.
type DeadLetter struct {
	// ID identifies the notification (the registry's event id, if any); it
	// deduplicates repeated dead letters within the duplicate window.
	ID string
	// Source names the sender, such as the registry's name; it becomes the
	// last subject token.
	Source string
	// Reason is a short machine-readable code such as "invalid" or
	// "undecodable"; it is a metric label, so keep it from a small set.
	Reason string
	// Detail is the human-readable explanation (the error text).
	Detail string
	// Body is the raw notification; cut at MaxDeadLetterBody.
	Body []byte
	// Time is when it was received; now if zero.
	Time time.Time
}

// Publisher publishes validated events to the event log, each on its
// Subject with its id as Nats-Msg-Id, so the server stores an event once
// however often it is sent within the duplicate window.
// A Publisher is safe for concurrent use.
type Publisher struct {
	js          jetstream.JetStream
	stream      string
	deadStream  string
	maxInflight int
	published   *prometheus.CounterVec
	duplicates  prometheus.Counter
	dead        *prometheus.CounterVec
}

// NewPublisher returns a Publisher over js. Streams are not created here:
// call EnsureStream first. It fails without a JetStream.
func NewPublisher(js jetstream.JetStream, cfg PublisherConfig) (*Publisher, error) {
	if js == nil {
		return nil, errors.New("eventlog: NewPublisher without a JetStream")
	}
	p := &Publisher{
		js:          js,
		stream:      cfg.Stream,
		deadStream:  cfg.DeadLetterStream,
		maxInflight: cfg.MaxInflight,
	}
	if p.stream == "" {
		p.stream = DefaultStreamName
	}
	if p.deadStream == "" {
		p.deadStream = DefaultDeadLetterStreamName
	}
	if p.maxInflight <= 0 {
		p.maxInflight = DefaultMaxInflight
	}
	if cfg.Registerer != nil {
		p.published = prom.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_events_published_total",
			Help: "Events stored in the event log (duplicates excluded), by kind.",
		}, []string{"kind"}))
		p.duplicates = prom.Register(cfg.Registerer, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refgc_events_duplicate_total",
			Help: "Events the event log already held (same id within the duplicate window).",
		}))
		p.dead = prom.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refgc_events_dead_lettered_total",
			Help: "Notifications stored in the dead-letter stream, by reason.",
		}, []string{"reason"}))
	}
	return p, nil
}

// message validates and encodes e into the message that carries it.
func (p *Publisher) message(e events.Event) (*nats.Msg, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("events: publish: %w", err)
	}
	b, err := events.Encode(e)
	if err != nil {
		return nil, err
	}
	if len(b) > events.MaxEncodedSize {
		// The log would take it, and every reader refuse it.
		return nil, fmt.Errorf("%w: event %s of %d bytes", events.ErrTooLarge, e.ID, len(b))
	}
	return &nats.Msg{Subject: Subject(e), Data: b, Header: nats.Header{}}, nil
}

func (p *Publisher) record(kind events.Kind, ack *jetstream.PubAck) PubResult {
	if ack.Duplicate {
		if p.duplicates != nil {
			p.duplicates.Inc()
		}
	} else if p.published != nil {
		p.published.WithLabelValues(string(kind)).Inc()
	}
	return PubResult{Seq: ack.Sequence, Duplicate: ack.Duplicate}
}

// Publish validates e, publishes it and waits for the server's ack. An
// invalid event gives an error wrapping ErrInvalid and nothing is sent.
// After an error other than that, the event may or may not be stored:
// publish it again (same id) to be sure.
func (p *Publisher) Publish(ctx context.Context, e events.Event) (PubResult, error) {
	m, err := p.message(e)
	if err != nil {
		return PubResult{}, err
	}
	ack, err := p.js.PublishMsg(ctx, m, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(p.stream))
	if err != nil {
		return PubResult{}, fmt.Errorf("events: publish %s: %w", e.ID, err)
	}
	return p.record(e.Kind, ack), nil
}

// PublishAsync validates e and sends it without waiting for the ack; the
// caller reads the ack from the returned future. The published and
// duplicate counters only count publishes whose ack this package sees
// (Publish and PublishBatch).
func (p *Publisher) PublishAsync(e events.Event) (jetstream.PubAckFuture, error) {
	m, err := p.message(e)
	if err != nil {
		return nil, err
	}
	f, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(p.stream))
	if err != nil {
		return nil, fmt.Errorf("events: publish %s: %w", e.ID, err)
	}
	return f, nil
}

// PublishBatch validates every event, then publishes them all
// asynchronously, at most MaxInflight unacknowledged at a time, and waits
// for every ack. If any event is invalid, nothing is published. The
// results are in the order of evs; on error, the results of events whose
// ack failed are zero and the error names the first failure. Republishing
// the whole batch after an error is safe: the server drops the copies.
func (p *Publisher) PublishBatch(ctx context.Context, evs []events.Event) ([]PubResult, error) {
	msgs := make([]*nats.Msg, len(evs))
	for i, e := range evs {
		m, err := p.message(e)
		if err != nil {
			return nil, fmt.Errorf("events: batch item %d: %w", i, err)
		}
		msgs[i] = m
	}
	res := make([]PubResult, len(evs))
	futures := make([]jetstream.PubAckFuture, len(evs))
	var firstErr error
	fail := func(i int, err error) {
		if firstErr == nil {
			firstErr = fmt.Errorf("events: publish %s: %w", evs[i].ID, err)
		}
	}
	wait := func(i int) {
		f := futures[i]
		if f == nil {
			return
		}
		select {
		case ack := <-f.Ok():
			res[i] = p.record(evs[i].Kind, ack)
		case err := <-f.Err():
			fail(i, err)
		case <-ctx.Done():
			fail(i, ctx.Err())
		}
	}
	stall := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		stall = max(time.Until(d), time.Millisecond)
	}
	next := 0 // the oldest publish not yet waited for
	for i, m := range msgs {
		if ctx.Err() != nil {
			fail(i, ctx.Err())
			break
		}
		if i-next >= p.maxInflight {
			wait(next)
			next++
		}
		f, err := p.js.PublishMsgAsync(m, jetstream.WithMsgID(evs[i].ID),
			jetstream.WithExpectStream(p.stream), jetstream.WithStallWait(stall))
		if err != nil {
			fail(i, err)
			break
		}
		futures[i] = f
	}
	for ; next < len(msgs) && ctx.Err() == nil; next++ {
		wait(next)
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("events: publish batch: %w", ctx.Err())
	}
	return res, firstErr
}

var reasonLabel = regexp.MustCompile(`^[a-z0-9_.-]{1,40}$`)

// DeadLetter stores a notification that could not become an event in the
// dead-letter stream, on DeadLetterPrefix + the source's token, with the
// reason, detail, source, id and time in headers and the raw body as payload.
func (p *Publisher) DeadLetter(ctx context.Context, d DeadLetter) error {
	if d.Time.IsZero() {
		d.Time = time.Now()
	}
	body := d.Body
	m := &nats.Msg{Subject: DeadLetterPrefix + sourceToken(d.Source), Header: nats.Header{}}
	if len(body) > events.MaxDeadLetterBody {
		m.Header.Set(HeaderDeadLetterTruncated, strconv.Itoa(len(body)))
		body = body[:events.MaxDeadLetterBody]
	}
	m.Data = body
	m.Header.Set(HeaderDeadLetterReason, headerValue(d.Reason))
	m.Header.Set(HeaderDeadLetterSource, headerValue(d.Source))
	m.Header.Set(HeaderDeadLetterTime, d.Time.UTC().Format(time.RFC3339Nano))
	if d.Detail != "" {
		m.Header.Set(HeaderDeadLetterDetail, headerValue(d.Detail))
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(p.deadStream)}
	if d.ID != "" {
		id := headerValue(d.ID)
		m.Header.Set(HeaderDeadLetterID, id)
		opts = append(opts, jetstream.WithMsgID("deadletter:"+id))
	}
	if _, err := p.js.PublishMsg(ctx, m, opts...); err != nil {
		return fmt.Errorf("events: dead letter %q from %q: %w", d.ID, d.Source, err)
	}
	if p.dead != nil {
		label := d.Reason
		if !reasonLabel.MatchString(label) {
			label = "other"
		}
		p.dead.WithLabelValues(label).Inc()
	}
	return nil
}

// headerValue keeps a header value on one line and of bounded size.
func headerValue(s string) string {
	if len(s) > 4096 {
		s = s[:4096]
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}
