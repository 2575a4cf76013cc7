package refcount

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

func setTExp(repo, tag, d string, expires time.Time) events.Event {
	e := setT(repo, tag, d)
	e.Tag.Expires = expires
	return e
}

func (f *fixture) due(at time.Time) []TagDue {
	f.t.Helper()
	due, err := f.p.DueTags(at, 100)
	if err != nil {
		f.t.Fatal(err)
	}
	return due
}

// TestTagExpiryAndTimeMachine follows a tag through its lifetime: it
// expires, stays in the time machine holding its manifest, and is
// forgotten when its repository's window ends.
func TestTagExpiryAndTimeMachine(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, TimeMachine: 2 * time.Hour,
		TimeMachineRepos: map[string]time.Duration{"short/": time.Minute, "short/long": 24 * time.Hour}})
	exp := t0.Add(30 * time.Minute)
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""), setTExp("app", "v1", "m", exp))
	if d := f.due(exp.Add(-time.Second)); len(d) != 0 {
		t.Fatalf("due before the expiry: %+v", d)
	}
	d := f.due(exp)
	if len(d) != 1 || d[0].Release || d[0].Purge || d[0].Digest != dg("m") || !d[0].At.Equal(exp) {
		t.Fatalf("due at the expiry: %+v", d)
	}
	f.now = exp
	f.apply(collectedTag(tagN("app", "v1"), f.seq))
	// Out of the registry, into the time machine: it still holds m.
	f.expect(tagN("app", "v1"), 0, false)
	f.expect(manN("app", "m"), 1, true)
	f.check()
	tm, err := f.p.TimeMachine("app")
	if err != nil || len(tm) != 1 || tm[0].Reason != TagExpired || !tm[0].Until.Equal(exp.Add(2*time.Hour)) {
		t.Fatalf("time machine: %+v %v", tm, err)
	}
	why, err := f.p.Why(layN("app", "l"))
	if err != nil || why.TimeMachine == nil || why.Chain[0].Node != tagN("app", "v1") {
		t.Fatalf("why: %+v %v", why, err)
	}
	im, err := f.p.Impact(tagN("app", "v1"), f.now)
	if err != nil || im.RecoverableUntil == nil || !im.RecoverableUntil.Equal(tm[0].Until) || im.Nodes < 4 {
		t.Fatalf("impact of a tag in the time machine: %+v %v", im, err)
	}
	// A stale Collected (the collector looked before a change) does nothing.
	f.apply(setT("app", "v1", "m")) // restored
	f.expect(tagN("app", "v1"), 0, true)
	if tm, _ := f.p.TimeMachine(""); len(tm) != 0 {
		t.Fatalf("a restored tag stays in the time machine: %+v", tm)
	}
	f.apply(collectedTag(tagN("app", "v1"), f.seq-1))
	f.expect(tagN("app", "v1"), 0, true)

	// Deleted: into the time machine; the window's end releases m.
	f.apply(delT("app", "v1"))
	f.expect(manN("app", "m"), 1, true)
	until := f.now.Add(2 * time.Hour)
	d = f.due(until)
	if len(d) != 1 || !d[0].Release || !d[0].At.Equal(until) {
		t.Fatalf("due at the window's end: %+v", d)
	}
	f.apply(events.Event{Kind: events.Collected, Time: until,
		Collected: &events.CollectedRef{Node: tagN("app", "v1"), AsOf: f.seq}})
	f.expect(tagN("app", "v1"), -1, false)
	f.expect(manN("app", "m"), 0, true)
	f.expectCandidates(until.Add(time.Hour), manN("app", "m"))
	f.check()

	// Windows per repository and namespace.
	for repo, want := range map[string]time.Duration{"app": 2 * time.Hour, "short/x": time.Minute,
		"short/long": 24 * time.Hour, "shorter": 2 * time.Hour} {
		if got := f.p.TimeMachineWindow(repo); got != want {
			t.Errorf("window of %s: %s, want %s", repo, got, want)
		}
	}
}

// TestNoTimeMachine: without a window a deleted tag releases its manifest
// at once, and an expired one goes with its expiry.
func TestNoTimeMachine(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour})
	f.apply(pushM("app", "m", "", nil, nil, ""), setTExp("app", "v1", "m", t0.Add(time.Minute)), setT("app", "v2", "m"))
	f.apply(delT("app", "v2"))
	f.expect(tagN("app", "v2"), -1, false)
	f.now = t0.Add(time.Minute)
	f.apply(collectedTag(tagN("app", "v1"), f.seq))
	f.expect(tagN("app", "v1"), -1, false)
	f.expect(manN("app", "m"), 0, true)
	if d := f.due(t0.Add(time.Hour)); len(d) != 0 {
		t.Fatalf("due: %+v", d)
	}
	f.check()
}

