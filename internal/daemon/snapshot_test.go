package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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

// TestDumpAtOnTrimmedLog: dump --at on a bounded log starts from the
// newest snapshot at or before its point and replays the log after it.
// Snapshots are kept up to SnapshotKeep; a point older than the oldest
// snapshot and the log's first event is refused with ErrPointGone (409).
func TestDumpAtOnTrimmedLog(t *testing.T) {
	ctx := context.Background()
	e := newSnapshotEnv(t)
	cfg := haltConfig(t)
	cfg.SnapshotKeep = 2
	a := e.start(cfg)
	dumps := map[uint64][]byte{} // the live projection's dump at each snapshot
	snapshot := func() uint64 {
		t.Helper()
		if n, err := a.PublishSnapshot(ctx); err != nil || n == 0 {
			t.Fatalf("snapshot: %d %v", n, err)
		}
		at := regtest.Must(a.Projection().Cursor())
		var b bytes.Buffer
		if err := a.Projection().Dump(&b); err != nil {
			t.Fatal(err)
		}
		dumps[at] = b.Bytes()
		return at
	}
	e.publish(0, 10)
	e.catchUp("a to catch up", a)
	first := snapshot()
	e.publish(10, 20)
	e.catchUp("a to catch up", a)
	second := snapshot()
	between := time.Now() // after the second snapshot, before the events that follow it
	e.publish(20, 30)
	e.catchUp("a to catch up", a)
	third := snapshot()
	e.publish(30, 40)
	e.catchUp("a to catch up", a)
	// The log keeps what follows the second snapshot.
	if err := e.stream.Purge(ctx, jetstream.WithPurgeSequence(second+1)); err != nil {
		t.Fatal(err)
	}

	snaps := regtest.Must(eventlog.NewSnapshotStore(ctx, e.js, eventlog.SnapshotConfig{}))
	kept := regtest.Must(snaps.List(ctx))
	if len(kept) != 2 || kept[0].Seq != second || kept[1].Seq != third || kept[0].Taken.IsZero() {
		t.Fatalf("snapshots kept: %+v, want the two newest", kept)
	}

	dumpAt := func(at string) (uint64, []byte, error) {
		var b bytes.Buffer
		cur, err := a.DumpAt(ctx, &b, at)
		return cur, b.Bytes(), err
	}
	for _, tc := range []struct {
		name string
		at   string
		want uint64
	}{
		{"at a snapshot", fmt.Sprint(second), second},
		{"between snapshots", fmt.Sprint(second + 5), second + 5},
		{"at a time", between.UTC().Format(time.RFC3339Nano), second},
		{"at the newest snapshot", fmt.Sprint(third), third},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur, got, err := dumpAt(tc.at)
			if err != nil || cur != tc.want {
				t.Fatalf("DumpAt(%s) = cursor %d, %v; want %d", tc.at, cur, err, tc.want)
			}
			if want, ok := dumps[tc.want]; ok && !bytes.Equal(got, want) {
				t.Fatalf("DumpAt(%s) differs from the live projection then: %d bytes, want %d", tc.at, len(got), len(want))
			}
		})
	}
	// Between snapshots, the replay after the second stops at the point:
	// the event at second+k is the blob of event 20+k-1.
	_, got, err := dumpAt(fmt.Sprint(second + 5))
	if err != nil || !bytes.Contains(got, []byte(digest.FromString("24"))) || bytes.Contains(got, []byte(digest.FromString("25"))) {
		t.Fatalf("DumpAt(%d): %v\n%s", second+5, err, got)
	}
	_, _, err = dumpAt(fmt.Sprint(first))
	if !errors.Is(err, daemon.ErrPointGone) {
		t.Fatalf("a point before the oldest snapshot and the log: %v", err)
	}
	resp := regtest.Must(http.Get(a.URL() + daemon.DumpPath + "?at=" + fmt.Sprint(first)))
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "older than the oldest snapshot") {
		t.Fatalf("GET dump?at=%d: %d %s", first, resp.StatusCode, body)
	}
	t.Logf("GET dump?at=%d: %d %s", first, resp.StatusCode, bytes.TrimSpace(body))
}
