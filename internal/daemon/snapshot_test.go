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

// snapshotEnv is an embedded JetStream and daemons started on it, with
// blob events to publish and a wait for a daemon to apply the whole log.
type snapshotEnv struct {
	t      *testing.T
	js     jetstream.JetStream
	emb    *eventlog.Embedded
	stream jetstream.Stream
}

func newSnapshotEnv(t *testing.T) *snapshotEnv {
	js, emb := jstest.Start(t)
	return &snapshotEnv{t: t, js: js, emb: emb}
}

// start starts a daemon with cfg on the env's NATS; the first one creates
// the stream.
func (e *snapshotEnv) start(cfg daemon.Config) *daemon.Daemon {
	e.t.Helper()
	cfg.NATS.URL = e.emb.ClientURL()
	cfg.Collector.ReconcileInterval = 0
	d, err := daemon.Start(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	if e.stream == nil {
		e.stream = regtest.Must(e.js.Stream(context.Background(), eventlog.DefaultStreamName))
	}
	return d
}

// publish publishes blob events from to to-1.
func (e *snapshotEnv) publish(from, to int) {
	e.t.Helper()
	for i := from; i < to; i++ {
		publishEvents(e.t, e.js, events.Event{V: events.Version, ID: fmt.Sprintf("snap-%d", i), Time: time.Now(),
			Kind: events.BlobPushed, Blob: &events.Blob{Repo: "app", Digest: digest.FromString(fmt.Sprint(i)), Size: int64(i + 1)}})
	}
}

// catchUp waits until d has applied the stream's last event.
func (e *snapshotEnv) catchUp(what string, d *daemon.Daemon) {
	e.t.Helper()
	ctx := context.Background()
	regtest.WaitFor(e.t, what, func() bool {
		c, err := d.Projection().Cursor()
		return err == nil && c == regtest.Must(e.stream.Info(ctx)).State.LastSeq
	})
}

// snapshotAndTrim has a publish a snapshot, then purges the stream below
// the snapshot's sequence.
func (e *snapshotEnv) snapshotAndTrim(a *daemon.Daemon) {
	e.t.Helper()
	ctx := context.Background()
	if n, err := a.PublishSnapshot(ctx); err != nil || n == 0 {
		e.t.Fatalf("snapshot: %d %v", n, err)
	}
	at := regtest.Must(a.Projection().Cursor())
	if err := e.stream.Purge(ctx, jetstream.WithPurgeSequence(at+1)); err != nil {
		e.t.Fatal(err)
	}
}

// sameDump fails the test unless a and b dump the same bytes.
func sameDump(t *testing.T, a, b *daemon.Daemon) {
	t.Helper()
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
}

// TestNewInstanceStartsFromSnapshot: an instance publishes a snapshot;
// the log goes on, and its events up to the snapshot age out; a new
// instance loads the snapshot, follows the rest without halting on the
// gap, and its projection equals the first one's byte for byte.
func TestNewInstanceStartsFromSnapshot(t *testing.T) {
	e := newSnapshotEnv(t)
	a := e.start(haltConfig(t))
	e.publish(0, 50)
	e.catchUp("a to catch up", a)
	if n, err := a.PublishSnapshot(context.Background()); err != nil || n == 0 {
		t.Fatalf("snapshot: %d %v", n, err)
	}
	at := regtest.Must(a.Projection().Cursor())
	e.publish(50, 80)
	if err := e.stream.Purge(context.Background(), jetstream.WithPurgeSequence(at+1)); err != nil {
		t.Fatal(err)
	}
	e.catchUp("a to catch up", a)

	b := e.start(haltConfig(t))
	e.catchUp("b to catch up from the snapshot", b)
	if !b.IsLeader() {
		t.Fatal("b is not collecting")
	}
	sameDump(t, a, b)
	if _, err := b.Collect(context.Background(), true); err != nil {
		t.Fatalf("b halted: %v", err)
	}
}

// TestLaggingInstanceReloadsFromSnapshot: an instance stops; the log goes
// on and the events after its cursor age out; on restart its projection
// is behind the log's first event, so it is moved aside and the newest
// snapshot loaded, instead of the follower halting on the gap.
func TestLaggingInstanceReloadsFromSnapshot(t *testing.T) {
	e := newSnapshotEnv(t)
	a := e.start(haltConfig(t))
	e.publish(0, 20)
	bcfg := haltConfig(t)
	b := e.start(bcfg)
	e.catchUp("b to catch up", b)
	stopped := regtest.Must(b.Projection().Cursor())
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	e.publish(20, 60)
	e.catchUp("a to catch up", a)
	e.snapshotAndTrim(a)

	b = e.start(bcfg)
	e.catchUp("b to catch up from the snapshot", b)
	sameDump(t, a, b)
	aside := filepath.Join(bcfg.DataDir, fmt.Sprintf("%s.behind-%d", daemon.ProjectionFile, stopped))
	if _, err := os.Stat(aside); err != nil {
		t.Fatalf("the lagging projection is not kept aside: %v", err)
	}
}
