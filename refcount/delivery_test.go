package refcount

import (
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// ingested marks an event as delivered by a registry instance's queue.
func ingested(e events.Event, source, host string, at, received time.Time) events.Event {
	e.Source, e.Host, e.Time, e.Received = source, host, at, received
	return e
}

func TestWatermarkPerSource(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(
		ingested(pushB("app", "l1"), "distribution:i1", "reg1:5000", t0, t0.Add(time.Minute)),
		ingested(pushB("app", "l2"), "distribution:i1", "reg1:5000", t0.Add(-time.Second), t0.Add(2*time.Minute)),
		ingested(pushB("app", "l3"), "distribution:i2", "reg2:5000", t0.Add(time.Hour), t0.Add(time.Hour)),
		pushB("app", "l4"), // refgc's own: no watermark
	)
	got, err := f.p.Sources()
	if err != nil {
		t.Fatal(err)
	}
	want := []SourceState{
		{Source: "distribution:i1", Host: "reg1:5000", Watermark: t0, Received: t0.Add(2 * time.Minute)},
		{Source: "distribution:i2", Host: "reg2:5000", Watermark: t0.Add(time.Hour), Received: t0.Add(time.Hour)},
	}
	if len(got) != len(want) {
		t.Fatalf("sources %+v", got)
	}
	for i := range want {
		if !got[i].Watermark.Equal(want[i].Watermark) || !got[i].Received.Equal(want[i].Received) ||
			got[i].Source != want[i].Source || got[i].Host != want[i].Host {
			t.Errorf("source %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if ps, _ := f.p.Pauses(); len(ps) != 1 || ps[0].Reason != PauseNewInstance {
		t.Fatalf("pauses %+v: want one for the second instance", ps)
	}
}

func TestPausesAndReconciles(t *testing.T) {
	reconciled := func(asOf uint64, repos ...string) events.Event {
		return events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: asOf, Repos: repos}}
	}
	refused := func(repo string) events.Event {
		return events.Event{Kind: events.Refused, Refused: &events.RefusedRef{Reason: "too_large", Repo: repo}}
	}
	pauses := func(f *fixture) map[string]string {
		t.Helper()
		ps, err := f.p.Pauses()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, p := range ps {
			out[p.Repo] = p.Reason
		}
		return out
	}
	f := newFixture(t, Options{})
	f.apply(ingested(pushB("app", "l1"), "distribution:i1", "reg:5000", t0, t0))
	f.apply(refused("app"), refused("")) // seqs 2, 3
	if got := pauses(f); got["app"] != "refused_too_large" || got[""] != "refused_too_large" || len(got) != 2 {
		t.Fatalf("pauses %v", got)
	}
	f.apply(reconciled(2, "app")) // covers the app pause only
	if got := pauses(f); len(got) != 1 || got[""] == "" {
		t.Fatalf("after a reconcile of app: %v", got)
	}
	f.apply(reconciled(2)) // began before the registry-wide pause
	if got := pauses(f); len(got) != 1 {
		t.Fatalf("after an older whole reconcile: %v", got)
	}
	f.apply(reconciled(3))
	if got := pauses(f); len(got) != 0 {
		t.Fatalf("after a whole reconcile: %v", got)
	}
	if asOf, _ := f.p.LastReconcile(); asOf != 3 {
		t.Fatalf("last reconcile %d", asOf)
	}
	// A new instance on the same host: the registry restarted and lost its queue.
	f.apply(ingested(pushB("app", "l2"), "distribution:i2", "reg:5000", t0, t0))
	if got := pauses(f); got[""] != PauseRestart {
		t.Fatalf("after a restart: %v", got)
	}
	srcs, _ := f.p.Sources()
	if len(srcs) != 2 || !srcs[0].Gone || srcs[0].Source != "distribution:i1" || srcs[1].Gone {
		t.Fatalf("sources after a restart: %+v, want the old one gone", srcs)
	}
	// An instance on another host: a new replica, or a registry restarted
	// on a new host (as containers are): it may have lost a queue too.
	f.apply(reconciled(f.seq))
	f.apply(ingested(pushB("app", "l3"), "distribution:i3", "reg2:5000", t0, t0))
	if got := pauses(f); got[""] != PauseNewInstance {
		t.Fatalf("after a new instance: %v", got)
	}
	// Its later events, and the first instance's, pause nothing more.
	f.apply(reconciled(f.seq))
	f.apply(ingested(pushB("app", "l4"), "distribution:i3", "reg2:5000", t0, t0),
		ingested(pushB("app", "l5"), "distribution:i2", "reg:5000", t0, t0))
	if got := pauses(f); len(got) != 0 {
		t.Fatalf("known instances paused: %v", got)
	}
	// An instance silent for longer than the expiry is forgotten when a
	// new one appears.
	late := t0.Add(sourceExpiry + time.Hour)
	f.apply(ingested(pushB("app", "l6"), "distribution:i4", "reg3:5000", late, late))
	srcs, _ = f.p.Sources()
	if len(srcs) != 1 || srcs[0].Source != "distribution:i4" {
		t.Fatalf("sources after the expiry: %+v", srcs)
	}
}

func TestTagOrderedByRegistryTime(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushM("app", "m1", "", nil, nil, ""), pushM("app", "m2", "", nil, nil, ""))
	// Replica 2 pushed app:v1 → m2 after replica 1 deleted it; replica 1's
	// delete arrives last.
	set := setT("app", "v1", "m2")
	set.Time = t0.Add(2 * time.Second)
	del := delT("app", "v1")
	del.Time = t0.Add(time.Second)
	f.apply(set, del)
	f.expect(tagN("app", "v1"), 0, true)
	f.expect(manN("app", "m2"), 1, true)
	// An older tag.set does not move the tag back either.
	old := setT("app", "v1", "m1")
	old.Time = t0
	f.apply(old)
	if ni, _ := f.info(tagN("app", "v1")); len(ni.Holds) != 1 || ni.Holds[0] != manN("app", "m2") {
		t.Fatalf("tag holds %v", ni.Holds)
	}
	// A delete, then an older set: the tag stays deleted.
	del2 := delT("app", "v1")
	del2.Time = t0.Add(3 * time.Second)
	f.apply(del2, old)
	if ni, ok := f.info(tagN("app", "v1")); ok && ni.Present {
		t.Fatalf("a late, older tag.set revived a deleted tag: %+v", ni)
	}
	f.check()
}

