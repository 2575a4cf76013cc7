package eventlog_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events/eventlog"
)

func TestEnsureStreamDefaults(t *testing.T) {
	_, js, s := setup(t)
	ctx := ctxT(t, 10*time.Second)
	cfg := s.CachedInfo().Config
	if cfg.Name != "REFGC_EVENTS" || len(cfg.Subjects) != 1 || cfg.Subjects[0] != "refgc.events.>" {
		t.Errorf("stream %s on %v", cfg.Name, cfg.Subjects)
	}
	if cfg.Storage != jetstream.FileStorage || cfg.Retention != jetstream.LimitsPolicy ||
		cfg.Replicas != 1 || cfg.MaxAge != 0 || cfg.Duplicates != time.Hour {
		t.Errorf("event log config: storage %s retention %s replicas %d max age %s duplicates %s",
			cfg.Storage, cfg.Retention, cfg.Replicas, cfg.MaxAge, cfg.Duplicates)
	}
	dl, err := js.Stream(ctx, "REFGC_DEADLETTER")
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	dc := dl.CachedInfo().Config
	if dc.Subjects[0] != "refgc.deadletter.>" || dc.Storage != jetstream.FileStorage || dc.MaxAge != 30*24*time.Hour {
		t.Errorf("dead-letter config: %v %s %s", dc.Subjects, dc.Storage, dc.MaxAge)
	}

	// Idempotent: a second call changes nothing.
	before := s.CachedInfo().Created
	s2, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	if !s2.CachedInfo().Created.Equal(before) {
		t.Error("second EnsureStream recreated the stream")
	}

	// Limits are brought to the configuration.
	s3, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{Duplicates: 10 * time.Minute, MaxAge: 90 * 24 * time.Hour})
	if err != nil {
		t.Fatalf("EnsureStream with new limits: %v", err)
	}
	if c := s3.CachedInfo().Config; c.Duplicates != 10*time.Minute || c.MaxAge != 90*24*time.Hour {
		t.Errorf("limits not updated: duplicates %s, max age %s", c.Duplicates, c.MaxAge)
	}
}

func TestEnsureStreamConflicts(t *testing.T) {
	tests := []struct {
		name     string
		existing jetstream.StreamConfig
		cfg      eventlog.StreamConfig
	}{
		{"other subjects", jetstream.StreamConfig{Name: "REFGC_EVENTS", Subjects: []string{"other.>"}, Storage: jetstream.FileStorage}, eventlog.StreamConfig{}},
		{"more subjects", jetstream.StreamConfig{Name: "REFGC_EVENTS", Subjects: []string{"refgc.events.>", "x.>"}, Storage: jetstream.FileStorage}, eventlog.StreamConfig{}},
		{"memory storage", jetstream.StreamConfig{Name: "REFGC_EVENTS", Subjects: []string{"refgc.events.>"}, Storage: jetstream.MemoryStorage}, eventlog.StreamConfig{}},
		{"work queue", jetstream.StreamConfig{Name: "REFGC_EVENTS", Subjects: []string{"refgc.events.>"}, Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy}, eventlog.StreamConfig{}},
		{"dead letter memory", jetstream.StreamConfig{Name: "REFGC_DEADLETTER", Subjects: []string{"refgc.deadletter.>"}, Storage: jetstream.MemoryStorage}, eventlog.StreamConfig{}},
		{"subjects taken by another stream", jetstream.StreamConfig{Name: "SOMEONE_ELSE", Subjects: []string{"refgc.events.>"}, Storage: jetstream.FileStorage}, eventlog.StreamConfig{}},
		{"subjects taken under another name", jetstream.StreamConfig{Name: "REFGC_EVENTS", Subjects: []string{"refgc.events.>"}, Storage: jetstream.FileStorage}, eventlog.StreamConfig{Name: "MINE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, t.TempDir(), -1, "")
			_, js := connect(t, srv.ClientURL(), eventlog.ConnectOptions{})
			ctx := ctxT(t, 10*time.Second)
			if _, err := js.CreateStream(ctx, tt.existing); err != nil {
				t.Fatalf("create the existing stream: %v", err)
			}
			_, err := eventlog.EnsureStream(ctx, js, tt.cfg)
			if !errors.Is(err, eventlog.ErrStreamConflict) {
				t.Fatalf("EnsureStream = %v, want ErrStreamConflict", err)
			}
			// The existing stream is left as it was.
			s, err := js.Stream(ctx, tt.existing.Name)
			if err != nil {
				t.Fatal(err)
			}
			if c := s.CachedInfo().Config; c.Storage != tt.existing.Storage || len(c.Subjects) != len(tt.existing.Subjects) {
				t.Errorf("existing stream changed: %+v", c)
			}
		})
	}
}

// TestStreamID: a stream keeps its identity across server restarts and
// updates of its limits, and a stream deleted and created again under the
// same name gets another.
func TestStreamID(t *testing.T) {
	dir := t.TempDir()
	// id ensures the stream with cfg, after delete if asked, and returns its identity.
	id := func(url string, cfg eventlog.StreamConfig, deleteFirst bool) string {
		t.Helper()
		nc, js := connect(t, url, eventlog.ConnectOptions{})
		defer nc.Close()
		ctx := ctxT(t, 10*time.Second)
		if deleteFirst {
			if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
				t.Fatal(err)
			}
		}
		s, err := eventlog.EnsureStream(ctx, js, cfg)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return eventlog.StreamID(info)
	}
	srv, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	first := id(srv.ClientURL(), eventlog.StreamConfig{}, false)
	if !strings.HasPrefix(first, eventlog.DefaultStreamName+"@") {
		t.Errorf("identity %q does not name the stream", first)
	}
	srv.Shutdown()
	srv, err = eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	if again := id(srv.ClientURL(), eventlog.StreamConfig{Duplicates: 2 * time.Hour}, false); again != first {
		t.Errorf("after a restart and an update: %q, want %q", again, first)
	}
	if recreated := id(srv.ClientURL(), eventlog.StreamConfig{}, true); recreated == first {
		t.Errorf("a recreated stream has the old identity %q", first)
	}
}
