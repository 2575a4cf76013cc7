package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/regtest"
)

// Two instances share the event log and the storage: one collects, the
// other follows as a hot standby and takes over when the first stops.
func TestHotStandbyTakesOver(t *testing.T) {
	ctx := context.Background()
	emb, err := eventlog.StartEmbedded(eventlog.EmbeddedConfig{StoreDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Shutdown)
	root := t.TempDir()
	start := func(id string) *daemon.Daemon {
		t.Helper()
		return startShared(t, emb, root, func(cfg *daemon.Config) {
			cfg.HA = daemon.HAConfig{Enabled: true, ID: id, TTL: 600 * time.Millisecond}
		})
	}
	waitFor := func(what string, cond func() bool) { t.Helper(); regtest.WaitFor(t, what, cond) }
	a := start("a")
	waitFor("a to lead", a.IsLeader)
	b := start("b")
	if b.IsLeader() {
		t.Fatal("two leaders")
	}
	if _, err := b.Collect(ctx, false); !errors.Is(err, daemon.ErrNotLeader) {
		t.Fatalf("a standby collected: %v", err)
	}
	if _, err := b.Collect(ctx, true); err != nil {
		t.Fatalf("a standby's dry run: %v", err)
	}
	if _, err := a.Collect(ctx, false); err != nil {
		t.Fatalf("the leader's pass: %v", err)
	}
	if n := metricSum(t, b, "refgc_leader"); n != 0 {
		t.Fatalf("standby refgc_leader = %v", n)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("b to take over", b.IsLeader)
	if _, err := b.Collect(ctx, false); err != nil {
		t.Fatalf("the new leader's pass: %v", err)
	}
	if n := metricSum(t, b, "refgc_leader"); n != 1 {
		t.Fatalf("leader refgc_leader = %v", n)
	}
}

// startShared starts a daemon on the shared NATS server emb and the
// filesystem storage root, collecting only when asked, as set changes it.
func startShared(t *testing.T, emb *eventlog.Embedded, root string, set func(*daemon.Config)) *daemon.Daemon {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir, cfg.Addr, cfg.NATS.URL = t.TempDir(), "127.0.0.1:0", emb.ClientURL()
	cfg.Storage = map[string]any{"filesystem": map[string]any{"rootdirectory": root}}
	cfg.Collector.Interval = 0
	cfg.NoSync = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	set(&cfg)
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d
}
