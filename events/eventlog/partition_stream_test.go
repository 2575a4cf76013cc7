package eventlog_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/refcount"
)

// Progress counts in the stream it was made in: after the stream is
// deleted and created again, a repository partition whose projection
// follows the old one (its follower halted; its relay runs on) does not
// let the new stream's barrier pass.
func TestBarrierIgnoresOldStreamProgress(t *testing.T) {
	ctx := context.Background()
	js, _ := jstest.Start(t)
	old, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	oldInfo, err := old.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := eventlog.NewPublisher(js, eventlog.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	part := refcount.Partition{Role: refcount.RoleRepos, Index: 0, Repos: 1, Digests: 1}
	p, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"), refcount.Options{Partition: part, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.BindStream(eventlog.StreamID(oldInfo)); err != nil {
		t.Fatal(err)
	}
	relay, err := eventlog.NewRelay(ctx, js, eventlog.RelayConfig{Publisher: pub, Outbox: p, Partition: part.Name(), Layout: part.Layout()})
	if err != nil {
		t.Fatal(err)
	}
	barrier, err := eventlog.NewBarrier(ctx, js, eventlog.BarrierConfig{Repos: 1, Layout: part.Layout(), Timeout: 300 * time.Millisecond, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	push := func(n int, gen string) []events.Event {
		var evs []events.Event
		for i := range n {
			evs = append(evs, events.Event{V: events.Version, ID: fmt.Sprintf("%s-%d", gen, i), Time: time.Now().UTC(), Kind: events.BlobPushed,
				Blob: &events.Blob{Repo: "repo", Digest: digest.FromString(gen + fmt.Sprint(i)), Size: 3}})
		}
		return evs
	}
	evs := push(8, "old")
	res, err := pub.PublishBatch(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	var recs []events.Record
	for i, e := range evs {
		recs = append(recs, events.Record{Seq: res[i].Seq, Event: e})
	}
	if _, err := p.Apply(recs); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The stream is deleted and created again; the registry goes on
	// publishing. r0's follower halts (the stream changed); its relay runs on.
	if err := js.DeleteStream(ctx, eventlog.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.PublishBatch(ctx, push(2, "new")); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := barrier.Wait(ctx); err == nil {
		t.Errorf("the barrier of the new stream passed on r0's progress through the old one (r0 applied nothing of the new stream)")
	}
}
