package collector_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/jstest"
	"github.com/refgc/refgc/refcount"
)

// fanLog publishes to every projection, as a shared event log does; it
// catches up on its own. failCollected makes it lose the collector's
// removals: the leader crashed between its storage operation and its
// commit.
type fanLog struct {
	own           *collector.DirectLog
	others        []*collector.DirectLog
	failCollected bool
}

func (f *fanLog) Publish(ctx context.Context, evs []events.Event) error {
	if f.failCollected {
		for _, e := range evs {
			if e.Kind == events.Collected {
				return errors.New("leader crashed")
			}
		}
	}
	for _, l := range append([]*collector.DirectLog{f.own}, f.others...) {
		if err := l.Publish(ctx, evs); err != nil {
			return err
		}
	}
	return nil
}

func (f *fanLog) CatchUp(ctx context.Context) (uint64, error) { return f.own.CatchUp(ctx) }

// Under --ha the intents live in JetStream: a leader that dies between
// unlinking a revision and committing it leaves an intent that the next
// leader, whose own projection never saw it, finishes or undoes.
func TestNewLeaderUndoesIntentsOfTheLast(t *testing.T) {
	ctx := context.Background()
	js, _ := jstest.Start(t)
	kv, err := collector.NewKVIntents(ctx, js, "", 1)
	if err != nil {
		t.Fatal(err)
	}

	w := newWorld(t, 1)
	standby, err := refcount.Open(filepath.Join(t.TempDir(), "standby.db"),
		refcount.Options{Untagged: refcount.PolicyDelete, Grace: testGrace, Retention: testRetention, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Close() })
	w.mirror = &collector.DirectLog{P: standby}

	r := rand.New(rand.NewPCG(1, 2))
	cfg := w.pushBlob(r, "app", mtConf, 16)
	layer := w.pushBlob(r, "app", mtLayer, 64)
	m := w.putManifest("app", "v1", []events.Descriptor{cfg, layer}, nil, nil)
	w.must(w.store.DeleteTag(ctx, "app", "v1"))
	w.emit(events.Event{Kind: events.TagDeleted, Tag: &events.Tag{Repo: "app", Name: "v1"}})
	w.clock = w.clock.Add(2 * testGrace)

	now := func() time.Time { return w.clock }
	leader, err := collector.New(collector.Config{Projection: w.proj, Storage: w.store, Now: now, Intents: kv,
		Log: &fanLog{own: w.log, others: []*collector.DirectLog{w.mirror}, failCollected: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Pass(ctx); err == nil {
		t.Fatal("the crashing leader's pass succeeded")
	}
	if w.hasRevision("app", m.Digest) {
		t.Fatal("the revision was not unlinked before the crash")
	}
	// The tag comes back while nobody leads: storage and both projections
	// see it, the revision link is still gone.
	w.linkTag("app", "v1", m.Digest)
	w.emit(events.Event{Kind: events.TagSet, Tag: &events.Tag{Repo: "app", Name: "v1", Digest: m.Digest}})

	next, err := collector.New(collector.Config{Projection: standby, Storage: w.store, Now: now, Intents: kv,
		Log: &fanLog{own: w.mirror, others: []*collector.DirectLog{w.log}}})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := next.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Restored != 1 || !w.hasRevision("app", m.Digest) {
		t.Fatalf("report %+v, revision linked %v: want the old leader's unlink undone", rep, w.hasRevision("app", m.Digest))
	}
	if left, err := kv.ListIntents(ctx); err != nil || len(left) != 0 {
		t.Fatalf("intents left in the bucket: %+v %v", left, err)
	}
}
