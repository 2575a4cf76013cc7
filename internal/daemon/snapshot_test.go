package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/daemon"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/internal/regtest"
)

// TestNewInstanceStartsFromSnapshot: an instance publishes a snapshot;
// the log goes on, and its events up to the snapshot age out; a new
// instance loads the snapshot, follows the rest without halting on the
// gap, and its projection equals the first one's byte for byte.
func TestNewInstanceStartsFromSnapshot(t *testing.T) {
	ctx := context.Background()
	js, emb := jstest.Start(t)
	start := func() *daemon.Daemon {
		t.Helper()
		cfg := haltConfig(t)
		cfg.NATS.URL = emb.ClientURL()
		cfg.Collector.ReconcileInterval = 0
		d, err := daemon.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
		return d
	}
	blob := func(i int) events.Event {
		return events.Event{V: events.Version, ID: fmt.Sprintf("snap-%d", i), Time: time.Now(), Kind: events.BlobPushed,
			Blob: &events.Blob{Repo: "app", Digest: digest.FromString(fmt.Sprint(i)), Size: int64(i + 1)}}
	}
	a := start()
	stream := regtest.Must(js.Stream(ctx, eventlog.DefaultStreamName))
	last := func() uint64 { return regtest.Must(stream.Info(ctx)).State.LastSeq }
	caughtUp := func(d *daemon.Daemon) func() bool {
		return func() bool { c, err := d.Projection().Cursor(); return err == nil && c == last() }
	}
	for i := range 50 {
		publishEvents(t, js, blob(i))
	}
	regtest.WaitFor(t, "a to catch up", caughtUp(a))
	if n, err := a.PublishSnapshot(ctx); err != nil || n == 0 {
		t.Fatalf("snapshot: %d %v", n, err)
	}
	at := regtest.Must(a.Projection().Cursor())
	for i := 50; i < 80; i++ {
		publishEvents(t, js, blob(i))
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(at+1)); err != nil {
		t.Fatal(err)
	}
	regtest.WaitFor(t, "a to catch up", caughtUp(a))

	b := start()
	regtest.WaitFor(t, "b to catch up from the snapshot", caughtUp(b))
	if !b.IsLeader() {
		t.Fatal("b is not collecting")
	}
	var da, db bytes.Buffer
	if err := a.Projection().Dump(&da); err != nil {
		t.Fatal(err)
	}
	if err := b.Projection().Dump(&db); err != nil {
		t.Fatal(err)
	}
	if da.Len() == 0 || !bytes.Equal(da.Bytes(), db.Bytes()) {
		t.Fatalf("the instance started from the snapshot differs: %d bytes of dump, want %d", db.Len(), da.Len())
	}
	if _, err := b.Collect(ctx, true); err != nil {
		t.Fatalf("b halted: %v", err)
	}
}

// TestLaggingInstanceReloadsFromSnapshot: an instance stops; the log goes
// on and the events after its cursor age out; on restart its projection
// is behind the log's first event, so it is moved aside and the newest
// snapshot loaded, instead of the follower halting on the gap.
func TestLaggingInstanceReloadsFromSnapshot(t *testing.T) {
	ctx := context.Background()
	js, emb := jstest.Start(t)
	start := func(cfg daemon.Config) *daemon.Daemon {
		t.Helper()
		cfg.NATS.URL = emb.ClientURL()
		cfg.Collector.ReconcileInterval = 0
		d, err := daemon.Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
		return d
	}
	blob := func(i int) events.Event {
		return events.Event{V: events.Version, ID: fmt.Sprintf("lag-%d", i), Time: time.Now(), Kind: events.BlobPushed,
			Blob: &events.Blob{Repo: "app", Digest: digest.FromString(fmt.Sprint(i)), Size: int64(i + 1)}}
	}
	a := start(haltConfig(t))
	stream := regtest.Must(js.Stream(ctx, eventlog.DefaultStreamName))
	last := func() uint64 { return regtest.Must(stream.Info(ctx)).State.LastSeq }
	caughtUp := func(d *daemon.Daemon) func() bool {
		return func() bool { c, err := d.Projection().Cursor(); return err == nil && c == last() }
	}
	for i := range 20 {
		publishEvents(t, js, blob(i))
	}
	bcfg := haltConfig(t)
	b := start(bcfg)
	regtest.WaitFor(t, "b to catch up", caughtUp(b))
	stopped := regtest.Must(b.Projection().Cursor())
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	for i := 20; i < 60; i++ {
		publishEvents(t, js, blob(i))
	}
	regtest.WaitFor(t, "a to catch up", caughtUp(a))
	if n, err := a.PublishSnapshot(ctx); err != nil || n == 0 {
		t.Fatalf("snapshot: %d %v", n, err)
	}
	at := regtest.Must(a.Projection().Cursor())
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(at+1)); err != nil {
		t.Fatal(err)
	}

	b = start(bcfg)
	regtest.WaitFor(t, "b to catch up from the snapshot", caughtUp(b))
	var da, db bytes.Buffer
	if err := a.Projection().Dump(&da); err != nil {
		t.Fatal(err)
	}
	if err := b.Projection().Dump(&db); err != nil {
		t.Fatal(err)
	}
	if da.Len() == 0 || !bytes.Equal(da.Bytes(), db.Bytes()) {
		t.Fatalf("the instance reloaded from the snapshot differs: %d bytes of dump, want %d", db.Len(), da.Len())
	}
	aside := filepath.Join(bcfg.DataDir, fmt.Sprintf("%s.behind-%d", daemon.ProjectionFile, stopped))
	if _, err := os.Stat(aside); err != nil {
		t.Fatalf("the lagging projection is not kept aside: %v", err)
	}
}
