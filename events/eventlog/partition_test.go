package eventlog_test

import (
	"context"
	"errors"
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

// A digest partition's barrier passes only once every repository
// partition has published, through the log's last sequence, the
// statements its projection made; and the relay publishes exactly the
// outbox.
func TestRelayAndBarrier(t *testing.T) {
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
	var repos [2]*refcount.Projection
	var relays [2]*eventlog.Relay
	for i := range repos {
		part := refcount.Partition{Role: refcount.RoleRepos, Index: i, Repos: 2, Digests: 1}
		p, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"), refcount.Options{Partition: part, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		if err := p.BindStream(eventlog.StreamID(info)); err != nil {
			t.Fatal(err)
		}
		repos[i] = p
		if relays[i], err = eventlog.NewRelay(ctx, js, eventlog.RelayConfig{Publisher: pub, Outbox: p, Partition: part.Name(), Layout: part.Layout()}); err != nil {
			t.Fatal(err)
		}
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
	res, err := pub.PublishBatch(ctx, evs)
	if err != nil {
		t.Fatal(err)
	}
	var recs []events.Record
	for i, e := range evs {
		recs = append(recs, events.Record{Seq: res[i].Seq, Event: e})
	}
	for _, p := range repos {
		if _, err := p.Apply(recs); err != nil {
			t.Fatal(err)
		}
	}
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
	f, err := eventlog.NewFollower(js, eventlog.FollowerConfig{Cursor: func() (uint64, error) { return recs[1].Seq, nil },
		Apply: func(b []events.Record) error {
			var held int
			for _, r := range b {
				if r.Event.Kind == events.BlobHeld && r.Event.Held.Held {
					held++
				}
			}
			if held != 2 || len(b) != 2 {
				return fmt.Errorf("the log after the pushes holds %d records, %d statements of holding", len(b), held)
			}
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
