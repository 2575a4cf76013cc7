package refcount

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// checkMaps is Check as it was before it streamed (less the figures of
// meta/counts): every node record and both edge sets held in maps. The
// tests keep it as an oracle for Check.
func (p *Projection) checkMaps() ([]Mismatch, error) {
	var out []Mismatch
	err := p.db.View(func(tx *bolt.Tx) error {
		nodes := map[string]*node{}
		stored := map[string]map[string]bool{}
		var held [][2]string
		if err := tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			if isSub(k) {
				to, typ, from, err := splitSub(k)
				if err != nil || typ != subIn {
					return err
				}
				m := stored[string(to)]
				if m == nil {
					m = map[string]bool{}
					stored[string(to)] = m
				}
				m[string(from)] = true
				if from[0] == kHolder { // a repository partition's statement: wanted as stated
					held = append(held, [2]string{string(from), string(to)})
				}
				return nil
			}
			n, err := decodeRecord(v)
			if err != nil {
				return err
			}
			nodes[string(k)] = n
			for _, e := range n.in { // the in-edges the record keeps
				m := stored[string(k)]
				if m == nil {
					m = map[string]bool{}
					stored[string(k)] = m
				}
				m[string(e.to)] = true
				if e.to[0] == kHolder {
					held = append(held, [2]string{string(e.to), string(k)})
				}
			}
			return nil
		}); err != nil {
			return err
		}
		present := func(k []byte) bool { n := nodes[string(k)]; return n != nil && n.present() }
		want := map[string]map[string]bool{} // to → from
		add := func(from, to []byte) {
			m := want[string(to)]
			if m == nil {
				m = map[string]bool{}
				want[string(to)] = m
			}
			m[string(from)] = true
		}
		for _, h := range held {
			add([]byte(h[0]), []byte(h[1]))
		}
		for ks, n := range nodes {
			if !n.alive() {
				continue
			}
			for _, e := range n.decl {
				if e.kind == edgeSubject {
					if present(e.to) && n.present() {
						add(e.to, []byte(ks))
					}
				} else {
					add([]byte(ks), e.to)
				}
			}
		}
		queued := map[string]int64{}
		if err := tx.Bucket(bucketQueue).ForEach(func(k, _ []byte) error {
			if len(k) < 9 {
				return fmt.Errorf("%w: queue key", ErrCorrupt)
			}
			queued[string(k[8:])] = int64(binary.BigEndian.Uint64(k))
			return nil
		}); err != nil {
			return err
		}
		keys := make([]string, 0, len(nodes)+len(want))
		for k := range nodes {
			keys = append(keys, k)
		}
		for k := range want {
			if nodes[k] == nil {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		t := &txn{p: p}
		for _, ks := range keys {
			k := []byte(ks)
			ref, err := parseNodeKey(k)
			if err != nil {
				return err
			}
			n := nodes[ks]
			if n == nil {
				n = &node{}
			}
			w := uint64(len(want[ks]))
			if n.count != w {
				out = append(out, Mismatch{Node: ref, What: "count", Stored: n.count, Want: w})
			}
			var missing, extra uint64
			for f := range want[ks] {
				if !stored[ks][f] {
					missing++
				}
			}
			for f := range stored[ks] {
				if !want[ks][f] {
					extra++
				}
			}
			if missing+extra > 0 {
				out = append(out, Mismatch{Node: ref, What: "edges", Stored: uint64(len(stored[ks])), Want: w})
			}
			shouldQueue := n.present() && w == 0 && !t.isRoot(k, n)
			if _, isQueued := queued[ks]; isQueued != shouldQueue {
				out = append(out, Mismatch{Node: ref, What: "queued", Stored: b2u(isQueued), Want: b2u(shouldQueue)})
			}
		}
		return nil
	})
	return out, err
}

