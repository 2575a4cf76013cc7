package refcount

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// holdersOf lists the holders Get reports for ref, and checks that they
// come in key order and that there are as many as its count.
func (f *fixture) holdersOf(ref events.NodeRef) []string {
	f.t.Helper()
	ni, ok := f.info(ref)
	if !ok {
		f.t.Fatalf("%s: no record", ref)
	}
	var out []string
	var keys [][]byte
	for _, h := range ni.Holders {
		out = append(out, h.Node.String())
		keys = append(keys, nodeKey(h.Node))
	}
	if !slices.IsSortedFunc(keys, func(a, b []byte) int { return slices.Compare(a, b) }) {
		f.t.Errorf("%s: holders out of key order: %v", ref, out)
	}
	if uint64(len(out)) != ni.Count {
		f.t.Errorf("%s: %d holders listed, count %d", ref, len(out), ni.Count)
	}
	return out
}

// subKeysOf counts the in/ sub-keys of ref.
func (f *fixture) subKeysOf(ref events.NodeRef) int {
	f.t.Helper()
	n := 0
	if err := f.p.db.View(func(tx *bolt.Tx) error {
		return forSub(tx.Bucket(bucketNodes).Cursor(), nodeKey(ref), subIn, func([]byte, []byte) error { n++; return nil })
	}); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// TestHoldersInRecordAndSubKeys holds one layer link by more manifests
// than its record keeps, then lets them go in an order that mixes the two
// places: the count, the holders listed and Check agree at every step.
func TestHoldersInRecordAndSubKeys(t *testing.T) {
	f := newFixture(t, Options{})
	const n = inlineHolders + 4
	f.apply(pushB("r", "base"))
	for i := range n {
		f.apply(pushM("r", fmt.Sprintf("m%d", i), "", []string{"base"}, nil, ""))
	}
	link := layN("r", "base")
	if got := f.holdersOf(link); len(got) != n {
		t.Fatalf("holders %v, want %d", got, n)
	}
	if got := f.subKeysOf(link); got != n-inlineHolders {
		t.Errorf("%d in/ sub-keys, want %d", got, n-inlineHolders)
	}
	f.check()
	// Revisions deleted from both ends and the middle: holders from the
	// record and from in/ alike.
	left := n
	for _, i := range []int{0, n - 1, 3, n - 2, 7, 1} {
		f.apply(delD("r", fmt.Sprintf("m%d", i)))
		left--
		got := f.holdersOf(link)
		if len(got) != left || slices.Contains(got, manN("r", fmt.Sprintf("m%d", i)).String()) {
			t.Fatalf("after deleting m%d: holders %v", i, got)
		}
		f.check()
	}
	// New holders fill the record's room first.
	subs := f.subKeysOf(link)
	f.apply(pushM("r", "late", "", []string{"base"}, nil, ""))
	if got := f.subKeysOf(link); got != subs {
		t.Errorf("a holder with room in the record made an in/ sub-key (%d → %d)", subs, got)
	}
	f.expect(link, left+1, true)
	f.check()
}

// TestSchema5FileReadsAsIs rewrites a projection to version 5's layout
// (every in-edge an in/ sub-key, none in a record), reopens it, and
// applies more events: a file written before inline holders needs no
// rewrite.
func TestSchema5FileReadsAsIs(t *testing.T) {
	f := newFixture(t, Options{})
	f.apply(pushB("r", "base"), pushB("r", "cfg"))
	for i := range inlineHolders + 2 {
		f.apply(pushM("r", fmt.Sprintf("m%d", i), "", []string{"cfg", "base"}, nil, ""))
	}
	link := layN("r", "base")
	before := f.holdersOf(link)
	f.check()

	path := f.p.db.Path()
	if err := f.p.db.Update(func(tx *bolt.Tx) error {
		nodes := tx.Bucket(bucketNodes)
		type rec struct {
			k []byte
			n *node
		}
		var recs []rec
		if err := nodes.ForEach(func(k, v []byte) error {
			if isSub(k) {
				return nil
			}
			n, err := decodeNode(v)
			if err != nil || len(n.in) == 0 {
				return err
			}
			recs = append(recs, rec{slices.Clone(k), n})
			return nil
		}); err != nil {
			return err
		}
		for _, r := range recs {
			for _, e := range r.n.in {
				if err := nodes.Put(subKey(r.k, subIn, e.to), []byte{e.kind}); err != nil {
					return err
				}
			}
			r.n.in = nil
			if err := nodes.Put(r.k, r.n.encode()); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(5))
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	f.p = p
	if got := f.subKeysOf(link); got != len(before) {
		t.Fatalf("%d in/ sub-keys after the rewrite, want %d", got, len(before))
	}
	if got := f.holdersOf(link); !slices.Equal(got, before) {
		t.Fatalf("holders after reopening\n%v\nwant\n%v", got, before)
	}
	f.check()
	f.apply(delD("r", "m0"), delD("r", "m5"))
	f.apply(pushM("r", "new", "", []string{"base"}, nil, ""))
	f.expect(link, len(before)-1, true)
	if got := f.subKeysOf(link); got != len(before)-2 {
		t.Errorf("%d in/ sub-keys, want %d: the new holder belongs in the record", got, len(before)-2)
	}
	f.check()
}

// TestDamagedHoldersReported damages a record's holders in the ways a
// binary search or a count can be fooled: Check reports each one (and
// whatever the map-based recount finds), with no false count, and never
// fails. Apply refuses a record whose holders outnumber its count (a
// count too low would let the collector take what is held) and goes on
// after the other damage.
func TestDamagedHoldersReported(t *testing.T) {
	img := func(f *fixture) {
		f.apply(pushB("r", "cfg"), pushB("r", "l1"), pushM("r", "m1", "v1", []string{"cfg", "l1"}, nil, ""))
		for i := range 3 {
			f.apply(pushM("r", fmt.Sprintf("m%d", i+2), "", []string{"cfg"}, nil, ""))
		}
	}
	l1, cfg := layerKey("r", dg("l1")), layerKey("r", dg("cfg"))
	m1 := manifestKey("r", dg("m1"))
	cases := []struct {
		name       string
		damage     func(tx *bolt.Tx) error
		what       string // the mismatch Check must report
		falseCount bool   // whether a count mismatch is right
		refused    bool   // whether Apply must refuse the record
	}{
		{"count below the inline holders", func(tx *bolt.Tx) error {
			return rewriteRecord(tx, l1, func(n *node) { n.count-- })
		}, "count", true, true},
		{"holder inline and in in/", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketNodes).Put(subKey(l1, subIn, m1), []byte{edgeLink})
		}, "edges", false, false},
		{"inline holders out of order", func(tx *bolt.Tx) error {
			return rewriteRecord(tx, cfg, func(n *node) { // [a b c d] → [a d b c]
				n.in = []edge{n.in[0], n.in[3], n.in[1], n.in[2]}
			})
		}, "edges", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			img(f)
			f.check()
			if err := f.p.db.Update(tc.damage); err != nil {
				t.Fatal(err)
			}
			ms := sameMismatches(t, f.p, true) // fails t if Check fails
			if !slices.ContainsFunc(ms, func(m Mismatch) bool { return m.What == tc.what }) {
				t.Errorf("Check found %v, want a %s mismatch", ms, tc.what)
			}
			if !tc.falseCount && slices.ContainsFunc(ms, func(m Mismatch) bool { return m.What == "count" }) {
				t.Errorf("Check found %v: a count mismatch for a count that is right", ms)
			}
			_, err := f.p.Apply(f.records(pushM("r", "again", "", []string{"cfg", "l1"}, nil, "")))
			if tc.refused && !errors.Is(err, ErrCorrupt) {
				t.Errorf("Apply on a record whose holders outnumber its count: %v, want ErrCorrupt", err)
			}
			if !tc.refused && err != nil {
				t.Errorf("Apply after the damage: %v", err)
			}
		})
	}
}
