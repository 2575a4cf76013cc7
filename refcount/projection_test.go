package refcount

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

const hour = time.Hour

func TestEventKinds(t *testing.T) {
	later := t0.Add(48 * hour)
	tests := []struct {
		name string
		opts Options
		run  func(f *fixture)
	}{
		{"tag moved releases the old manifest", Options{}, func(f *fixture) {
			f.apply(pushB("app", "c1"), pushB("app", "l1"), pushM("app", "m1", "v1", []string{"c1", "l1"}, nil, ""))
			f.apply(pushB("app", "l2"), pushM("app", "m2", "v1", []string{"c1", "l2"}, nil, ""))
			f.expect(manN("app", "m1"), 0, true)
			f.expect(manN("app", "m2"), 1, true)
			f.expect(layN("app", "c1"), 2, true)
			f.expect(layN("app", "l1"), 1, true)
			f.expectCandidates(f.now) // leases still run
			f.expectCandidates(later, manN("app", "m1"))
		}},
		{"re-push of the same manifest changes nothing", Options{}, func(f *fixture) {
			ev := pushM("app", "m1", "v1", []string{"c1", "l1"}, nil, "")
			f.apply(ev)
			f.apply(ev, ev)
			f.apply(setT("app", "v1", "m1"))
			f.expect(manN("app", "m1"), 1, true)
			f.expect(layN("app", "l1"), 1, true)
			f.expect(blobN("l1"), 1, true)
			f.expect(blobN("m1"), 1, true)
		}},
		{"index pushed before its children", Options{}, func(f *fixture) {
			f.apply(pushM("app", "idx", "latest", nil, []string{"a", "b"}, ""))
			f.expect(manN("app", "a"), 1, false)
			f.apply(pushM("app", "a", "", []string{"la"}, nil, ""), pushM("app", "b", "", []string{"lb"}, nil, ""))
			f.expect(manN("app", "a"), 1, true)
			f.expect(layN("app", "la"), 1, true)
			f.expectCandidates(later)
		}},
		{"children pushed by digest are leased until their index", Options{}, func(f *fixture) {
			f.apply(pushM("app", "a", "", []string{"la"}, nil, ""))
			f.expectCandidates(f.now.Add(30 * time.Minute))
			f.advance(30 * time.Minute)
			f.apply(pushM("app", "idx", "latest", nil, []string{"a"}, ""))
			f.expect(manN("app", "a"), 1, true)
			f.expectCandidates(later)
		}},
		{"cross-repository mount", Options{}, func(f *fixture) {
			f.apply(pushB("a", "l"), pushM("a", "m", "v1", []string{"l"}, nil, ""))
			f.apply(mountB("b", "l", "a"), pushM("b", "m", "v1", []string{"l"}, nil, ""))
			f.expect(blobN("l"), 2, true)
			f.apply(delT("a", "v1"))
			f.advance(2 * hour)
			if err := f.collect(manN("a", "m")); err != nil {
				f.t.Fatal(err)
			}
			f.advance(2 * hour)
			if err := f.collect(layN("a", "l")); err != nil {
				f.t.Fatal(err)
			}
			f.expect(layN("a", "l"), -1, false)
			f.expect(blobN("l"), 1, true)
			f.expect(manN("b", "m"), 1, true)
		}},
		{"digest delete of a manifest releases what it held", Options{}, func(f *fixture) {
			f.apply(pushM("app", "m", "", []string{"c", "l"}, nil, ""))
			f.apply(delD("app", "m"))
			f.expect(manN("app", "m"), -1, false)
			f.expect(layN("app", "l"), 0, true)
			f.expect(blobN("m"), 0, true)
			f.expectCandidates(later, layN("app", "c"), layN("app", "l"), blobN("m"))
		}},
		{"digest delete of a blob unlinks the layer", Options{}, func(f *fixture) {
			f.apply(pushB("app", "l"))
			f.apply(delD("app", "l"))
			f.expect(layN("app", "l"), -1, false)
			f.expect(blobN("l"), 0, true)
			f.expectCandidates(later, blobN("l"))
		}},
		{"digest delete of a child still in a live index keeps its layers", Options{}, func(f *fixture) {
			f.apply(pushM("app", "a", "", []string{"la"}, nil, ""), pushM("app", "idx", "v", nil, []string{"a"}, ""))
			f.apply(delD("app", "a"))
			f.expect(manN("app", "a"), 1, false)
			f.expect(layN("app", "la"), 1, true)
			f.expect(blobN("la"), 1, true)
			f.expectCandidates(later)
		}},
		{"repository delete", Options{}, func(f *fixture) {
			f.apply(pushM("a", "m", "v", []string{"shared", "own"}, nil, ""), pushM("ab", "m", "v", []string{"shared"}, nil, ""))
			f.apply(delRepo("a"))
			// The purge is online: the tag expires at once, and the
			// collector removes it; then its revision, layers and data go
			// as garbage does, after the grace.
			f.expect(tagN("a", "v"), 0, true)
			f.expect(manN("a", "m"), 1, true)
			due, err := f.p.DueTags(f.now, 10)
			if err != nil || len(due) != 1 || due[0].Tag != tagN("a", "v") || !due[0].Purge || due[0].Release {
				f.t.Fatalf("due tags after a purge: %+v %v", due, err)
			}
			f.apply(collectedTag(tagN("a", "v"), f.seq))
			f.expect(tagN("a", "v"), -1, false)
			f.expect(manN("a", "m"), 0, true)
			f.expectCandidates(later, manN("a", "m"))
			f.now = later
			if err := f.collect(manN("a", "m")); err != nil {
				f.t.Fatal(err)
			}
			f.expect(layN("a", "own"), 0, true)
			f.expect(blobN("shared"), 2, true)
			f.expect(manN("ab", "m"), 1, true)
		}},
		{"referrer lives while its subject does", Options{}, func(f *fixture) {
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
			f.apply(pushM("app", "sig", "", []string{"sl"}, nil, "m"))
			f.expect(manN("app", "sig"), 1, true)
			f.apply(delT("app", "v1"))
			f.expectCandidates(later, manN("app", "m"))
			f.now = later
			if err := f.collect(manN("app", "m")); err != nil {
				f.t.Fatal(err)
			}
			f.expect(manN("app", "sig"), 0, true)
			f.expectCandidates(later.Add(2*hour), manN("app", "sig"), layN("app", "l"))
		}},
		{"referrer pushed before its subject", Options{}, func(f *fixture) {
			f.apply(pushM("app", "sig", "", []string{"sl"}, nil, "m"))
			f.expect(manN("app", "sig"), 0, true)
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
			f.expect(manN("app", "sig"), 1, true)
			f.expectCandidates(later)
		}},
		{"untagged keep makes revisions roots", Options{Untagged: PolicyKeep}, func(f *fixture) {
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""), pushB("app", "orphan"))
			f.apply(delT("app", "v1"))
			f.expect(layN("app", "l"), 1, true)
			f.expectCandidates(later, layN("app", "orphan"))
		}},
		{"labels and legacy images", Options{}, func(f *fixture) {
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
			f.apply(events.Event{Kind: events.LabelAttached, Label: &events.Label{Repo: "app", Digest: dg("m"), ID: "lbl1"}})
			lbl := events.NodeRef{Kind: events.NodeLabel, Repo: "app", Name: "lbl1"}
			f.expect(lbl, 1, true)
			f.apply(pushM("app", "m", "v1", []string{"l"}, nil, "")) // a re-push keeps labels
			f.expect(lbl, 1, true)
			f.apply(events.Event{Kind: events.LabelDetached, Label: &events.Label{Repo: "app", Digest: dg("m"), ID: "lbl1"}})
			f.expect(lbl, 0, true)
			f.apply(events.Event{Kind: events.LegacyImageCreated, Legacy: &events.LegacyImage{Repo: "app", ID: "img1", Storage: dg("st1")}},
				events.Event{Kind: events.LegacyImageCreated, Legacy: &events.LegacyImage{Repo: "app", ID: "img2", Parent: "img1", Storage: dg("st2"), Derived: []digest.Digest{dg("der")}}})
			f.expect(events.NodeRef{Kind: events.NodeLegacy, Repo: "app", Name: "img1"}, 1, true)
			f.expect(blobN("der"), 1, true)
			f.expectCandidates(later, lbl, events.NodeRef{Kind: events.NodeLegacy, Repo: "app", Name: "img2"})
		}},
		{"an unverified manifest is kept until stated in full", Options{}, func(f *fixture) {
			ev := pushM("app", "ref", "", []string{"l"}, nil, "")
			ev.Manifest.Unverified = true
			f.apply(ev)
			f.expectCandidates(later)
			w, err := f.p.Why(manN("app", "ref"))
			if err != nil || w.Root != "unverified manifest (kept until reconciled)" {
				f.t.Fatalf("why: %+v %v", w, err)
			}
			f.apply(pushM("app", "ref", "", []string{"l"}, nil, ""))
			f.expectCandidates(later, manN("app", "ref"))
		}},
		{"a touch extends the lease", Options{}, func(f *fixture) {
			f.apply(pushB("app", "l"))
			f.advance(50 * time.Minute)
			f.apply(touch("app", "l"))
			f.expectCandidates(f.now.Add(30 * time.Minute))
			f.expectCandidates(f.now.Add(61*time.Minute), layN("app", "l"))
		}},
		{"collection that raced with a new tag is refused", Options{}, func(f *fixture) {
			f.apply(pushM("app", "m", "", []string{"l"}, nil, ""))
			f.advance(2 * hour)
			cur, _ := f.p.Cursor()
			in, err := f.p.BeginCollect("i1", manN("app", "m"), f.now, cur)
			if err != nil {
				f.t.Fatal(err)
			}
			f.apply(setT("app", "v1", "m"))
			f.apply(collectedEv(in))
			f.expect(manN("app", "m"), 1, true)
		}},
		{"observed absence loses to a later event", Options{}, func(f *fixture) {
			f.apply(pushB("app", "l"))
			asOf, _ := f.p.Cursor()
			f.apply(pushB("app", "l"))
			f.apply(events.Event{Kind: events.ObservedAbsent, Absent: &events.Observation{Node: layN("app", "l"), AsOf: asOf}})
			f.expect(layN("app", "l"), 0, true)
			f.advance(2 * hour) // and once its lease ran out
			asOf, _ = f.p.Cursor()
			f.apply(events.Event{Kind: events.ObservedAbsent, Absent: &events.Observation{Node: layN("app", "l"), AsOf: asOf}})
			f.expect(layN("app", "l"), -1, false)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.opts)
			tc.run(f)
			f.check()
		})
	}
}

