package eventlog_test

import (
	"context"
	"flag"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

var benchNoSync = flag.Bool("refcount.nosync", false, "benchmarks: open the refcount projection without fsync")

// benchEvents returns n events of the graph mix, encoded once so that the
// raw baseline sends the very same bytes.
func benchEvents(n int) []events.Event {
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = graphEvent(i)
	}
	return evs
}

func benchSetup(b *testing.B) (jetstream.JetStream, jetstream.Stream) {
	b.Helper()
	srv := startServer(b, b.TempDir(), -1, "")
	_, js := connect(b, srv.ClientURL(), eventlog.ConnectOptions{})
	s, err := eventlog.EnsureStream(ctxT(b, 10*time.Second), js, eventlog.StreamConfig{})
	if err != nil {
		b.Fatal(err)
	}
	return js, s
}

func benchProjection(b *testing.B) *refcount.Projection {
	b.Helper()
	p, err := refcount.Open(filepath.Join(b.TempDir(), "refcount.db"), refcount.Options{NoSync: *benchNoSync})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	return p
}

// BenchmarkEventLog measures throughput from publish to applied. Each op
// is one event. "raw" is the baseline in the same run: the same payloads
// published asynchronously with their Nats-Msg-Id into the same file
// stream and read by a bare ordered consumer that does nothing with them.
// "refcount" publishes with Publisher.PublishBatch (1000 a batch) while a
// Follower applies them into a refcount projection (fsync on commit unless
// -refcount.nosync); the clock stops when the projection has applied the
// last event.
func BenchmarkEventLog(b *testing.B) {
	b.Run("raw", func(b *testing.B) {
		js, s := benchSetup(b)
		evs := benchEvents(b.N)
		msgs := make([]*nats.Msg, b.N)
		for i, e := range evs {
			data, err := events.Encode(e)
			if err != nil {
				b.Fatal(err)
			}
			msgs[i] = &nats.Msg{Subject: eventlog.Subject(e), Data: data, Header: nats.Header{}}
		}
		ctx := ctxT(b, 10*time.Minute)
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(2000))
		if err != nil {
			b.Fatal(err)
		}
		defer it.Stop()
		b.ResetTimer()
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			for n := 0; n < b.N; n++ {
				if _, err := it.Next(jetstream.NextContext(ctx)); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		for i, m := range msgs {
			if _, err := js.PublishMsgAsync(m, jetstream.WithMsgID(evs[i].ID), jetstream.WithStallWait(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})

	// refcount: group commit, as deployed; refcount-1000: one commit per
	// read batch of 1,000 (the follower before group commit), same run.
	for _, bc := range []struct {
		name     string
		maxBatch int
	}{{"refcount", *benchMaxBatch}, {"refcount-1000", 1000}} {
		b.Run(bc.name, func(b *testing.B) {
			p := benchProjection(b)
			w0 := p.PageWrites()
			benchFollowBatch(b, bc.maxBatch, p.Cursor, func(batch []events.Record) error {
				_, err := p.Apply(batch)
				return err
			})
			b.ReportMetric(float64(p.PageWrites()-w0)/float64(b.N), "pages/event")
		})
	}

	b.Run("recorder", func(b *testing.B) {
		r := newRecorder()
		benchFollow(b, r.Cursor, r.Apply)
	})
}

var benchMaxBatch = flag.Int("follower.maxbatch", 0, "benchmarks: the follower's MaxBatch (0: the default)")

// benchFollow publishes b.N events in batches of 1000 while a follower
// applies them with apply, and reports the rate from the first publish to
// the last apply, and the mean records per Apply call.
func benchFollow(b *testing.B, cursor func() (uint64, error), apply func([]events.Record) error) {
	benchFollowBatch(b, *benchMaxBatch, cursor, apply)
}

// benchFollowBatch is benchFollow with the follower's MaxBatch.
func benchFollowBatch(b *testing.B, maxBatch int, cursor func() (uint64, error), apply func([]events.Record) error) {
	js, _ := benchSetup(b)
	evs := benchEvents(b.N)
	var calls int
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{
		Cursor:   cursor,
		MaxBatch: maxBatch,
		Apply: func(batch []events.Record) error {
			calls++
			return apply(batch)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	stop := runFollower(b, f)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(evs); i += 1000 {
		if _, err := pub.PublishBatch(ctx, evs[i:min(i+1000, len(evs))]); err != nil {
			b.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Minute)
	defer wcancel()
	if err := f.WaitApplied(wctx, uint64(b.N)); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.StopTimer()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/float64(calls), "events/apply")
}

var benchMaxWait = flag.Duration("follower.maxwait", 0, "benchmarks: the follower's MaxWait (0: the default, negative: none)")

// BenchmarkLatency publishes one event a millisecond (1,000 events/s,
// paced by schedule) with PublishAsync and reports the time from the
// publish call to the return of the Apply that committed the event: p50,
// p99 and max in ms. "refcount" applies into a refcount projection (fsync
// on commit unless -refcount.nosync), "recorder" into the in-memory test
// projection, which isolates the event log's own share. Run it with
// -benchtime=Nx to fix the number of events.
func BenchmarkLatency(b *testing.B) {
	b.Run("refcount", func(b *testing.B) {
		p := benchProjection(b)
		benchLatency(b, p.Cursor, func(batch []events.Record) error {
			_, err := p.Apply(batch)
			return err
		})
	})
	b.Run("recorder", func(b *testing.B) {
		r := newRecorder()
		benchLatency(b, r.Cursor, r.Apply)
	})
}

func benchLatency(b *testing.B, cursor func() (uint64, error), apply func([]events.Record) error) {
	js, _ := benchSetup(b)
	evs := benchEvents(b.N)
	sent := make([]time.Time, b.N+1) // by stream sequence
	lat := make([]time.Duration, 0, b.N)
	var mu sync.Mutex
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{
		Cursor:  cursor,
		MaxWait: *benchMaxWait,
		Apply: func(batch []events.Record) error {
			if err := apply(batch); err != nil {
				return err
			}
			now := time.Now()
			mu.Lock()
			for _, r := range batch {
				lat = append(lat, now.Sub(sent[r.Seq]))
			}
			mu.Unlock()
			return nil
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	stop := runFollower(b, f)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	b.ResetTimer()
	start := time.Now()
	for i, e := range evs {
		// Pace by schedule, not by ticker, so that a slow iteration is
		// caught up rather than dropped: the mean rate stays 1,000/s.
		if d := time.Until(start.Add(time.Duration(i) * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
		mu.Lock()
		sent[i+1] = time.Now() // the only writer: event i lands at sequence i+1
		mu.Unlock()
		if _, err := pub.PublishAsync(e); err != nil {
			b.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := f.WaitApplied(wctx, uint64(b.N)); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max-ms")
}

// BenchmarkCatchUp measures CatchUp on a follower that is already caught
// up: the cost the collector pays before every delete decision (one
// stream info request and no wait).
func BenchmarkCatchUp(b *testing.B) {
	js, _ := benchSetup(b)
	publishAll(b, regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})), testEvents(0, 100))
	r := newRecorder()
	f := followerFor(b, js, r, nil)
	runFollower(b, f)
	ctx := ctxT(b, time.Minute)
	if _, err := f.CatchUp(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.CatchUp(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