func TestLateStatementHeals(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour})
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""))
	f.advance(2 * time.Hour)
	if err := f.collect(manN("app", "m")); err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Hour)
	if err := f.collect(layN("app", "l")); err != nil {
		t.Fatal(err)
	}
	if heals, _ := f.p.Heals(); len(heals) != 0 {
		t.Fatalf("heals before any late event: %+v", heals)
	}
	// The tag was set before the unlink; its notification arrives now.
	late := setT("app", "v1", "m")
	late.Time = t0.Add(time.Hour)
	f.apply(late)
	f.expect(manN("app", "m"), 1, true)
	f.expect(layN("app", "l"), 1, true)
	heals, err := f.p.Heals()
	if err != nil {
		t.Fatal(err)
	}
	got := map[events.NodeRef]bool{}
	for _, h := range heals {
		got[h.Node] = true
		if h.UnlinkedAt.IsZero() || !h.ProvedAt.Equal(late.Time) {
			t.Errorf("heal %+v", h)
		}
	}
	if len(got) != 2 || !got[manN("app", "m")] || !got[layN("app", "l")] {
		t.Fatalf("heals %+v", heals)
	}
	if ok, _ := f.p.Tombstoned(manN("app", "m")); ok {
		t.Fatal("the manifest is still in the trash")
	}
	f.apply(events.Event{Kind: events.Healed, Collected: &events.CollectedRef{Node: manN("app", "m")}},
		events.Event{Kind: events.Healed, Collected: &events.CollectedRef{Node: layN("app", "l")}})
	if heals, _ := f.p.Heals(); len(heals) != 0 {
		t.Fatalf("heals after Healed: %+v", heals)
	}
	f.check()
}

