package eventlog_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

var snapshotBenchEvents = flag.Int("snapshot.events", 400000, "events applied into the projection of BenchmarkSnapshot (4 events make about 5 objects)")

// BenchmarkSnapshot measures a snapshot of a projection: its size, the
// time to publish it to the JetStream object store, and the time a new
// instance takes to load it (fetch and open) against the time it would
// take to replay the same events from the log into an empty projection
// (the baseline, measured in the same run). Sizes and times are reported
// per million objects (nodes of the projection).
func BenchmarkSnapshot(b *testing.B) {
	n := *snapshotBenchEvents
	ctx := ctxT(b, 30*time.Minute)
	_, js, _ := setup(b)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	const chunk = 10000
	evs := make([]events.Event, 0, chunk)
	for i := range n {
		evs = append(evs, graphEvent(i))
		if len(evs) == chunk || i == n-1 {
			publishAll(b, pub, evs)
			evs = evs[:0]
		}
	}
	dir := b.TempDir()
	follow := func(path string) (*refcount.Projection, time.Duration) {
		p, err := refcount.Open(path, refcount.Options{})
		if err != nil {
			b.Fatal(err)
		}
		pr := &projection{p: p}
		f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{Cursor: p.Cursor, Bind: p.BindStream, Apply: pr.Apply})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		stop := runFollower(b, f)
		if seq, err := f.CatchUp(ctx); err != nil || seq != uint64(n) {
			b.Fatalf("CatchUp = %d, %v", seq, err)
		}
		took := time.Since(start)
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		return p, took
	}
	live, replay := follow(filepath.Join(dir, "live.db"))
	defer live.Close()
	st, err := live.Stats()
	if err != nil {
		b.Fatal(err)
	}
	objects := 0
	for _, c := range st.Nodes {
		objects += c
	}
	perM := 1e6 / float64(objects)
	snaps := regtest.Must(eventlog.NewSnapshotStore(ctx, js, eventlog.SnapshotConfig{}))
	for b.Loop() {
		f, err := os.Create(filepath.Join(dir, "snapshot"))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		info, err := live.Snapshot(f)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Seek(0, 0); err != nil {
			b.Fatal(err)
		}
		if _, err := snaps.Put(ctx, eventlog.Snapshot{Seq: info.Cursor, Stream: info.Stream}, f); err != nil {
			b.Fatal(err)
		}
		publish := time.Since(start)
		f.Close()

		start = time.Now()
		path := filepath.Join(dir, "loaded.db")
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := snaps.Get(ctx, "", out); err != nil {
			b.Fatal(err)
		}
		if err := out.Sync(); err != nil {
			b.Fatal(err)
		}
		out.Close()
		loaded, err := refcount.Open(path, refcount.Options{})
		if err != nil {
			b.Fatal(err)
		}
		load := time.Since(start)
		if c, _ := loaded.Cursor(); c != uint64(n) {
			b.Fatalf("loaded cursor %d", c)
		}
		loaded.Close()
		os.Remove(path)

		b.ReportMetric(float64(objects), "objects")
		b.ReportMetric(float64(info.Size)*perM/(1<<20), "snapshot-MiB/Mobjects")
		b.ReportMetric(publish.Seconds()*perM, "publish-s/Mobjects")
		b.ReportMetric(load.Seconds()*perM, "load-s/Mobjects")
		b.ReportMetric(replay.Seconds()*perM, "replay-s/Mobjects")
	}
}
