package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/daemon"
)

// When the stream no longer holds the event after the projection's cursor
// (purged while refgc was down), the daemon keeps serving but halts
// collection: a pass on a projection that missed events could delete
// live images.
func TestCursorGapHaltsCollection(t *testing.T) {
	ctx := context.Background()
	cfg := daemon.Defaults()
	cfg.DataDir, cfg.Addr, cfg.NATS.Listen = t.TempDir(), "127.0.0.1:0", "127.0.0.1:-1"
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": t.TempDir()}}
	cfg.Collector.Interval = 0
	cfg.NoSync = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))

	blob := func(i int) events.Event {
		return events.Event{V: events.Version, ID: "gap-" + string(rune('a'+i)), Time: time.Now(), Kind: events.BlobPushed,
			Blob: &events.Blob{Repo: "app", Digest: digest.FromString(string(rune('a' + i))), Size: 1}}
	}
	publish := func(js jetstream.JetStream, evs ...events.Event) {
		t.Helper()
		if _, err := events.NewPublisher(js, events.PublisherConfig{}).PublishBatch(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}

	// 1. A daemon applies three events, then stops.
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := events.Connect(d.NATSURL(), events.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	publish(js, blob(0), blob(1), blob(2))
	if _, err := d.Follower().CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// 2. While it is down, more events arrive and the stream is purged past them.
	emb, err := events.StartEmbedded(events.EmbeddedConfig{StoreDir: filepath.Join(cfg.DataDir, "nats"), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	nc, err = events.Connect(emb.ClientURL(), events.ConnectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ = jetstream.New(nc)
	publish(js, blob(3), blob(4), blob(5))
	st, err := js.Stream(ctx, events.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(6)); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	emb.Shutdown()

	// 3. The daemon starts again: it serves, but never collects.
	d, err = daemon.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := d.Collect(ctx, false)
		if errors.Is(err, daemon.ErrCollectionHalted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("collection not halted after the cursor gap: %v", err)
		}
		select {
		case <-d.Done():
			t.Fatalf("the daemon stopped instead of halting collection: %v", d.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !errors.Is(d.Err(), events.ErrCursorGap) {
		t.Fatalf("Err() = %v, want ErrCursorGap", d.Err())
	}
	for path, want := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/healthz": http.StatusOK} {
		resp, err := http.Get(d.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
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