func TestExplicitDeleteBuriesTombstone(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour})
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""))
	f.advance(2 * time.Hour)
	if err := f.collect(manN("app", "m")); err != nil {
		t.Fatal(err)
	}
	f.apply(delD("app", "m"))
	f.apply(setT("app", "v1", "m")) // the registry refuses such a tag; a stale event must not revive it
	if heals, _ := f.p.Heals(); len(heals) != 0 {
		t.Fatalf("heals after an explicit delete: %+v", heals)
	}
	if ni, _ := f.info(manN("app", "m")); ni.Present {
		t.Fatal("an explicitly deleted revision came back")
	}
}

// A purge is a soft delete: what the collector unlinked before it stays
// restorable, and a revision it found present goes even under keep.
func TestRepositoryPurgeKeepsTheTrash(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, Untagged: PolicyKeep})
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""), pushM("app", "k", "", []string{"l2"}, nil, ""))
	f.apply(delD("app", "k"))
	f.apply(pushM("app", "k", "", []string{"l2"}, nil, ""))
	f.apply(delRepo("app"))
	if ok, _ := f.p.Tombstoned(manN("app", "m")); ok {
		t.Fatal("tombstone before any collection")
	}
	f.expectCandidates(f.now.Add(2*time.Hour), manN("app", "k"), manN("app", "m"))
	f.advance(2 * time.Hour)
	if err := f.collect(manN("app", "m")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.p.Tombstoned(manN("app", "m")); !ok {
		t.Fatal("a purged revision is not restorable")
	}
	f.apply(pushM("app", "k", "", []string{"l2"}, nil, "")) // pushed again: the repository's again
	f.expectCandidates(f.now.Add(4*time.Hour), layN("app", "l"))
}

func TestWholeReconcilePrunesOldTagStamps(t *testing.T) {
	f := newFixture(t, Options{Retention: time.Hour})
	f.apply(pushM("app", "m", "", nil, nil, ""), setT("app", "gone", "m"), setT("app", "kept", "m"), delT("app", "gone"))
	f.advance(2 * time.Hour)
	f.apply(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: f.seq}})
	err := f.p.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStamps)
		if b.Get(tagKey("app", "gone")) != nil || b.Get(tagKey("app", "kept")) == nil {
			t.Errorf("stamps: gone %v, kept %v", b.Get(tagKey("app", "gone")) != nil, b.Get(tagKey("app", "kept")) != nil)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWhatPausesNothing(t *testing.T) {
	f := newFixture(t, Options{})
	// A request that failed authentication proves nothing: anyone may send one.
	f.apply(events.Event{Kind: events.Refused, Refused: &events.RefusedRef{Reason: events.RefusedUnauthorized}})
	// Two instances that share an address alternate: only each one's first
	// event is judged.
	f.apply(ingested(pushB("app", "l1"), "distribution:i1", "reg:5000", t0, t0))
	f.apply(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: f.seq + 1}})
	f.apply(ingested(pushB("app", "l2"), "distribution:i2", "reg:5000", t0, t0))
	f.apply(events.Event{Kind: events.Reconciled, Reconcile: &events.Reconciliation{AsOf: f.seq + 1}})
	f.apply(ingested(pushB("app", "l3"), "distribution:i1", "reg:5000", t0, t0),
		ingested(pushB("app", "l4"), "distribution:i2", "reg:5000", t0, t0))
	if ps, _ := f.p.Pauses(); len(ps) != 0 {
		t.Fatalf("pauses %+v", ps)
	}
}