// TestCollectedDropsItsIntent: applying a Collected event drops the intent
// it completes when the removal is committed (what recovery would do),
// and keeps it when the removal raced, for the collector's undo.
func TestCollectedDropsItsIntent(t *testing.T) {
	tests := []struct {
		name    string
		between func(f *fixture)             // applied after the intent, before Collected
		edit    func(e *events.CollectedRef) // of the Collected event
		kept    bool                         // the intent stays
	}{
		{"committed", nil, nil, false},
		{"raced with a new tag", func(f *fixture) { f.apply(setT("app", "v1", "m")) }, nil, true},
		{"already deleted", func(f *fixture) { f.apply(delD("app", "m")) }, nil, false},
		{"another instance's id", nil, func(e *events.CollectedRef) { e.Intent = "elsewhere" }, true},
		{"no id", nil, func(e *events.CollectedRef) { e.Intent = "" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			f.apply(pushM("app", "m", "", []string{"l"}, nil, ""))
			f.advance(2 * hour)
			cur, _ := f.p.Cursor()
			in, err := f.p.BeginCollect("i1", manN("app", "m"), f.now, cur)
			if err != nil {
				t.Fatal(err)
			}
			if tc.between != nil {
				tc.between(f)
			}
			ev := collectedEv(in)
			if tc.edit != nil {
				tc.edit(ev.Collected)
			}
			f.apply(ev)
			ins, err := f.p.Intents()
			if err != nil {
				t.Fatal(err)
			}
			if kept := len(ins) == 1; kept != tc.kept {
				t.Errorf("intents after the apply: %+v, want kept %v", ins, tc.kept)
			}
			st, err := f.p.Stats()
			if err != nil || st.Intents != len(ins) {
				t.Errorf("stats count %d intents, %d recorded (%v)", st.Intents, len(ins), err)
			}
			f.check()
		})
	}
}

