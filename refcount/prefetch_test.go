package refcount

import (
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
	"github.com/refgc/refgc/internal/regtest"
)

// TestReadAheadAgrees applies batches with the reader on (for every
// batch) and off, and one event per batch: the files must be the same.
// The batches flush in the middle (a purge, a restatement): what was read
// ahead of that point is stale after it.
func TestReadAheadAgrees(t *testing.T) {
	img := func(repo, m, tag string) []events.Event {
		return []events.Event{pushB(repo, "cfg"), pushB(repo, "l-"+m), touch(repo, "l-"+m),
			pushM(repo, m, tag, []string{"cfg", "l-" + m}, nil, "")}
	}
	var evs []events.Event
	evs = append(evs, img("a", "m1", "v1")...)
	evs = append(evs, img("b", "m2", "v1")...)
	evs = append(evs, delRepo("a"), collectedTag(tagN("a", "v1"), 1<<62))
	evs = append(evs, img("a", "m1", "v1")...) // the same image, after the purge
	evs = append(evs, setT("b", "v2", "m2"), delT("b", "v1"), delD("b", "m2"), touch("a", "cfg"))
	evs = append(evs, img("a", "m3", "v1")...)
	cases := []struct {
		name     string
		min      int  // prefetchMin
		first    bool // prefetchFirst
		perBatch int
	}{
		{"one batch, all read ahead", 1, true, len(evs)},
		{"one batch, read ahead", 1, false, len(evs)},
		{"one batch, no read ahead", len(evs) + 1, false, len(evs)},
		{"batches of 3, all read ahead", 1, true, 3},
		{"one event per batch", len(evs), false, 1},
	}
	var want []byte
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			regtest.Override(t, &prefetchMin, tc.min)
			regtest.Override(t, &prefetchFirst, tc.first)
			f := newFixture(t, Options{})
			recs := f.records(evs...)
			for i := 0; i < len(recs); i += tc.perBatch {
				res, err := f.p.Apply(recs[i:min(i+tc.perBatch, len(recs))])
				if err != nil || len(res.Invalid) > 0 {
					t.Fatalf("apply: %v %v", err, res.Invalid)
				}
			}
			f.check()
			var got bytes.Buffer
			if err := f.p.Dump(&got); err != nil {
				t.Fatal(err)
			}
			if want == nil {
				want = got.Bytes()
			} else if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("the file differs from the first case's")
			}
		})
	}
}

// TestReadAheadStaleAfterFlush: a record the reader hands over after Apply
// read it itself, then wrote it in a flush in the middle of the batch (a
// purge), is stale, and Apply must not take it.
func TestReadAheadStaleAfterFlush(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushB("r", "x"))
	lk := layerKey("r", dg("x"))
	err := f.p.db.Update(func(tx *bolt.Tx) error {
		tr := f.p.newTxn(tx)
		tr.get(lk).size = 4242 // read by Apply itself: the reader is behind
		tr.markDirty(lk)
		pf, err := startPrefetch(f.p.db, f.records(touch("r", "x")), 0)
		if err != nil {
			return err
		}
		<-pf.done // it read the record as committed, and hands it over late
		tr.pf, tr.pre = pf, map[string]*entry{}
		if err := tr.flush(); err != nil { // as a purge does in the middle of a batch
			return err
		}
		if got := tr.get(lk).size; got != 4242 {
			t.Errorf("after the flush Apply read size %d, want 4242: it took what the reader read before", got)
		}
		return errors.New("rollback")
	})
	if err == nil || err.Error() != "rollback" {
		t.Fatal(err)
	}
}

// TestReadAheadDamagedRecord: a damaged record that the reader read ahead
// fails a batch only if the batch's events read it, as without the reader.
func TestReadAheadDamagedRecord(t *testing.T) {
	regtest.Override(t, &prefetchMin, 1)
	regtest.Override(t, &prefetchFirst, true)
	f := newFixture(t, Options{})
	// A layer link and a manifest of the same digest: a delete by digest
	// takes the manifest, and never reads the layer link.
	f.apply(pushB("r", "x"), pushB("r", "cfg"), pushM("r", "x", "v1", []string{"cfg"}, nil, ""))
	f.apply(pushM("r", "m", "v2", []string{"x"}, nil, ""))
	lk := layerKey("r", dg("x"))
	if err := f.p.db.Update(func(tx *bolt.Tx) error {
		return rewriteRecord(tx, lk, func(n *node) { n.count-- }) // its holder outnumbers its count
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Apply(f.records(delD("r", "x"))); err != nil {
		t.Fatalf("a batch that does not read the damaged record: %v", err)
	}
	if _, err := f.p.Apply(f.records(touch("r", "cfg"), pushB("r", "x"))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a batch that reads the damaged record: %v, want ErrCorrupt", err)
	}
}

// TestReadAheadInvalidEvent: the reader passes over an event that Apply
// has not validated and that does not validate, as Apply does, at the
// default threshold.
func TestReadAheadInvalidEvent(t *testing.T) {
	f := newFixture(t, Options{})
	evs := []events.Event{
		{Kind: events.BlobPushed, Blob: &events.Blob{Repo: "r", Digest: "not-a-digest", Size: 1}},
		{Kind: events.ManifestPushed},
	}
	for len(evs) < prefetchMin {
		evs = append(evs, pushB("r", "x"))
	}
	res, err := f.p.Apply(f.records(evs...))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Invalid) != 2 {
		t.Fatalf("invalid %v, want the two events without a valid body", res.Invalid)
	}
}

// TestKeyOfAnyDigest: a key is made of a digest of any form, valid or not.
func TestKeyOfAnyDigest(t *testing.T) {
	for _, d := range []digest.Digest{"", "not-a-digest", "sha256:short", dg("x")} {
		if k := layerKey("r", d); len(k) == 0 {
			t.Errorf("no key for %q", d)
		}
	}
}
