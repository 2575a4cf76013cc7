package eventlog_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
)

// TestSnapshotThenFollow: a projection snapshots itself into the object
// store halfway through the log; the events before the snapshot age out
// of the stream; a new instance loads the snapshot and follows the rest.
// Its dump equals, byte for byte, that of the projection that followed the
// whole log live. Without the snapshot, the aged-out log is refused.
func TestSnapshotThenFollow(t *testing.T) {
	const n = 4000
	_, js, _ := setup(t)
	ctx := ctxT(t, 60*time.Second)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = graphEvent(i)
	}
	publishAll(t, pub, evs[:n/2])
	dir := t.TempDir()

	live := openProjection(t, filepath.Join(dir, "live.db"))
	f := live.follower(t, js, 0)
	stop := runFollower(t, f)
	if seq, err := f.CatchUp(ctx); err != nil || seq != n/2 {
		t.Fatalf("CatchUp = %d, %v", seq, err)
	}
	snaps := regtest.Must(eventlog.NewSnapshotStore(ctx, js, eventlog.SnapshotConfig{}))
	if _, err := snaps.Latest(ctx); !errors.Is(err, eventlog.ErrNoSnapshot) {
		t.Fatalf("empty bucket: %v", err)
	}
	var buf bytes.Buffer
	info, err := live.p.Snapshot(&buf)
	if err != nil || info.Cursor != n/2 || info.Stream == "" {
		t.Fatalf("snapshot %+v %v", info, err)
	}
	stored, err := snaps.Put(ctx, info.Cursor, info.Stream, &buf)
	if err != nil || stored.Seq != n/2 || stored.Stream != info.Stream || stored.Size != uint64(info.Size) {
		t.Fatalf("put %+v %v", stored, err)
	}

	// The rest of the log; the events the snapshot holds age out.
	publishAll(t, pub, evs[n/2:])
	if seq, err := f.CatchUp(ctx); err != nil || seq != n {
		t.Fatalf("CatchUp = %d, %v", seq, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, eventlog.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(n/2+1)); err != nil {
		t.Fatal(err)
	}

	// A new instance without the snapshot cannot follow.
	fresh := openProjection(t, filepath.Join(dir, "fresh.db"))
	if err := fresh.follower(t, js, 0).Run(ctx); !errors.Is(err, eventlog.ErrCursorGap) {
		t.Fatalf("a fresh projection on an aged-out log: %v", err)
	}

	// A new instance with it follows from the snapshot's sequence.
	path := filepath.Join(dir, "loaded.db")
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := snaps.Get(ctx, file)
	if err != nil || got.Seq != n/2 {
		t.Fatalf("get %+v %v", got, err)
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	loaded := openProjection(t, path)
	lf := loaded.follower(t, js, 0)
	stopL := runFollower(t, lf)
	if seq, err := lf.CatchUp(ctx); err != nil || seq != n {
		t.Fatalf("CatchUp from the snapshot = %d, %v", seq, err)
	}
	if err := stopL(); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(live.problems, loaded.problems...) {
		t.Error(p)
	}
	if a, b := live.dump(t), loaded.dump(t); len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("snapshot + log (%d bytes of dump) differs from the live projection (%d bytes)", len(b), len(a))
	}
}