func TestBatchAppliedTwice(t *testing.T) {
	f := newFixture(t, Options{})
	recs := f.records(pushB("app", "l"), pushM("app", "m", "v1", []string{"l"}, nil, ""), delT("app", "v1"))
	for i := 0; i < 2; i++ {
		res, err := f.p.Apply(recs)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && (res.Applied != 0 || res.Skipped != 3) {
			t.Fatalf("second apply: %+v", res)
		}
	}
	var a bytes.Buffer
	if err := f.p.Dump(&a); err != nil {
		t.Fatal(err)
	}
	f.expect(manN("app", "m"), 0, true)
	f.check()
}

func TestInvalidEventsAreReported(t *testing.T) {
	f := newFixture(t, Options{})
	bad := pushM("App", "m", "", nil, nil, "")
	recs := f.records(pushB("app", "l"), bad, pushB("app", "l2"))
	recs = append(recs, events.Record{Seq: f.seq + 1, Err: errors.New("undecodable")})
	res, err := f.p.Apply(recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 2 || len(res.Invalid) != 2 || res.Cursor != f.seq+1 {
		t.Fatalf("result %+v", res)
	}
	if !errors.Is(res.Invalid[0].Err, events.ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", res.Invalid[0].Err)
	}
	f.expect(layN("app", "l2"), 0, true)
}

func TestCheckFindsCorruption(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushM("app", "m", "v1", []string{"l"}, nil, ""))
	f.check()
	// Corrupt the count of the layer link on purpose.
	err := f.p.db.Update(func(tx *bolt.Tx) error {
		k := layerKey("app", dg("l"))
		n, err := decodeNode(tx.Bucket(bucketNodes).Get(k))
		if err != nil {
			return err
		}
		n.count = 5
		return tx.Bucket(bucketNodes).Put(k, n.encode())
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := f.p.Check()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Node != layN("app", "l") || ms[0].Stored != 5 || ms[0].Want != 1 {
		t.Fatalf("mismatches %v", ms)
	}
}

func TestPolicyChangeRequeues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := Open(path, Options{Untagged: PolicyKeep, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, p: p, now: t0}
	f.apply(pushM("app", "m", "", []string{"l"}, nil, ""))
	f.expectCandidates(t0.Add(48 * hour))
	p.Close()
	// The switch starts the revision's grace afresh (default grace 1 h).
	switched := t0.Add(24 * hour)
	p, err = Open(path, Options{Untagged: PolicyDelete, NoSync: true, Now: func() time.Time { return switched }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	f.p = p
	f.expectCandidates(switched.Add(30 * time.Minute))
	f.expectCandidates(switched.Add(hour), manN("app", "m"))
	f.check()
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "refs.db")
	p, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if _, err := Open(path, Options{NoSync: true}); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("want ErrNewerSchema, got %v", err)
	}
}
