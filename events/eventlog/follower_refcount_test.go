package eventlog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/regtest"
	"github.com/refgc/refgc/refcount"
)

// graphEvent returns the i-th event of a small registry's life: per image,
// a layer push, a config push, then the manifest pushed by tag; every
// tenth image's tag is later moved to the previous image.
func graphEvent(i int) events.Event {
	img, step := i/4, i%4
	repo := fmt.Sprintf("team%d/app", img%7)
	layer := digest.FromString(fmt.Sprintf("layer-%d", img))
	config := digest.FromString(fmt.Sprintf("config-%d", img))
	man := digest.FromString(fmt.Sprintf("manifest-%d", img))
	e := events.Event{
		ID:     fmt.Sprintf("g-%07d", i),
		Time:   time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Source: "test",
	}
	switch step {
	case 0:
		e.Kind, e.Blob = events.BlobPushed, &events.Blob{Repo: repo, Digest: layer, Size: 1000}
	case 1:
		e.Kind, e.Blob = events.BlobPushed, &events.Blob{Repo: repo, Digest: config, Size: 100}
	case 2:
		e.Kind, e.Manifest = events.ManifestPushed, &events.Manifest{
			Repo: repo, Digest: man, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 500,
			Blobs: []events.Descriptor{{Digest: config, Size: 100}, {Digest: layer, Size: 1000}},
			Tag:   fmt.Sprintf("v%d", img%50),
		}
	default:
		prev := digest.FromString(fmt.Sprintf("manifest-%d", max(img-7, 0)))
		if img%10 == 0 {
			e.Kind, e.Tag = events.TagSet, &events.Tag{Repo: repo, Name: fmt.Sprintf("v%d", img%50), Digest: prev}
		} else {
			e.Kind, e.Ref = events.Touched, &events.RepoDigest{Repo: repo, Digest: man}
		}
	}
	return e
}

// projection adapts a refcount.Projection to the follower and checks that
// every record reaches it exactly once, in order.
type projection struct {
	p        *refcount.Projection
	mu       sync.Mutex
	problems []string
	stopAt   uint64
	stop     context.CancelFunc
}

func (pr *projection) Apply(batch []events.Record) error {
	cur, err := pr.p.Cursor()
	if err != nil {
		return err
	}
	pr.mu.Lock()
	for i, r := range batch {
		if r.Seq != cur+1+uint64(i) {
			pr.problems = append(pr.problems, fmt.Sprintf("record %d arrives after cursor %d at batch index %d", r.Seq, cur, i))
			break
		}
	}
	pr.mu.Unlock()
	res, err := pr.p.Apply(batch)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if res.Skipped != 0 || len(res.Invalid) != 0 || res.Applied != len(batch) {
		pr.problems = append(pr.problems, fmt.Sprintf("batch %d..%d: applied %d, skipped %d, invalid %d",
			batch[0].Seq, batch[len(batch)-1].Seq, res.Applied, res.Skipped, len(res.Invalid)))
	}
	if pr.stop != nil && res.Cursor >= pr.stopAt {
		pr.stop()
	}
	return nil
}

