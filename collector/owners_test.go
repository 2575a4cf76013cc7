package collector_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/refgc/refgc/collector"
	"github.com/refgc/refgc/collector/owner"
	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/refcount"
)

// fakeOwner answers with answer, and records what it was asked.
type fakeOwner struct {
	mu     sync.Mutex
	asked  [][]owner.Item
	answer func(items []owner.Item) ([]owner.Result, error)
}

func (f *fakeOwner) Delete(_ context.Context, items []owner.Item) ([]owner.Result, error) {
	f.mu.Lock()
	f.asked = append(f.asked, items)
	f.mu.Unlock()
	return f.answer(items)
}

func answerAll(status owner.Status) func([]owner.Item) ([]owner.Result, error) {
	return func(items []owner.Item) ([]owner.Result, error) {
		out := make([]owner.Result, len(items))
		for i, it := range items {
			out[i] = owner.Result{Intent: it.Intent, Status: status}
		}
		return out, nil
	}
}

func TestOwnerRouting(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	label := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "lbl1"}
	m := digest.FromString("m")
	setup := func(t *testing.T, own *fakeOwner, kinds ...events.NodeKind) (*collector.Collector, *refcount.Projection, func(time.Duration)) {
		t.Helper()
		now := t0
		clock := func() time.Time { return now }
		p, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"), refcount.Options{Grace: time.Hour, Retention: time.Hour, NoSync: true, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		log := &collector.DirectLog{P: p}
		evs := []events.Event{
			{ID: "1", Time: now, Source: "quay", Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "app", Digest: m,
				MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 2}},
			{ID: "2", Time: now, Source: "quay", Kind: events.LabelAttached, Label: &events.Label{Repo: "app", Digest: m, ID: "lbl1"}},
			{ID: "3", Time: now, Source: "quay", Kind: events.LabelDetached, Label: &events.Label{Repo: "app", Digest: m, ID: "lbl1"}},
			{ID: "4", Time: now, Source: "registry", Kind: events.LabelAttached, Label: &events.Label{Repo: "other", Digest: m, ID: "x"}},
		}
		if err := log.Publish(context.Background(), evs); err != nil {
			t.Fatal(err)
		}
		c, err := collector.New(collector.Config{Projection: p, Log: log, Now: clock,
			Owners: map[string]collector.OwnerRoute{"quay": {Owner: own, Kinds: kinds}}})
		if err != nil {
			t.Fatal(err)
		}
		return c, p, func(d time.Duration) { now = now.Add(d) }
	}
	present := func(t *testing.T, p *refcount.Projection, n events.NodeRef) bool {
		t.Helper()
		ni, ok, err := p.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		return ok && ni.Present
	}
	pass := func(t *testing.T, c *collector.Collector) collector.Report {
		t.Helper()
		rep, err := c.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	t.Run("the owner deletes what its source stated; another source's label is bookkeeping", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		c, p, advance := setup(t, own)
		advance(3 * time.Hour)
		rep := pass(t, c)
		if present(t, p, label) || present(t, p, events.NodeRef{Kind: events.NodeLabel, Repo: "other", Name: "x"}) {
			t.Fatalf("labels stayed: %+v", rep)
		}
		for _, batch := range own.asked {
			for _, it := range batch {
				if it.Node.Repo == "other" {
					t.Fatal("the owner was asked about another source's label")
				}
			}
		}
		if len(own.asked) == 0 || len(own.asked[0]) < 2 {
			t.Fatalf("one request per round with its batch: %v", own.asked)
		}
	})
	t.Run("a failed request commits nothing and is retried", func(t *testing.T) {
		own := &fakeOwner{answer: func([]owner.Item) ([]owner.Result, error) { return nil, errors.New("timeout") }}
		c, p, advance := setup(t, own)
		advance(3 * time.Hour)
		if rep := pass(t, c); rep.Errors == 0 || !present(t, p, label) {
			t.Fatalf("report %+v", rep)
		}
		if ins, _ := p.Intents(); len(ins) == 0 {
			t.Fatal("no intent left")
		}
		own.answer = answerAll(owner.StatusAbsent)
		pass(t, c)
		if present(t, p, label) {
			t.Fatal("the retry did not commit")
		}
		if ins, _ := p.Intents(); len(ins) != 0 {
			t.Fatalf("intents left: %v", ins)
		}
	})
	t.Run("in use: the statements hold it again, a removal among them is ignored", func(t *testing.T) {
		own := &fakeOwner{}
		own.answer = func(items []owner.Item) ([]owner.Result, error) {
			var out []owner.Result
			for _, it := range items {
				if it.Node != label {
					continue // unanswered: stays
				}
				out = append(out, owner.Result{Intent: it.Intent, Status: owner.StatusInUse, Statements: []events.Event{
					{Kind: events.Collected, Collected: &events.CollectedRef{Node: events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}}},
					{Kind: events.LabelAttached, Time: t0.Add(3 * time.Hour), Label: &events.Label{Repo: "app", Digest: m, ID: "lbl1"}},
				}})
			}
			return out, nil
		}
		c, p, advance := setup(t, own, events.NodeLabel)
		advance(3 * time.Hour)
		pass(t, c)
		ni, ok, err := p.Get(label)
		if err != nil || !ok || !ni.Present || ni.Count != 1 || ni.Origin != "quay" {
			t.Fatalf("label after the refusal: %+v %v %v", ni, ok, err)
		}
		if !present(t, p, events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}) {
			t.Fatal("an owner's statement removed a manifest")
		}
		pass(t, c) // the recovery sees the label held and drops the intent
		if ins, _ := p.Intents(); len(ins) != 0 {
			t.Fatalf("intents left: %v", ins)
		}
	})
	t.Run("a kind the owner does not take, without storage, stays", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		c, p, advance := setup(t, own, events.NodeLabel)
		advance(3 * time.Hour)
		rep := pass(t, c)
		// The storage check cannot read it (storage_error), or its removal fails.
		if rep.Errors+rep.Refused == 0 || !present(t, p, events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}) {
			t.Fatalf("the manifest went without storage or owner: %+v", rep)
		}
	})
}
