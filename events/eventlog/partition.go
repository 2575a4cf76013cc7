package eventlog

// Partitions (refcount's Partition, docs/PARTITIONING.md) share the one
// event log; what crosses between them is the repository partitions'
// blob.held statements, published into that log by a Relay, and a Barrier
// that a digest partition passes before it purges blob data.
//
// A Relay publishes its projection's outbox (statements the projection
// wrote in the transactions that changed what it holds) and removes what
// was acknowledged; it then records, under its partition's key in the
// bucket REFGC_PARTITIONS, the sequence through which every statement is
// published (the projection's cursor when the outbox is empty, else just
// below its oldest statement's version), with the partition layout and
// the identity of the stream that sequence counts in. A Barrier reads the stream's last
// sequence L and waits until every repository partition has recorded L or
// more: every statement made from the events the log held at that moment
// is then in the log, and a catch-up after the barrier applies them all.
//
// The rejected alternative, a forwarder deriving statements from the
// repository partitions' events itself, cannot know when a layer link or a
// revision dies (only the partition's projection knows what holds it), so
// removals would need the partition anyway; the outbox gives both in the
// projection's own transaction, replayable like everything else.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/prom"
)

// DefaultProgressBucket is the key-value bucket of the repository
// partitions' published sequences.
const DefaultProgressBucket = "REFGC_PARTITIONS"

// Relay and barrier defaults.
const (
	DefaultRelayInterval = 200 * time.Millisecond
	DefaultRelayBatch    = 256
)

// ErrBarrier is returned by Barrier.Wait when a repository partition did
// not publish its statements in time: a purge round must wait.
var ErrBarrier = errors.New("events: partition barrier")

// Outbox is what a Relay reads: refcount.Projection implements it.
type Outbox interface {
	Outbox(limit int) ([]events.Event, error)
	// Published drops published statements.
	Published(evs []events.Event) error
	// PublishedThrough is the sequence through which everything is
	// published.
	PublishedThrough() (uint64, error)
	// StreamID is the identity of the stream the projection follows
	// (StreamID), "" before it follows one: a sequence means nothing in
	// another stream.
	StreamID() (string, error)
}

// progressBucket opens (creating if needed) the bucket of published sequences.
func progressBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: DefaultProgressBucket,
		Replicas: max(replicas, 1), Description: "refgc repository partitions: sequence through which statements are published"})
	if err != nil {
		return nil, fmt.Errorf("events: progress bucket %s: %w", DefaultProgressBucket, err)
	}
	return kv, nil
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	Publisher *Publisher
	Outbox    Outbox
	// Partition is the repository partition's name ("r<i>"), its key in
	// the progress bucket.
	Partition string
	// Layout names how many partitions of each kind there are ("2/3"):
	// a Barrier of another layout does not count this relay's progress.
	Layout   string
	Replicas int
	// Active, if set, says whether this instance relays now (the
	// partition's elected collector, under HA): one writer of the
	// partition's progress, not two instances' alternating.
	Active func() bool
	// Interval between rounds (DefaultRelayInterval); Kick starts one sooner.
	Interval   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Relay publishes a repository partition's statements.
type Relay struct {
	cfg       RelayConfig
	kv        jetstream.KeyValue
	kick      chan struct{}
	published prometheus.Counter
	failures  prometheus.Counter
	said      string // the progress last recorded: Flush is for one goroutine at a time
}

// NewRelay opens the progress bucket.
func NewRelay(ctx context.Context, js jetstream.JetStream, cfg RelayConfig) (*Relay, error) {
	if cfg.Publisher == nil || cfg.Outbox == nil || cfg.Partition == "" {
		return nil, errors.New("events: relay needs a Publisher, an Outbox and a Partition")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRelayInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	kv, err := progressBucket(ctx, js, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	return &Relay{cfg: cfg, kv: kv, kick: make(chan struct{}, 1),
		published: prom.Register(cfg.Registerer, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_partition_statements_published_total",
			Help: "blob.held statements this repository partition published to the digest partitions."})),
		failures: prom.Register(cfg.Registerer, prometheus.NewCounter(prometheus.CounterOpts{Name: "refgc_partition_relay_failures_total",
			Help: "Relay rounds that failed (retried at the next round; purges wait meanwhile)."})),
	}, nil
}

