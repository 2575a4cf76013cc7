package eventlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events"
)

// Log is the event log as its writers use it: the collector, the
// reconciler, and a daemon's operator commands. JetStreamLog is the one a
// daemon uses; collector.DirectLog applies straight into a projection.
type Log interface {
	// Publish appends the events durably (deduplicated by event id).
	Publish(ctx context.Context, evs []events.Event) error
	// CatchUp waits until the projection has applied everything the log
	// held when it was called, and returns that sequence.
	CatchUp(ctx context.Context) (uint64, error)
}

// JetStreamLog is the Log of a daemon: events go to the JetStream stream
// through a publisher, and a follower applies them to the projection.
type JetStreamLog struct {
	Publisher *Publisher
	Follower  *Follower
}

// Publish publishes the events and waits for every acknowledgement.
func (l *JetStreamLog) Publish(ctx context.Context, evs []events.Event) error {
	_, err := l.Publisher.PublishBatch(ctx, evs)
	return err
}

// CatchUp waits for the follower to apply everything the stream holds now.
func (l *JetStreamLog) CatchUp(ctx context.Context) (uint64, error) { return l.Follower.CatchUp(ctx) }

// ErrLogTruncated is returned by a Replay when the event log no longer
// starts at sequence 1 (events were aged out or purged): a projection
// replayed from it would miss history, so the reconciler's Rebuild walks storage instead.
var ErrLogTruncated = errors.New("collector: event log does not start at sequence 1")

// Replay feeds the whole event log, in order from sequence 1, to apply, in
// batches. Before the first batch it calls bind with the identity of the
// log (StreamID), so that the projection it fills follows that
// stream and no other. It returns ErrLogTruncated (wrapped) if the log
// does not reach back to sequence 1.
type Replay func(ctx context.Context, bind func(streamID string) error, apply func([]events.Record) error) error

// StreamReplay returns a Replay over a JetStream stream: an ordered
// consumer from sequence 1 up to the stream's last sequence when the
// replay starts. Undecodable messages become records with Err set, which
// the rebuilt projection passes over (where the follower stops at them:
// rebuilding is the operator's way past a record no refgc can read).
func StreamReplay(s jetstream.Stream, batch int) Replay { return StreamReplayFrom(s, batch, 1) }

// StreamReplayFrom is StreamReplay from sequence from on (the one after a
// snapshot's): it returns ErrLogTruncated (wrapped) if the stream holds
// events from there on but no longer from itself.
func StreamReplayFrom(s jetstream.Stream, batch int, from uint64) Replay {
	if batch <= 0 {
		batch = DefaultMaxBatch
	}
	from = max(from, 1)
	return func(ctx context.Context, bind func(string) error, apply func([]events.Record) error) error {
		info, err := s.Info(ctx)
		if err != nil {
			return fmt.Errorf("collector: replay: stream info: %w", err)
		}
		st := info.State
		if st.LastSeq >= from && st.FirstSeq > from {
			return fmt.Errorf("%w: stream %s starts at %d, after %d", ErrLogTruncated, info.Config.Name, st.FirstSeq, from)
		}
		if err := bind(StreamID(info)); err != nil {
			return fmt.Errorf("collector: replay: %w", err)
		}
		if st.LastSeq < from {
			return nil
		}
		cc := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
		if from > 1 {
			cc = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from}
		}
		cons, err := s.OrderedConsumer(ctx, cc)
		if err != nil {
			return fmt.Errorf("collector: replay: consumer: %w", err)
		}
		it, err := cons.Messages()
		if err != nil {
			return fmt.Errorf("collector: replay: messages: %w", err)
		}
		defer it.Stop()
		recs := make([]events.Record, 0, batch)
		for {
			msg, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				return fmt.Errorf("collector: replay: next: %w", err)
			}
			md, err := msg.Metadata()
			if err != nil {
				return fmt.Errorf("collector: replay: metadata: %w", err)
			}
			seq := md.Sequence.Stream
			if seq > st.LastSeq {
				break
			}
			rec := decodeRecord(seq, msg.Data())
			if rec.Err != nil {
				rec.Err = fmt.Errorf("collector: replay: sequence %d: %w", seq, rec.Err)
			}
			recs = append(recs, rec)
			if len(recs) == batch || seq == st.LastSeq {
				if err := apply(recs); err != nil {
					return err
				}
				recs = recs[:0]
			}
			if seq == st.LastSeq {
				break
			}
		}
		if len(recs) > 0 {
			return apply(recs)
		}
		return nil
	}
}
