package eventlog_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
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
	if _, err := snaps.Latest(ctx, ""); !errors.Is(err, eventlog.ErrNoSnapshot) {
		t.Fatalf("empty bucket: %v", err)
	}
	var buf bytes.Buffer
	info, err := live.p.Snapshot(&buf)
	if err != nil || info.Cursor != n/2 || info.Stream == "" {
		t.Fatalf("snapshot %+v %v", info, err)
	}
	stored, err := snaps.Put(ctx, eventlog.Snapshot{Seq: info.Cursor, Stream: info.Stream}, &buf)
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
	got, err := snaps.Get(ctx, info.Stream, file)
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

// TestSnapshotRetention: the bucket keeps the newest Keep snapshots, each
// readable by name with its sequence, stream and time taken; the single
// object of earlier versions counts as one of them.
func TestSnapshotRetention(t *testing.T) {
	_, js, _ := setup(t)
	ctx := ctxT(t, 30*time.Second)
	snaps := regtest.Must(eventlog.NewSnapshotStore(ctx, js, eventlog.SnapshotConfig{Keep: 3}))
	// As an earlier version stored it: one object, no time taken.
	obj := regtest.Must(js.ObjectStore(ctx, eventlog.DefaultSnapshotBucket))
	if _, err := obj.PutBytes(ctx, "projection", []byte("old")); err != nil {
		t.Fatal(err)
	}
	if err := obj.UpdateMeta(ctx, "projection", jetstream.ObjectMeta{Name: "projection",
		Metadata: map[string]string{"refgc-seq": "5", "refgc-stream": "s"}}); err != nil {
		t.Fatal(err)
	}
	if l := regtest.Must(snaps.Latest(ctx, "")); l.Seq != 5 || !l.Taken.IsZero() {
		t.Fatalf("the earlier version's snapshot: %+v", l)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, seq := range []uint64{10, 30, 20, 40} {
		taken := t0.Add(time.Duration(i) * time.Hour)
		if _, err := snaps.Put(ctx, eventlog.Snapshot{Seq: seq, Stream: "s", Taken: taken}, bytes.NewReader([]byte{byte(seq)})); err != nil {
			t.Fatal(err)
		}
	}
	all := regtest.Must(snaps.List(ctx))
	var seqs []uint64
	for _, sn := range all {
		seqs = append(seqs, sn.Seq)
		var b bytes.Buffer
		got, err := snaps.GetNamed(ctx, sn.Name, &b)
		if err != nil || got.Seq != sn.Seq || got.Stream != "s" || got.Taken.IsZero() || !bytes.Equal(b.Bytes(), []byte{byte(sn.Seq)}) {
			t.Errorf("snapshot %s: %+v %v %v", sn.Name, got, b.Bytes(), err)
		}
	}
	if !slices.Equal(seqs, []uint64{20, 30, 40}) {
		t.Fatalf("kept %v, want the three newest by sequence", seqs)
	}
	if l := regtest.Must(snaps.Latest(ctx, "")); l.Seq != 40 || !l.Taken.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("latest %+v", l)
	}
}
