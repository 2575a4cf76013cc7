package eventlog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

func publishAll(t testing.TB, pub *eventlog.Publisher, evs []events.Event) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for len(evs) > 0 {
		n := min(1000, len(evs))
		if _, err := pub.PublishBatch(ctx, evs[:n]); err != nil {
			t.Fatalf("PublishBatch: %v", err)
		}
		evs = evs[n:]
	}
}

// TestFollowerExactlyOnceAcrossRestart publishes 10,000 events, follows
// them into one projection that is stopped halfway and restarted from its
// cursor, and into another that runs uninterrupted: both apply every event
// exactly once, in order, and end byte for byte equal.
func TestFollowerExactlyOnceAcrossRestart(t *testing.T) {
	const n = 10000
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	publishAll(t, pub, testEvents(0, n))

	// Interrupted: the projection stops itself once past the middle.
	interrupted := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	interrupted.afterFn = func(last uint64) {
		if last >= n/2 {
			cancel()
		}
	}
	f1 := followerFor(t, js, interrupted, func(c *eventlog.FollowerConfig) { c.MaxBatch = 128 })
	if err := f1.Run(ctx); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	mid, _ := interrupted.Cursor()
	if mid < n/2 || mid >= n {
		t.Fatalf("first run stopped at %d, want in [%d, %d)", mid, n/2, n)
	}
	if f1.Applied() != mid {
		t.Fatalf("Applied() = %d, cursor %d", f1.Applied(), mid)
	}
	interrupted.afterFn = nil

	f2 := followerFor(t, js, interrupted, nil)
	stop2 := runFollower(t, f2)
	seq, err := f2.CatchUp(ctxT(t, 60*time.Second))
	if err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if seq != n {
		t.Fatalf("CatchUp returned %d, want %d", seq, n)
	}
	if err := stop2(); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	interrupted.check(t, n)

	whole := newRecorder()
	f3 := followerFor(t, js, whole, nil)
	stop3 := runFollower(t, f3)
	if _, err := f3.CatchUp(ctxT(t, 60*time.Second)); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if err := stop3(); err != nil {
		t.Fatal(err)
	}
	whole.check(t, n)

	var a, b bytes.Buffer
	if err := interrupted.Dump(&a); err != nil {
		t.Fatal(err)
	}
	if err := whole.Dump(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("the interrupted projection differs from the uninterrupted one")
	}
}

// TestFollowerRidesOutServerRestart restarts nats-server on the same store
// and port while events are published and followed.
func TestFollowerRidesOutServerRestart(t *testing.T) {
	const n = 3000
	dir := t.TempDir()
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Port()
	var srvMu sync.Mutex
	t.Cleanup(func() {
		srvMu.Lock()
		defer srvMu.Unlock()
		srv.Shutdown()
	})
	_, js := connect(t, srv.ClientURL(), eventlog.ConnectOptions{Name: "restart-test"})
	if _, err := eventlog.EnsureStream(ctxT(t, 10*time.Second), js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	rec := newRecorder()
	f := followerFor(t, js, rec, nil)
	stop := runFollower(t, f)

	// Publish one at a time, retrying each until the server acknowledges it:
	// the id makes a retry of an event that was in fact stored a duplicate.
	// At the half, the publisher hands over and goes on publishing once
	// the server is down, so that publishes meet the outage.
	published := make(chan int, n)
	pubErr := make(chan error, 1)
	half, down := make(chan struct{}), make(chan struct{})
	go func() {
		deadline := time.Now().Add(90 * time.Second)
		for i := 0; i < n; i++ {
			if i == n/2 {
				close(half)
				<-down
			}
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := pub.Publish(ctx, testEvent(i))
				cancel()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					pubErr <- err
					return
				}
			}
			published <- i
		}
		pubErr <- nil
	}()

	// Restart the server once a third is applied and half is published.
	if err := f.WaitApplied(ctxT(t, 60*time.Second), n/3); err != nil {
		t.Fatalf("WaitApplied before restart: %v", err)
	}
	<-half
	srvMu.Lock()
	srv.Shutdown()
	close(down)
	srv, err = eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: port})
	srvMu.Unlock()
	if err != nil {
		t.Fatalf("restart on port %d: %v", port, err)
	}
	if err := <-pubErr; err != nil {
		t.Fatalf("publishing across the restart: %v", err)
	}
	if len(published) != n {
		t.Fatalf("published %d events, want %d", len(published), n)
	}
	last, err := f.CatchUp(ctxT(t, 60*time.Second))
	if err != nil {
		t.Fatalf("CatchUp after restart: %v", err)
	}
	if last != n {
		t.Errorf("stream ends at %d, want %d (every event stored once)", last, n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	rec.check(t, n)
	if f.Lag() != 0 {
		t.Errorf("Lag() = %d after catching up", f.Lag())
	}
}

func TestFollowerCursorGap(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(t *testing.T, js jetstream.JetStream, s jetstream.Stream)
		want   string
	}{
		{"purged past the cursor", func(t *testing.T, _ jetstream.JetStream, s jetstream.Stream) {
			if err := s.Purge(ctxT(t, 10*time.Second), jetstream.WithPurgeSequence(80)); err != nil {
				t.Fatal(err)
			}
		}, "whose first sequence is 80"},
		{"purged entirely", func(t *testing.T, _ jetstream.JetStream, s jetstream.Stream) {
			if err := s.Purge(ctxT(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
		}, "whose first sequence is 101"},
		{"stream recreated", func(t *testing.T, js jetstream.JetStream, _ jetstream.Stream) {
			ctx := ctxT(t, 10*time.Second)
			if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
				t.Fatal(err)
			}
			if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
				t.Fatal(err)
			}
			publishAll(t, regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})), testEvents(1000, 10))
		}, "whose last sequence is 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, js, s := setup(t)
			pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
			publishAll(t, pub, testEvents(0, 50))
			rec := newRecorder()
			f := followerFor(t, js, rec, nil)
			stop := runFollower(t, f)
			if _, err := f.CatchUp(ctxT(t, 30*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			publishAll(t, pub, testEvents(50, 50))
			tt.break_(t, js, s)

			f2 := followerFor(t, js, rec, nil)
			err := f2.Run(ctxT(t, 30*time.Second))
			if !errors.Is(err, eventlog.ErrCursorGap) {
				t.Fatalf("Run = %v, want ErrCursorGap", err)
			}
			for _, part := range []string{"the projection at sequence 50", tt.want, "refgc rebuild"} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not say %q", err, part)
				}
			}
			if _, err := f2.CatchUp(ctxT(t, 5*time.Second)); err == nil {
				t.Error("CatchUp succeeded on a stopped follower")
			}
			if c, _ := rec.Cursor(); c != 50 {
				t.Errorf("cursor moved to %d", c)
			}
		})
	}
}

