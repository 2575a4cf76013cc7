package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

// When the stream no longer holds the event after the projection's cursor
// (purged while refgc was down), the daemon keeps serving but halts
// collection: a pass on a projection that missed events could delete
// live images.
func TestCursorGapHaltsCollection(t *testing.T) {
	ctx := context.Background()
	cfg := haltConfig(t)
	publish := func(js jetstream.JetStream, evs ...events.Event) { publishEvents(t, js, evs...) }

	// 1. A daemon applies three events, then stops.
	applied := applyThenStop(t, cfg, nil)

	// 2. While it is down, more events arrive and the stream is purged past them.
	js, nc, emb := offlineStream(t, cfg)
	publish(js, gapBlob(3), gapBlob(4), gapBlob(5))
	st, err := js.Stream(ctx, eventlog.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(applied+2)); err != nil { // applied+1 goes
		t.Fatal(err)
	}
	nc.Close()
	emb.Shutdown()

	// 3. The daemon starts again: it serves, but never collects.
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	waitHalted(t, d, eventlog.ErrCursorGap, "no longer reaches the projection's cursor")
}

// A stream deleted and created again while refgc was down restarts its
// sequences at 1; with more events than the projection's cursor, nothing
// but its identity tells it from the stream the projection followed.
// Collection halts instead of following it.
func TestRecreatedStreamHaltsCollection(t *testing.T) {
	ctx := context.Background()
	cfg := haltConfig(t)

	// 1. A daemon applies three events, then stops.
	var bound string
	applied := applyThenStop(t, cfg, func(d *daemon.Daemon) {
		var err error
		if bound, err = d.Projection().StreamID(); err != nil || bound == "" {
			t.Fatalf("projection bound to %q (%v)", bound, err)
		}
	})

	// 2. While it is down, the stream is deleted and created again, and
	// receives more events than the projection had applied.
	js, nc, emb := offlineStream(t, cfg)
	if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	publishEvents(t, js, gapBlob(3), gapBlob(4), gapBlob(5), gapBlob(6), gapBlob(7), gapBlob(8))
	nc.Close()
	emb.Shutdown()

	// 3. The daemon starts again: it serves, but never collects.
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	waitHalted(t, d, events.ErrStreamChanged, "deleted and created again")
	if c, err := d.Projection().Cursor(); err != nil || c != applied {
		t.Errorf("cursor %d (%v), want %d", c, err, applied)
	}
	if id, _ := d.Projection().StreamID(); id != bound {
		t.Errorf("projection rebound from %q to %q", bound, id)
	}
}

// An event in the log that this refgc cannot read (garbage, or written by
// a newer refgc) stops the follower short of it, and collection halts.
func TestUndecodableHaltsCollection(t *testing.T) {
	ctx := context.Background()
	d, err := daemon.Start(ctx, haltConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	nc, err := eventlog.Connect(d.NATSURL(), eventlog.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	publishEvents(t, js, gapBlob(0), gapBlob(1))
	ack, err := js.Publish(ctx, eventlog.SubjectPrefix+"blob_pushed.app", []byte(`{"v":2,"id":"from-the-future"}`))
	if err != nil {
		t.Fatal(err)
	}
	publishEvents(t, js, gapBlob(2))
	waitHalted(t, d, eventlog.ErrUndecodable, "cannot read")
	if !errors.Is(d.Err(), events.ErrUnsupportedVersion) {
		t.Errorf("Err() = %v, want ErrUnsupportedVersion in the chain", d.Err())
	}
	if c, err := d.Projection().Cursor(); err != nil || c != ack.Sequence-1 {
		t.Errorf("cursor %d (%v), want %d: stopped short of the event it cannot read", c, err, ack.Sequence-1)
	}
}

func haltConfig(t *testing.T) daemon.Config {
	cfg := daemon.Defaults()
	cfg.DataDir, cfg.Addr, cfg.NATS.Listen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:-1"
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": t.TempDir()}}
	cfg.Collector.Interval = 0
	cfg.NoSync = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

func gapBlob(i int) events.Event {
	return events.Event{V: events.Version, ID: "gap-" + string(rune('a'+i)), Time: time.Now(), Kind: events.BlobPushed,
		Blob: &events.Blob{Repo: "app", Digest: digest.FromString(string(rune('a' + i))), Size: 1}}
}

func publishEvents(t *testing.T, js jetstream.JetStream, evs ...events.Event) {
	t.Helper()
	if _, err := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})).PublishBatch(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

// waitHalted waits until the daemon refuses collection, then checks that
// the follower's error wraps want, that /readyz says why (with reason in
// its body) while /healthz is fine, and that POST /v1/collect gets 409.
// applyThenStop starts a daemon on cfg, publishes three events, waits until
// they and the start-up reconcile's events are applied, runs check, stops
// the daemon and returns the projection's cursor.
func applyThenStop(t *testing.T, cfg daemon.Config, check func(*daemon.Daemon)) uint64 {
	t.Helper()
	ctx := context.Background()
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := eventlog.Connect(d.NATSURL(), eventlog.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	publishEvents(t, js, gapBlob(0), gapBlob(1), gapBlob(2))
	waitStartReconcile(t, d) // its corrections and Reconciled event follow the three
	applied, err := d.Follower().CatchUp(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if check != nil {
		check(d)
	}
	nc.Close()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return applied
}

// offlineStream opens the stopped daemon's event log with a server of its
// own, as an operator would; the caller closes nc and shuts emb down.
func offlineStream(t *testing.T, cfg daemon.Config) (jetstream.JetStream, *nats.Conn, *eventlog.Embedded) {
	t.Helper()
	emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "nats"), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := eventlog.Connect(emb.ClientURL(), eventlog.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	return js, nc, emb
}

// waitStartReconcile waits until the start-up reconcile of an empty
// projection has published its events: a pass waits for it.
func waitStartReconcile(t *testing.T, d *daemon.Daemon) {
	t.Helper()
	if _, err := d.Collect(context.Background(), true); err != nil {
		t.Fatal(err)
	}
}

func waitHalted(t *testing.T, d *daemon.Daemon, want error, reason string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := d.Collect(ctx, false)
		if errors.Is(err, daemon.ErrCollectionHalted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("collection not halted: %v", err)
		}
		select {
		case <-d.Done():
			t.Fatalf("the daemon stopped instead of halting collection: %v", d.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !errors.Is(d.Err(), want) {
		t.Fatalf("Err() = %v, want %v", d.Err(), want)
	}
	for path, want := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/healthz": http.StatusOK} {
		resp, err := http.Get(d.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
		if path == "/readyz" && (!strings.Contains(string(body), "halted") || !strings.Contains(string(body), reason)) {
			t.Errorf("/readyz says %q, want the halt and %q", body, reason)
		}
	}
	resp, err := http.Post(d.URL()+daemon.CollectPath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("POST %s: %d, want 409", daemon.CollectPath, resp.StatusCode)
	}
}
