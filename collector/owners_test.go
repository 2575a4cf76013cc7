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

// ownedCollector opens a projection (grace and retention of an hour, on
// a clock at t0 that the returned function moves), applies evs, and
// returns a collector without storage whose source "quay" goes to route.
func ownedCollector(t *testing.T, t0 time.Time, opts refcount.Options, route collector.OwnerRoute,
	evs []events.Event) (*collector.Collector, *refcount.Projection, func(time.Duration)) {
	t.Helper()
	now := t0
	clock := func() time.Time { return now }
	opts.Grace, opts.Retention, opts.NoSync, opts.Now = time.Hour, time.Hour, true, clock
	p, err := refcount.Open(filepath.Join(t.TempDir(), "refs.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	log := &collector.DirectLog{P: p}
	if err := log.Publish(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	c, err := collector.New(collector.Config{Projection: p, Log: log, Now: clock,
		Owners: map[string]collector.OwnerRoute{"quay": route}})
	if err != nil {
		t.Fatal(err)
	}
	return c, p, func(d time.Duration) { now = now.Add(d) }
}

// ownedPass runs one pass, which must not fail.
func ownedPass(t *testing.T, c *collector.Collector) collector.Report {
	t.Helper()
	rep, err := c.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestOwnerRouting(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	label := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "lbl1"}
	m := digest.FromString("m")
	setup := func(t *testing.T, own *fakeOwner, kinds ...events.NodeKind) (*collector.Collector, *refcount.Projection, func(time.Duration)) {
		t.Helper()
		return ownedCollector(t, t0, refcount.Options{}, collector.OwnerRoute{Owner: own, Kinds: kinds}, []events.Event{
			{ID: "1", Time: t0, Source: "quay", Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "app", Digest: m,
				MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 2}},
			{ID: "2", Time: t0, Source: "quay", Kind: events.LabelAttached, Label: &events.Label{Repo: "app", Digest: m, ID: "lbl1"}},
			{ID: "3", Time: t0, Source: "quay", Kind: events.LabelDetached, Label: &events.Label{Repo: "app", Digest: m, ID: "lbl1"}},
			{ID: "4", Time: t0, Source: "registry", Kind: events.LabelAttached, Label: &events.Label{Repo: "other", Digest: m, ID: "x"}},
		})
	}
	present := func(t *testing.T, p *refcount.Projection, n events.NodeRef) bool {
		t.Helper()
		ni, ok, err := p.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		return ok && ni.Present
	}

	t.Run("the owner deletes what its source stated; another source's label is bookkeeping", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		c, p, advance := setup(t, own)
		advance(3 * time.Hour)
		rep := ownedPass(t, c)
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
		if rep := ownedPass(t, c); rep.Errors == 0 || !present(t, p, label) {
			t.Fatalf("report %+v", rep)
		}
		if ins, _ := p.Intents(); len(ins) == 0 {
			t.Fatal("no intent left")
		}
		own.answer = answerAll(owner.StatusAbsent)
		ownedPass(t, c)
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
		ownedPass(t, c)
		ni, ok, err := p.Get(label)
		if err != nil || !ok || !ni.Present || ni.Count != 1 || ni.Origin != "quay" {
			t.Fatalf("label after the refusal: %+v %v %v", ni, ok, err)
		}
		if !present(t, p, events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}) {
			t.Fatal("an owner's statement removed a manifest")
		}
		ownedPass(t, c) // the recovery sees the label held and drops the intent
		if ins, _ := p.Intents(); len(ins) != 0 {
			t.Fatalf("intents left: %v", ins)
		}
	})
	t.Run("a kind the owner does not take, without storage, stays", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		c, p, advance := setup(t, own, events.NodeLabel)
		advance(3 * time.Hour)
		rep := ownedPass(t, c)
		// The storage check cannot read it (storage_error), or its removal fails.
		if rep.Errors+rep.Refused == 0 || !present(t, p, events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}) {
			t.Fatalf("the manifest went without storage or owner: %+v", rep)
		}
	})
}