// TestFollowerStreamReplacedWhileRunning deletes and recreates the stream
// under a running follower: the new stream ends below the cursor, and the
// follower stops with ErrCursorGap instead of waiting for ever.
func TestFollowerStreamReplacedWhileRunning(t *testing.T) {
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	publishAll(t, pub, testEvents(0, 50))
	rec := newRecorder()
	f := followerFor(t, js, rec, nil)
	ctx := ctxT(t, 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	if err := f.WaitApplied(ctx, 50); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	publishAll(t, pub, testEvents(100, 10))
	if err := <-done; !errors.Is(err, eventlog.ErrCursorGap) {
		t.Fatalf("Run = %v, want ErrCursorGap", err)
	}
	rec.check(t, 50)
}

// TestFollowerUndecodable publishes a message that does not decode into a
// valid event among good ones: the follower applies the records before it
// and stops with ErrUndecodable, the cursor short of it, every time it runs.
func TestFollowerUndecodable(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		before  int   // good events published before it
		also    error // also in the error's chain
		todo    string
	}{
		{name: "not json", payload: "{not json", before: 2, todo: "refgc rebuild"},
		{name: "newer envelope version", payload: `{"v":99,"id":"future","kind":"blob.pushed"}`, before: 2,
			also: events.ErrUnsupportedVersion, todo: "upgrade refgc"},
		{name: "invalid event", payload: `{"v":1,"id":"bad","time":"2025-01-01T00:00:00Z","kind":"blob.pushed","blob":{"repo":"../x","digest":"sha256:00","size":1}}`,
			before: 3, also: events.ErrInvalid, todo: "refgc rebuild"},
		{name: "unknown kind", payload: `{"v":1,"id":"k","time":"2025-01-01T00:00:00Z","kind":"future.kind"}`, before: 1,
			also: events.ErrInvalid, todo: "upgrade refgc"},
		{name: "first in the stream", payload: "garbage", before: 0, todo: "refgc rebuild"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, js, _ := setup(t)
			pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
			ctx := ctxT(t, 30*time.Second)
			if tt.before > 0 {
				publishAll(t, pub, testEvents(0, tt.before))
			}
			if _, err := js.Publish(ctx, "refgc.events.blob_pushed.x", []byte(tt.payload)); err != nil {
				t.Fatal(err)
			}
			publishAll(t, pub, testEvents(tt.before, 2))
			bad := uint64(tt.before) + 1
			rec := newRecorder()
			reg := prometheus.NewRegistry()
			for run := range 2 { // a restart stops at the same record
				f := followerFor(t, js, rec, func(c *eventlog.FollowerConfig) { c.Registerer = reg })
				err := f.Run(ctx)
				if !errors.Is(err, eventlog.ErrUndecodable) || (tt.also != nil && !errors.Is(err, tt.also)) {
					t.Fatalf("run %d: Run = %v, want ErrUndecodable (and %v)", run, err, tt.also)
				}
				for _, part := range []string{fmt.Sprintf("sequence %d", bad), fmt.Sprintf("stays at sequence %d", bad-1), tt.todo} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q does not say %q", err, part)
					}
				}
				if c, _ := rec.Cursor(); c != bad-1 || f.Applied() != bad-1 {
					t.Fatalf("run %d: cursor %d, Applied %d; want %d", run, c, f.Applied(), bad-1)
				}
				if err := f.WaitApplied(ctx, bad); !errors.Is(err, eventlog.ErrFollowerStopped) {
					t.Errorf("WaitApplied past the record = %v, want ErrFollowerStopped", err)
				}
			}
			rec.check(t, tt.before)
			rec.mu.Lock()
			nbad := len(rec.bad)
			rec.mu.Unlock()
			if nbad != 0 {
				t.Errorf("%d records with errors reached Apply", nbad)
			}
			if got := testutil.ToFloat64(counterOf(t, reg, "refgc_follower_undecodable_total")); got != 2 {
				t.Errorf("undecodable counter = %v, want 2 (once a run)", got)
			}
		})
	}
}

