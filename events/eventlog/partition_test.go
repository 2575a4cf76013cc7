package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/events/eventlog"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/refcount"
)

// A digest partition's barrier passes only once every repository
// partition has published, through the log's last sequence, the
// statements its projection made; and the relay publishes exactly the
// outbox.
func TestRelayAndBarrier(t *testing.T) {
	ctx := context.Background()
	js, pub, stream := partitionLog(t)
	var repos [2]*refcount.Projection
	var relays [2]*eventlog.Relay
	for i := range repos {
		repos[i], relays[i] = repoPartition(t, js, pub, stream, i, 2)
	}
	barrier, err := eventlog.NewBarrier(ctx, js, eventlog.BarrierConfig{Repos: 2, Layout: "2/1", Timeout: 300 * time.Millisecond, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Two pushes, one per repository partition, published and applied
	// everywhere, as each partition's follower would.
	var evs []events.Event
	for i, name := 0, 0; len(evs) < 2; name++ {
		repo := fmt.Sprintf("repo%d", name)
		if refcount.RepoPartition(repo, 2) != len(evs) {
			continue
		}
		evs = append(evs, events.Event{V: events.Version, ID: fmt.Sprintf("push-%d", i), Time: time.Now().UTC(), Kind: events.BlobPushed,
			Blob: &events.Blob{Repo: repo, Digest: digest.FromString(repo), Size: 3}})
		i++
	}
	recs := publishApplied(t, pub, evs, repos[:]...)
	if err := barrier.Wait(ctx); !errors.Is(err, eventlog.ErrBarrier) {
		t.Fatalf("barrier passed before any relay: %v", err)
	}
	through, err := relays[0].Flush(ctx)
	if err != nil || through != recs[1].Seq {
		t.Fatalf("r0 relay: through %d, %v", through, err)
	}
	if err := barrier.Wait(ctx); !errors.Is(err, eventlog.ErrBarrier) {
		t.Fatalf("barrier passed with r1 behind: %v", err)
	}
	// r1's statement is now in the log after the pushes: r1 must also
	// have applied it (and r0's) before the barrier passes.
	if _, err := relays[1].Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := barrier.Wait(ctx); !errors.Is(err, eventlog.ErrBarrier) {
		t.Fatalf("barrier passed before the partitions applied the statements: %v", err)
	}
	// The follower may hand the two statements over in one batch or in
	// two (a loaded machine reads the first before the second arrives):
	// what the log holds after the pushes is counted over all of them.
	var mu sync.Mutex
	var after, held int
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{Cursor: func() (uint64, error) { return recs[1].Seq, nil },
		Apply: func(b []events.Record) error {
			mu.Lock()
			for _, r := range b {
				after++
				if r.Event.Kind == events.BlobHeld && r.Event.Held.Held {
					held++
				}
			}
			mu.Unlock()
			for _, p := range repos {
				if _, err := p.Apply(b); err != nil {
					return err
				}
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = f.Run(fctx) }()
	if _, err := f.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if held != 2 || after != 2 {
		t.Fatalf("the log after the pushes holds %d records, %d statements of holding", after, held)
	}
	mu.Unlock()
	for _, r := range relays {
		if _, err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := barrier.Wait(ctx); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	// A digest partition that counts three repository partitions does not
	// take these two relays' word for it.
	other, err := eventlog.NewBarrier(ctx, js, eventlog.BarrierConfig{Repos: 2, Layout: "3/1", Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Wait(ctx); !errors.Is(err, eventlog.ErrBarrier) {
		t.Fatalf("a barrier of another layout passed: %v", err)
	}
	for i, p := range repos {
		if out, err := p.Outbox(10); err != nil || len(out) != 0 {
			t.Fatalf("r%d outbox after the relay: %v %v", i, out, err)
		}
	}
}

// partitionLog starts a server with the event log and a publisher; it
// returns the stream's identity.
func partitionLog(t *testing.T) (jetstream.JetStream, *eventlog.Publisher, string) {
	t.Helper()
	ctx := context.Background()
	js, _ := jstest.Start(t)
	stream, err := eventlog.EnsureStream(ctx, js, eventlog.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := eventlog.NewPublisher(js, eventlog.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return js, pub, eventlog.StreamID(info)
}

// repoPartition opens repository partition i of repos (one digest
// partition), bound to the stream, and its relay.
func repoPartition(t *testing.T, js jetstream.JetStream, pub *eventlog.Publisher, stream string, i, repos int) (*refcount.Projection, *eventlog.Relay) {
	t.Helper()
	part := refcount.Partition{Role: refcount.RoleRepos, Index: i, Repos: repos, Digests: 1}
	p, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"), refcount.Options{Partition: part, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.BindStream(stream); err != nil {
		t.Fatal(err)
	}
	relay, err := eventlog.NewRelay(context.Background(), js, eventlog.RelayConfig{Publisher: pub, Outbox: p,
		Partition: part.Name(), Layout: part.Layout()})
	if err != nil {
		t.Fatal(err)
	}
	return p, relay
}

// publishApplied publishes events and applies them to the projections,
// as their followers would.
func publishApplied(t *testing.T, pub *eventlog.Publisher, evs []events.Event, ps ...*refcount.Projection) []events.Record {
	t.Helper()
	res, err := pub.PublishBatch(context.Background(), evs)
	if err != nil {
		t.Fatal(err)
	}
	var recs []events.Record
	for i, e := range evs {
		recs = append(recs, events.Record{Seq: res[i].Seq, Event: e})
	}
	for _, p := range ps {
		if _, err := p.Apply(recs); err != nil {
			t.Fatal(err)
		}
	}
	return recs
}

// Progress counts in the stream it was made in: after the stream is
// deleted and created again, a repository partition whose projection
// follows the old one (its follower halted; its relay runs on) does not
// let the new stream's barrier pass.
func TestBarrierIgnoresOldStreamProgress(t *testing.T) {
	ctx := context.Background()
	js, pub, stream := partitionLog(t)
	p, relay := repoPartition(t, js, pub, stream, 0, 1)
	barrier, err := eventlog.NewBarrier(ctx, js, eventlog.BarrierConfig{Repos: 1, Layout: "1/1", Timeout: 300 * time.Millisecond, Poll: 10 * time.Millisecond})
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
	publishApplied(t, pub, push(8, "old"), p)
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