// Kick asks for a round soon (after the projection applied a batch).
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if r.cfg.Active != nil && !r.cfg.Active() {
			// A standby: its leader relays the same statements (and writes
			// the progress, which this one writes afresh when it leads).
			r.said = ""
		} else if _, err := r.Flush(ctx); err != nil && ctx.Err() == nil {
			r.failures.Inc()
			r.cfg.Logger.Warn("partition relay", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kick:
		}
	}
}

// Flush publishes the whole outbox and records the sequence through which
// everything is published.
func (r *Relay) Flush(ctx context.Context) (uint64, error) {
	for {
		evs, err := r.cfg.Outbox.Outbox(DefaultRelayBatch)
		if err != nil {
			return 0, err
		}
		if len(evs) > 0 {
			if _, err := r.cfg.Publisher.PublishBatch(ctx, evs); err != nil {
				return 0, err
			}
			r.published.Add(float64(len(evs)))
		}
		if err := r.cfg.Outbox.Published(evs); err != nil {
			return 0, err
		}
		if len(evs) == DefaultRelayBatch {
			continue // more to publish
		}
		through, err := r.cfg.Outbox.PublishedThrough()
		if err != nil {
			return 0, err
		}
		stream, err := r.cfg.Outbox.StreamID()
		if err != nil || stream == "" {
			return through, err // it follows no stream yet: nothing to say
		}
		val := strconv.FormatUint(through, 10) + " " + r.cfg.Layout + " " + stream
		if val == r.said {
			return through, nil // an idle round writes nothing
		}
		if _, err := r.kv.Put(ctx, r.cfg.Partition, []byte(val)); err != nil {
			return 0, fmt.Errorf("events: relay progress: %w", err)
		}
		r.said = val
		return through, nil
	}
}

// BarrierConfig configures a Barrier.
type BarrierConfig struct {
	// Stream is the event log's stream (DefaultStreamName).
	Stream string
	// Repos is how many repository partitions there are: r0 … r<Repos-1>.
	Repos int
	// Layout is the relays' (RelayConfig.Layout): a relay that states
	// another one runs with other partition counts, and its progress is not
	// counted (its statements may miss what this partition owns).
	Layout   string
	Replicas int
	// Timeout bounds a Wait (default 30 s).
	Timeout time.Duration
	// Poll is how often Wait reads the progress bucket (default 50 ms).
	Poll time.Duration
}

// Barrier is what a digest partition waits on before purging.
type Barrier struct {
	cfg BarrierConfig
	js  jetstream.JetStream
	kv  jetstream.KeyValue
}

// NewBarrier opens the progress bucket.
func NewBarrier(ctx context.Context, js jetstream.JetStream, cfg BarrierConfig) (*Barrier, error) {
	if cfg.Repos < 1 {
		return nil, errors.New("events: barrier needs the number of repository partitions")
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStreamName
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	kv, err := progressBucket(ctx, js, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	return &Barrier{cfg: cfg, js: js, kv: kv}, nil
}

// Wait returns once every repository partition has published its
// statements through the stream's last sequence at the call, or
// ErrBarrier (wrapped, naming the partitions behind) after the timeout.
func (b *Barrier) Wait(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	if err != nil {
		return fmt.Errorf("%w: stream: %w", ErrBarrier, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("%w: stream: %w", ErrBarrier, err)
	}
	last, id := info.State.LastSeq, StreamID(info)
	t := time.NewTicker(b.cfg.Poll)
	defer t.Stop()
	for {
		var behind []string
		for i := range b.cfg.Repos {
			name := "r" + strconv.Itoa(i)
			e, err := b.kv.Get(ctx, name)
			var through uint64
			if err == nil {
				// "<through> <layout> <stream id>": progress in another
				// layout, or through another stream, is none.
				f := strings.SplitN(string(e.Value()), " ", 3)
				switch {
				case len(f) != 3:
				case f[1] != b.cfg.Layout:
					behind = append(behind, name+" (partitioned as "+f[1]+", not "+b.cfg.Layout+")")
					continue
				case f[2] != id:
					behind = append(behind, name+" (following another stream)")
					continue
				default:
					through, _ = strconv.ParseUint(f[0], 10, 64)
				}
			}
			if through < last {
				behind = append(behind, name)
			}
		}
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: repository partitions %v have not published their statements through sequence %d: %w",
				ErrBarrier, behind, last, ctx.Err())
		case <-t.C:
		}
	}
}