func counterOf(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return gathererCollector{reg, name}
}

// gathererCollector exposes one metric family of a registry to testutil.
type gathererCollector struct {
	reg  *prometheus.Registry
	name string
}

func (g gathererCollector) Describe(chan<- *prometheus.Desc) {}
func (g gathererCollector) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := g.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v := 0.0
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			}
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
		}
	}
}

// TestFollowerApplyRetry fails Apply twice: the batch is retried, applied
// once, and the follower carries on.
func TestFollowerApplyRetry(t *testing.T) {
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	publishAll(t, pub, testEvents(0, 100))
	rec := newRecorder()
	rec.failNext = 2
	f := followerFor(t, js, rec, func(c *eventlog.FollowerConfig) { c.ApplyBackoff = time.Millisecond })
	runFollower(t, f)
	if _, err := f.CatchUp(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	rec.check(t, 100)
}

// TestFollowerApplyGivesUp: an Apply that keeps failing stops Run with its error.
func TestFollowerApplyGivesUp(t *testing.T) {
	_, js, _ := setup(t)
	publishAll(t, regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})), testEvents(0, 5))
	rec := newRecorder()
	rec.failNext = 1 << 30
	f := followerFor(t, js, rec, func(c *eventlog.FollowerConfig) {
		c.ApplyBackoff = time.Millisecond
		c.ApplyRetries = 2
	})
	err := f.Run(ctxT(t, 30*time.Second))
	if err == nil || !strings.Contains(err.Error(), "injected apply failure") {
		t.Fatalf("Run = %v, want the Apply error", err)
	}
	if err := f.WaitApplied(ctxT(t, 5*time.Second), 1); !errors.Is(err, eventlog.ErrFollowerStopped) {
		t.Fatalf("WaitApplied after stop = %v, want ErrFollowerStopped", err)
	}
}

// TestFollowerWaitApplied checks WaitApplied, CatchUp on an empty stream,
// Lag and the lag gauge.
func TestFollowerWaitApplied(t *testing.T) {
	_, js, _ := setup(t)
	rec := newRecorder()
	reg := prometheus.NewRegistry()
	f := followerFor(t, js, rec, func(c *eventlog.FollowerConfig) { c.Registerer = reg })
	ctx := ctxT(t, 30*time.Second)
	// Before Run, on an empty stream, there is nothing to wait for.
	if seq, err := f.CatchUp(ctx); err != nil || seq != 0 {
		t.Fatalf("CatchUp on an empty stream = %d, %v", seq, err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := f.WaitApplied(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied before anything was published = %v", err)
	}
	runFollower(t, f)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	publishAll(t, pub, testEvents(0, 20))
	if err := f.WaitApplied(ctx, 20); err != nil {
		t.Fatal(err)
	}
	if f.Applied() < 20 || f.Lag() != 0 {
		t.Fatalf("Applied %d, Lag %d", f.Applied(), f.Lag())
	}
	if got := testutil.ToFloat64(counterOf(t, reg, "refgc_follower_lag_events")); got != 0 {
		t.Errorf("lag gauge = %v", got)
	}
	if got := testutil.ToFloat64(counterOf(t, reg, "refgc_follower_records_applied_total")); got != 20 {
		t.Errorf("applied counter = %v", got)
	}
}

func TestNewFollowerNeedsCallbacks(t *testing.T) {
	if _, err := eventlog.NewFollower(nil, eventlog.FollowerConfig{}); err == nil {
		t.Fatal("NewFollower accepted a config without Cursor and Apply")
	}
}