func openProjection(t *testing.T, path string) *projection {
	t.Helper()
	p, err := refcount.Open(path, refcount.Options{NoSync: true})
	if err != nil {
		t.Fatalf("refcount.Open: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &projection{p: p}
}

func (pr *projection) follower(t *testing.T, js jetstream.JetStream, maxBatch int) *eventlog.Follower {
	t.Helper()
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{
		Cursor: pr.p.Cursor, Bind: pr.p.BindStream, Apply: pr.Apply, MaxBatch: maxBatch, CheckInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (pr *projection) dump(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := pr.p.Dump(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestFollowerIntoRefcount follows 10,000 events into two refcount
// projections, one stopped halfway, closed, reopened and restarted from its
// cursor, the other uninterrupted: their dumps are byte for byte equal.
func TestFollowerIntoRefcount(t *testing.T) {
	const n = 10000
	_, js, _ := setup(t)
	pub := regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{}))
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = graphEvent(i)
	}
	publishAll(t, pub, evs)
	dir := t.TempDir()

	// Interrupted run: stops itself past the middle, then the file is
	// closed and reopened as after a process restart.
	path := filepath.Join(dir, "interrupted.db")
	a := openProjection(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.stopAt, a.stop = n/2, cancel
	if err := a.follower(t, js, 300).Run(ctx); err != nil {
		t.Fatalf("first run: %v", err)
	}
	mid, _ := a.p.Cursor()
	if mid < n/2 || mid >= n {
		t.Fatalf("first run stopped at %d", mid)
	}
	if err := a.p.Close(); err != nil {
		t.Fatal(err)
	}
	a2 := openProjection(t, path)
	a2.problems = a.problems
	f := a2.follower(t, js, 0)
	stop := runFollower(t, f)
	if seq, err := f.CatchUp(ctxT(t, 60*time.Second)); err != nil || seq != n {
		t.Fatalf("CatchUp = %d, %v", seq, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	b := openProjection(t, filepath.Join(dir, "whole.db"))
	fb := b.follower(t, js, 0)
	stopB := runFollower(t, fb)
	if _, err := fb.CatchUp(ctxT(t, 60*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}

	for _, pr := range []*projection{a2, b} {
		for _, p := range pr.problems {
			t.Error(p)
		}
		if c, _ := pr.p.Cursor(); c != n {
			t.Errorf("cursor %d, want %d", c, n)
		}
	}
	da, db := a2.dump(t), b.dump(t)
	if len(db) == 0 {
		t.Fatal("empty dump")
	}
	if !bytes.Equal(da, db) {
		t.Fatalf("the interrupted projection's dump (%d bytes) differs from the uninterrupted one's (%d bytes)", len(da), len(db))
	}
}

// TestFollowerRefusesRecreatedStream follows a stream into a refcount
// projection, then deletes the stream and creates it again with more
// events than the projection's cursor, so that sequences alone cannot
// tell: the follower refuses the new stream, whether it starts after the
// recreation or was running across it.
func TestFollowerRefusesRecreatedStream(t *testing.T) {
	const before, after = 40, 100
	recreate := func(t *testing.T, js jetstream.JetStream) {
		t.Helper()
		ctx := ctxT(t, 30*time.Second)
		if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
			t.Fatal(err)
		}
		if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
			t.Fatal(err)
		}
		evs := make([]events.Event, after)
		for i := range evs {
			evs[i] = graphEvent(1000 + i)
		}
		publishAll(t, regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})), evs)
	}
	follow := func(t *testing.T) (jetstream.JetStream, jetstream.Stream, *projection) {
		t.Helper()
		_, js, s := setup(t)
		evs := make([]events.Event, before)
		for i := range evs {
			evs[i] = graphEvent(i)
		}
		publishAll(t, regtest.Must(eventlog.NewPublisher(js, eventlog.PublisherConfig{})), evs)
		return js, s, openProjection(t, filepath.Join(t.TempDir(), "refs.db"))
	}
	wantRefused := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, eventlog.ErrCursorGap) || !errors.Is(err, refcount.ErrStreamChanged) {
			t.Fatalf("err = %v, want ErrCursorGap and ErrStreamChanged", err)
		}
		if !strings.Contains(err.Error(), "refgc rebuild") {
			t.Errorf("error %q does not say to rebuild", err)
		}
	}

	t.Run("at start", func(t *testing.T) {
		js, s, pr := follow(t)
		f := pr.follower(t, js, 0)
		stop := runFollower(t, f)
		if seq, err := f.CatchUp(ctxT(t, 30*time.Second)); err != nil || seq != before {
			t.Fatalf("CatchUp = %d, %v", seq, err)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		bound, err := pr.p.StreamID()
		if err != nil || bound != eventlog.StreamID(info) {
			t.Fatalf("projection bound to %q (%v), want %q", bound, err, eventlog.StreamID(info))
		}

		recreate(t, js)
		err = pr.follower(t, js, 0).Run(ctxT(t, 30*time.Second))
		wantRefused(t, err)
		if c, _ := pr.p.Cursor(); c != before {
			t.Errorf("cursor moved to %d", c)
		}
		if id, _ := pr.p.StreamID(); id != bound {
			t.Errorf("projection rebound to %q", id)
		}
	})

	t.Run("while running", func(t *testing.T) {
		js, _, pr := follow(t)
		f := pr.follower(t, js, 0)
		ctx := ctxT(t, 30*time.Second)
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		if err := f.WaitApplied(ctx, before); err != nil {
			t.Fatal(err)
		}
		recreate(t, js)
		// A CatchUp, as the collector makes before every round, refuses
		// the new stream at once.
		_, err := f.CatchUp(ctx)
		wantRefused(t, err)
		if err := <-done; !errors.Is(err, eventlog.ErrCursorGap) {
			t.Fatalf("Run = %v, want ErrCursorGap", err)
		}
	})
}