// TestOpenMigratesSchema2: a file of schema version 2 opens as version 3
// with empty lifetime buckets.
func TestOpenMigratesSchema2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	err = p.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTags, bucketLifetimes, bucketPurges} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(2))
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	p, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.db.View(func(tx *bolt.Tx) error {
		if v := readU64(tx.Bucket(bucketMeta).Get(keySchema)); v != SchemaVersion {
			t.Errorf("schema %d after migration", v)
		}
		if tx.Bucket(bucketTags) == nil || tx.Bucket(bucketPurges) == nil {
			t.Error("buckets missing after migration")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExpiredTagHealsOnALateStatement: a tag the collector removed, that a
// late notification states set, is healed (re-linked) by the collector; an
// explicit delete buries the tombstone instead.
func TestExpiredTagHealsOnALateStatement(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, TimeMachine: time.Hour})
	f.apply(pushM("app", "m", "", nil, nil, ""), setTExp("app", "v1", "m", t0.Add(time.Minute)))
	f.now = t0.Add(time.Minute)
	f.apply(collectedTag(tagN("app", "v1"), f.seq))
	if ok, _ := f.p.Tombstoned(tagN("app", "v1")); !ok {
		t.Fatal("no tombstone for the tag the collector removed")
	}
	late := setT("app", "v1", "m")
	late.Time, late.Received = t0.Add(30*time.Second), f.now
	f.apply(late)
	heals, err := f.p.Heals()
	if err != nil || len(heals) != 1 || heals[0].Node != tagN("app", "v1") {
		t.Fatalf("heals: %+v %v", heals, err)
	}
	f.expect(tagN("app", "v1"), 0, true)
	f.apply(delT("app", "v1"))
	if heals, _ := f.p.Heals(); len(heals) != 0 {
		t.Fatalf("heals after an explicit delete: %+v", heals)
	}
	f.check()
}

// TestLateTagSetAfterPurge: a tag.set older than its repository's purge,
// delivered after it, is ended by the purge like the tags it found; one
// newer than the purge is the repository's again.
func TestLateTagSetAfterPurge(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, TimeMachine: 2 * time.Hour})
	f.apply(pushM("app", "m", "", nil, nil, ""))
	purge := delRepo("app")
	purge.Time = t0.Add(time.Minute)
	f.apply(purge)
	late := setT("app", "v1", "m")
	late.Time = t0.Add(30 * time.Second)
	f.apply(late)
	d := f.due(t0.Add(2 * time.Minute))
	if len(d) != 1 || !d[0].Purge || !d[0].At.Equal(purge.Time) {
		t.Fatalf("a late tag set before the purge is not ended by it: %+v", d)
	}
	again := setT("app", "v1", "m")
	again.Time = t0.Add(2 * time.Minute)
	f.apply(again)
	if d := f.due(t0.Add(time.Hour)); len(d) != 0 {
		t.Fatalf("a tag set after the purge is due: %+v", d)
	}
}

// TestDeleteBeforeSet: a tag's deletion delivered before its tag.set puts
// the tag in the time machine, and the late tag.set names the manifest
// it holds there until the window ends.
func TestDeleteBeforeSet(t *testing.T) {
	f := newFixture(t, Options{Grace: time.Hour, TimeMachine: 2 * time.Hour})
	f.apply(pushM("app", "m", "", nil, nil, ""))
	del := delT("app", "v1")
	del.Time = t0.Add(time.Minute)
	f.apply(del)
	tm, err := f.p.TimeMachine("app")
	if err != nil || len(tm) != 1 || tm[0].Digest != "" || !tm[0].Until.Equal(del.Time.Add(2*time.Hour)) {
		t.Fatalf("an unseen tag's deletion: %+v %v", tm, err)
	}
	late := setT("app", "v1", "m")
	late.Time = t0
	f.apply(late)
	f.expect(tagN("app", "v1"), 0, false)
	f.expect(manN("app", "m"), 1, true)
	if l, ok, _ := f.p.TagLifeOf(tagN("app", "v1")); !ok || l.Digest != dg("m") {
		t.Fatalf("the late tag.set did not name the held manifest: %+v", l)
	}
	f.check()
	d := f.due(del.Time.Add(2 * time.Hour))
	if len(d) != 1 || !d[0].Release {
		t.Fatalf("due at the window's end: %+v", d)
	}
}
