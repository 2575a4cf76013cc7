package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

// startServer starts an embedded server on dir; port -1 picks a free one.
func startServer(t testing.TB, dir string, port int, token string) *eventlog.Embedded {
	t.Helper()
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: port, Token: token})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// connect connects with the package's reconnect settings and returns a
// JetStream context on the connection.
func connect(t testing.TB, url string, opts eventlog.ConnectOptions) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := eventlog.Connect(url, opts)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return nc, js
}

// setup starts a server on a fresh directory with the streams in place.
func setup(t testing.TB) (*eventlog.Embedded, jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	srv := startServer(t, t.TempDir(), -1, "")
	_, js := connect(t, srv.ClientURL(), eventlog.ConnectOptions{Name: t.Name()})
	s, err := eventlog.EnsureStream(ctxT(t, 10*time.Second), js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatalf("EnsureStream: %v", err)
	}
	return srv, js, s
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testEvent returns a distinct valid event for each i, spread over ten repositories.
func testEvent(i int) events.Event {
	return events.Event{
		ID:     fmt.Sprintf("ev-%07d", i),
		Time:   time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		Source: "test",
		Kind:   events.BlobPushed,
		Blob: &events.Blob{
			Repo:   fmt.Sprintf("library/app%d", i%10),
			Digest: digest.FromString(fmt.Sprint(i)),
			Size:   int64(i),
		},
	}
}

func testEvents(from, n int) []events.Event {
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = testEvent(from + i)
	}
	return evs
}

// recorder is the test projection: it keeps its cursor with what it applied,
// and records any violation of exactly-once, in-order application.
type recorder struct {
	mu       sync.Mutex
	cursor   uint64
	seen     map[string]uint64 // event id → sequence it was applied at
	lines    []string          // one per applied record, in order
	bad      []uint64          // sequences applied as errors
	problems []string
	failNext int               // fail this many Apply calls
	afterFn  func(last uint64) // called after each committed batch, outside the lock
}

func newRecorder() *recorder { return &recorder{seen: map[string]uint64{}} }

func (r *recorder) Cursor() (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cursor, nil
}

func (r *recorder) Apply(batch []events.Record) error {
	r.mu.Lock()
	if r.failNext > 0 {
		r.failNext--
		r.mu.Unlock()
		return errors.New("injected apply failure")
	}
	for _, rec := range batch {
		if rec.Seq != r.cursor+1 {
			r.problems = append(r.problems, fmt.Sprintf("sequence %d applied after %d", rec.Seq, r.cursor))
		}
		r.cursor = rec.Seq
		if rec.Err != nil {
			r.bad = append(r.bad, rec.Seq)
			r.lines = append(r.lines, fmt.Sprintf("%d error\n", rec.Seq))
			continue
		}
		if prev, ok := r.seen[rec.Event.ID]; ok {
			r.problems = append(r.problems, fmt.Sprintf("event %s applied at %d and again at %d", rec.Event.ID, prev, rec.Seq))
		}
		r.seen[rec.Event.ID] = rec.Seq
		r.lines = append(r.lines, fmt.Sprintf("%d %s %s %s\n", rec.Seq, rec.Event.ID, rec.Event.Kind, rec.Event.Repository()))
	}
	last := r.cursor
	fn := r.afterFn
	r.mu.Unlock()
	if fn != nil {
		fn(last)
	}
	return nil
}

// Dump writes the projection in a canonical form.
func (r *recorder) Dump(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.seen))
	for id := range r.seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	fmt.Fprintf(w, "cursor %d\n", r.cursor)
	for _, id := range ids {
		if _, err := fmt.Fprintf(w, "%s %d\n", id, r.seen[id]); err != nil {
			return err
		}
	}
	return nil
}

// check fails the test on any exactly-once violation and on a count other than want.
func (r *recorder) check(t testing.TB, want int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Error(p)
	}
	if len(r.seen) != want {
		t.Errorf("applied %d distinct events, want %d", len(r.seen), want)
	}
	for i := 0; i < want; i++ {
		if _, ok := r.seen[testEvent(i).ID]; !ok {
			t.Errorf("event %s never applied", testEvent(i).ID)
			break
		}
	}
}

func followerFor(t testing.TB, js jetstream.JetStream, r *recorder, mod func(*eventlog.FollowerConfig)) *eventlog.Follower {
	t.Helper()
	cfg := eventlog.FollowerConfig{CheckInterval: 200 * time.Millisecond}
	if r != nil {
		cfg.Cursor, cfg.Apply = r.Cursor, r.Apply
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := eventlog.NewFollower(js, cfg)
	if err != nil {
		t.Fatalf("NewFollower: %v", err)
	}
	return f
}

// runFollower runs f until the test ends or stop is called; stop waits for
// Run and returns its error.
func runFollower(t testing.TB, f *eventlog.Follower) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestTokenAuth(t *testing.T) {
	srv := startServer(t, t.TempDir(), -1, "s3cret")
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"right token", "s3cret", true},
		{"wrong token", "guess", false},
		{"no token", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := eventlog.Connect(srv.ClientURL(), eventlog.ConnectOptions{Token: tt.token})
			if tt.ok {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				js, err := jetstream.New(nc)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := eventlog.EnsureStream(ctxT(t, 10*time.Second), js, eventlog.StreamConfig{}); err != nil {
					t.Fatalf("EnsureStream over an authenticated connection: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("connected with a bad token")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Logf("refused with %v", err)
			}
		})
	}
}

func TestEmbeddedRestartKeepsStream(t *testing.T) {
	dir := t.TempDir()
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Port()
	_, js := connect(t, srv.ClientURL(), eventlog.ConnectOptions{})
	if _, err := eventlog.EnsureStream(ctxT(t, 10*time.Second), js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	if _, err := pub.PublishBatch(ctxT(t, 10*time.Second), testEvents(0, 10)); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv2 := startServer(t, dir, port, "")
	if srv2.Port() != port {
		t.Fatalf("restarted on port %d, want %d", srv2.Port(), port)
	}
	_, js2 := connect(t, srv2.ClientURL(), eventlog.ConnectOptions{})
	s, err := js2.Stream(ctxT(t, 10*time.Second), eventlog.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().State.Msgs; got != 10 {
		t.Fatalf("after restart the stream holds %d messages, want 10", got)
	}
}

func TestStartEmbeddedNeedsStoreDir(t *testing.T) {
	if _, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{Port: -1}); err == nil {
		t.Fatal("started without a store directory")
	}
}