// sameMismatches fails t unless Check finds every mismatch its map-based
// oracle finds and, unless more is true, nothing else. (Check also sees
// in/ entries and queue entries of nodes without a record, which the
// oracle passes over.)
func sameMismatches(t testing.TB, p *Projection, more bool) []Mismatch {
	t.Helper()
	got, err := p.Check()
	if err != nil {
		t.Fatal(err)
	}
	want, err := p.checkMaps()
	if err != nil {
		t.Fatal(err)
	}
	str := func(ms []Mismatch) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.What+" "+m.String())
		}
		slices.Sort(out)
		return out
	}
	g, w := str(got), str(want)
	ok := slices.Equal(g, w)
	if more {
		ok = !slices.ContainsFunc(w, func(m string) bool { return !slices.Contains(g, m) })
	}
	if !ok {
		t.Errorf("Check found\n%s\nthe map-based recount\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	return got
}

// rewriteRecord changes the record of k with fn.
func rewriteRecord(tx *bolt.Tx, k []byte, fn func(n *node)) error {
	n, err := decodeNode(tx.Bucket(bucketNodes).Get(k))
	if err != nil {
		return err
	}
	fn(n)
	return tx.Bucket(bucketNodes).Put(k, n.encode())
}

// dropInline removes from's in-edge from the record of to, keeping its count.
func dropInline(tx *bolt.Tx, to, from []byte) error {
	var found bool
	err := rewriteRecord(tx, to, func(n *node) {
		var i int
		if i, found = n.inlineAt(from); found {
			n.in = slices.Delete(n.in, i, i+1)
		}
	})
	if err == nil && !found {
		err = fmt.Errorf("%q holds %q in no record", from, to)
	}
	return err
}

// TestCheckFindsDamage damages a projection in every way Check looks for,
// one at a time, and compares Check with the map-based recount.
func TestCheckFindsDamage(t *testing.T) {
	img := func(f *fixture) {
		f.apply(
			pushB("r", "cfg"), pushB("r", "l1"),
			pushM("r", "m1", "v1", []string{"cfg", "l1"}, nil, ""),
			pushM("r", "m2", "", []string{"cfg"}, nil, "m1"), // a referrer of m1
		)
		for i := range inlineHolders + 2 { // cfg's link: more holders than its record keeps
			f.apply(pushM("r", fmt.Sprintf("more%d", i), "", []string{"cfg"}, nil, ""))
		}
	}
	mk := func(repo, name string) []byte {
		return nodeKey(events.NodeRef{Kind: events.NodeManifest, Repo: repo, Digest: dg(name)})
	}
	tag := key2(kTag, "r", "v1")
	cases := []struct {
		name   string
		damage func(tx *bolt.Tx) error
	}{
		{"inline in-edge removed", func(tx *bolt.Tx) error {
			return dropInline(tx, layerKey("r", dg("l1")), mk("r", "m1"))
		}},
		{"inline subject edge removed", func(tx *bolt.Tx) error {
			return dropInline(tx, mk("r", "m2"), mk("r", "m1"))
		}},
		{"in/ sub-key removed", func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketNodes).Cursor()
			prefix := subPrefix(layerKey("r", dg("cfg")), subIn)
			if k, _ := c.Seek(prefix); !bytes.HasPrefix(k, prefix) {
				return fmt.Errorf("no in/ sub-key")
			}
			return c.Delete()
		}},
		{"in-edge added", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketNodes).Put(subKey(mk("r", "m1"), subIn, mk("r", "m2")), []byte{edgeChild})
		}},
		{"in-edge to a node without record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketNodes).Put(subKey(mk("r", "gone"), subIn, tag), []byte{edgeTag})
		}},
		{"count changed", func(tx *bolt.Tx) error {
			n, err := decodeNode(tx.Bucket(bucketNodes).Get(mk("r", "m1")))
			if err != nil {
				return err
			}
			n.count += 2
			return tx.Bucket(bucketNodes).Put(mk("r", "m1"), n.encode())
		}},
		{"record removed", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketNodes).Delete(mk("r", "m1"))
		}},
		{"queue entry removed", func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketQueue).Cursor()
			k, _ := c.First()
			if k == nil {
				return fmt.Errorf("empty queue")
			}
			return c.Delete()
		}},
		{"stale queue entry", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketQueue).Put(queueKey(42, layerKey("r", dg("cfg"))), nil)
		}},
		{"counts changed", func(tx *bolt.Tx) error {
			return addCounts(tx, counts{trash: 1})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			img(f)
			f.apply(delT("r", "v1")) // something in the queue
			f.check()
			if err := f.p.db.Update(tc.damage); err != nil {
				t.Fatal(err)
			}
			if ms := sameMismatches(t, f.p, true); len(ms) == 0 {
				t.Error("Check found nothing")
			}
		})
	}
	t.Run("queue entry without record", func(t *testing.T) {
		f := newFixture(t, Options{})
		img(f)
		if err := f.p.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketQueue).Put(queueKey(42, mk("r", "nothing")), nil)
		}); err != nil {
			t.Fatal(err)
		}
		ms, err := f.p.Check()
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 1 || ms[0].What != "queued" {
			t.Errorf("got %v, want the stale queue entry", ms)
		}
	})
}