// TestOwnedTagLifetimes: a tag whose source has an owner follows the
// owner's lifetime (its expiry is acted on without ExpireTags, stamped at
// the expiry), and when its time machine window ends the owner is asked
// to delete the row, the tag being forgotten only on its answer.
func TestOwnedTagLifetimes(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	const window = 2 * time.Hour
	m := digest.FromString("m")
	v1 := events.NodeRef{Kind: events.NodeTag, Repo: "app", Name: "v1"}
	setup := func(t *testing.T, own collector.Owner, tagEvent events.Event) (*collector.Collector, *refcount.Projection, func(time.Duration)) {
		t.Helper()
		return ownedCollector(t, t0, refcount.Options{TimeMachine: window}, collector.OwnerRoute{Owner: own}, []events.Event{
			{ID: "1", Time: t0, Source: "quay", Kind: events.ManifestPushed, Manifest: &events.Manifest{Repo: "app", Digest: m,
				MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 2}},
			tagEvent,
		})
	}
	deleteV1 := func(p *refcount.Projection, at time.Time) {
		t.Helper()
		log := &collector.DirectLog{P: p}
		if err := log.Publish(context.Background(), []events.Event{{ID: "del", Time: at, Source: "quay", Kind: events.TagDeleted,
			Tag: &events.Tag{Repo: "app", Name: "v1"}}}); err != nil {
			t.Fatal(err)
		}
	}
	life := func(t *testing.T, p *refcount.Projection) (refcount.TagLife, bool) {
		t.Helper()
		l, ok, err := p.TagLifeOf(v1)
		if err != nil {
			t.Fatal(err)
		}
		return l, ok
	}
	tagAsked := func(own *fakeOwner) []string {
		own.mu.Lock()
		defer own.mu.Unlock()
		var ids []string
		for _, b := range own.asked {
			for _, it := range b {
				if it.Node == v1 {
					ids = append(ids, it.Intent)
				}
			}
		}
		return ids
	}
	set := events.Event{ID: "2", Time: t0, Source: "quay", Kind: events.TagSet, Tag: &events.Tag{Repo: "app", Name: "v1", Digest: m}}

	t.Run("the window's end asks the owner; a failure keeps the tag, the retry is the same intent", func(t *testing.T) {
		own := &fakeOwner{answer: func([]owner.Item) ([]owner.Result, error) { return nil, errors.New("timeout") }}
		c, p, advance := setup(t, own, set)
		deleteV1(p, t0.Add(time.Minute))
		advance(time.Hour)
		ownedPass(t, c)
		if len(tagAsked(own)) != 0 {
			t.Fatal("the owner was asked inside the window")
		}
		if l, ok := life(t, p); !ok || !l.InTimeMachine() || !l.Until.Equal(t0.Add(time.Minute+window)) {
			t.Fatalf("not in the time machine: %+v %v", l, ok)
		}
		advance(2 * time.Hour)
		if rep := ownedPass(t, c); rep.Errors == 0 {
			t.Fatalf("report %+v", rep)
		}
		if l, ok := life(t, p); !ok || !l.InTimeMachine() {
			t.Fatal("a tag the owner did not delete was forgotten")
		}
		own.answer = answerAll(owner.StatusDeleted)
		advance(time.Minute)
		rep := ownedPass(t, c)
		if _, ok := life(t, p); ok || rep.Released != 1 {
			t.Fatalf("the tag stayed after the owner deleted it: %+v", rep)
		}
		ids := tagAsked(own)
		if len(ids) != 2 || ids[0] != ids[1] {
			t.Fatalf("intents of the tag: %v", ids)
		}
		// The manifest is released at the window's end and goes after the grace.
		advance(2 * time.Hour)
		ownedPass(t, c)
		if ni, ok, _ := p.Get(events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}); ok && ni.Present {
			t.Fatal("the manifest stayed after its tag's window")
		}
	})
	t.Run("in use: the owner's tag.set brings the tag back", func(t *testing.T) {
		own := &fakeOwner{}
		own.answer = func(items []owner.Item) ([]owner.Result, error) {
			var out []owner.Result
			for _, it := range items {
				r := owner.Result{Intent: it.Intent, Status: owner.StatusDeleted}
				if it.Node == v1 {
					r = owner.Result{Intent: it.Intent, Status: owner.StatusInUse, Reason: "tag_current", Statements: []events.Event{
						{Kind: events.TagSet, Time: t0.Add(3 * time.Hour), Tag: &events.Tag{Repo: "app", Name: "v1", Digest: m}}}}
				}
				out = append(out, r)
			}
			return out, nil
		}
		c, p, advance := setup(t, own, set)
		deleteV1(p, t0.Add(time.Minute))
		advance(3 * time.Hour)
		ownedPass(t, c)
		ni, ok, err := p.Get(v1)
		if err != nil || !ok || !ni.Present {
			t.Fatalf("the tag is not back: %+v %v %v", ni, ok, err)
		}
		if ni, ok, _ := p.Get(events.NodeRef{Kind: events.NodeManifest, Repo: "app", Digest: m}); !ok || !ni.Present {
			t.Fatal("the manifest of a current tag went")
		}
	})
	t.Run("an owned tag expires without ExpireTags, into the window from its expiry", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		expiring := set
		expiring.Tag = &events.Tag{Repo: "app", Name: "v1", Digest: m, Expires: t0.Add(30 * time.Minute)}
		c, p, advance := setup(t, own, expiring)
		advance(time.Hour)
		rep := ownedPass(t, c)
		l, ok := life(t, p)
		if !ok || !l.InTimeMachine() || !l.Removed.Equal(t0.Add(30*time.Minute)) || l.Reason != refcount.TagExpired {
			t.Fatalf("after the expiry: %+v %v (report %+v)", l, ok, rep)
		}
		if len(tagAsked(own)) != 0 {
			t.Fatal("an expiry asked the owner: the owner ended it itself")
		}
		advance(window)
		ownedPass(t, c)
		if _, ok := life(t, p); ok || len(tagAsked(own)) != 1 {
			t.Fatalf("the window's end: asked %v", tagAsked(own))
		}
	})
	t.Run("restore: the owner restores and its tag.set is published; an owner without restores says so", func(t *testing.T) {
		own := &fakeOwner{answer: answerAll(owner.StatusDeleted)}
		c, p, advance := setup(t, own, set)
		deleteV1(p, t0.Add(time.Minute))
		advance(time.Hour)
		if _, err := c.RestoreTag(context.Background(), "app", "v1"); !errors.Is(err, collector.ErrOwnerRestores) {
			t.Fatalf("an owner without restores: %v", err)
		}
		rest := &fakeRestorer{fakeOwner: own, answer: func(it owner.Item) owner.Result {
			return owner.Result{Intent: it.Intent, Status: owner.StatusRestored, Statements: []events.Event{
				{Kind: events.TagSet, Time: t0.Add(time.Hour), Tag: &events.Tag{Repo: "app", Name: "v1", Digest: m}}}}
		}}
		c, p, advance = setup(t, rest, set)
		deleteV1(p, t0.Add(time.Minute))
		advance(time.Hour)
		got, err := c.RestoreTag(context.Background(), "app", "v1")
		if err != nil || got.Manifest.Digest != m {
			t.Fatalf("restore: %+v %v", got, err)
		}
		if ni, ok, _ := p.Get(v1); !ok || !ni.Present || ni.Origin != "quay" {
			t.Fatalf("the tag is not back: %+v", ni)
		}
		rest.answer = func(it owner.Item) owner.Result { return owner.Result{Intent: it.Intent, Status: owner.StatusAbsent} }
		if _, err := c.RestoreTag(context.Background(), "app", "v1"); !errors.Is(err, collector.ErrNotInTimeMachine) {
			t.Fatalf("nothing to restore: %v", err)
		}
	})
}

// fakeRestorer is a fakeOwner that restores tags too.
type fakeRestorer struct {
	*fakeOwner
	answer func(owner.Item) owner.Result
}

func (f *fakeRestorer) Restore(_ context.Context, items []owner.Item) ([]owner.Result, error) {
	out := make([]owner.Result, len(items))
	for i, it := range items {
		out[i] = f.answer(it)
	}
	return out, nil
}
