package refcount

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// Check recounts every node from the declared edges of the alive nodes and
// returns every mismatch: counts, stored in-edges (inline in a record or
// in/ sub-keys, holders.go), queue entries, and the figures of Stats
// (meta/counts).
//
// It streams the file in key order instead of holding the graph: a node's
// incoming edges sit in or right after its record, so its stored count, its
// edges and its queue entry are checked as the scan passes it, each edge
// against the declaration of its source (one lookup). Its memory is that
// of one node plus what it finds wrong, whatever the size of the
// projection:
//
//  1. every declared edge of an alive node whose in-edge is missing (in
//     its target's record and in in/) is noted against its target (a map
//     as large as the damage);
//  2. every queue entry whose node's record does not name its time is
//     noted likewise;
//  3. every node, in key order, with its in-edges: each one is wanted
//     if its source declares it (or, for a subject edge, the node declares
//     its subject and both are present); the recount is the wanted entries
//     plus the missing ones.
func (p *Projection) Check() ([]Mismatch, error) {
	var out []Mismatch
	err := p.db.View(func(tx *bolt.Tx) error {
		c := &checker{p: p, nodes: tx.Bucket(bucketNodes), queue: tx.Bucket(bucketQueue),
			missing: map[string]uint64{}, staleQueued: map[string]bool{}}
		if stored, ok, err := readCounts(tx); err != nil {
			return err
		} else if ok {
			want, err := scanCounts(tx)
			if err != nil {
				return err
			}
			out = append(out, countMismatches(stored, want)...)
		}
		if err := c.missingEdges(tx); err != nil {
			return err
		}
		if err := c.staleQueue(); err != nil {
			return err
		}
		if err := c.scan(); err != nil {
			return err
		}
		// Targets of missing edges and queue entries without a record or
		// an in/ entry: in key order after the rest.
		var rest []string
		for k := range c.missing {
			rest = append(rest, k)
		}
		for k := range c.staleQueued {
			if _, ok := c.missing[k]; !ok {
				rest = append(rest, k)
			}
		}
		slices.Sort(rest)
		for _, k := range rest {
			if err := c.finish([]byte(k), nil, 0, 0, false); err != nil {
				return err
			}
		}
		out = append(out, c.out...)
		return nil
	})
	return out, err
}

// checker is the state of one Check.
type checker struct {
	p            *Projection
	nodes, queue *bolt.Bucket
	missing      map[string]uint64 // wanted edges absent from in/, by target
	staleQueued  map[string]bool   // queue entries that the node's record does not name
	out          []Mismatch
}

// look decodes the record of k; nil if there is none.
func (c *checker) look(k []byte) (*node, error) {
	v := c.nodes.Get(k)
	if v == nil {
		return nil, nil
	}
	return decodeRecord(v)
}

// wanted returns the edges an alive node's declarations ask for, each once:
// from → to.
func (c *checker) wanted(k []byte, n *node, fn func(from, to []byte) error) error {
	seen := make([][2][]byte, 0, len(n.decl))
	for _, e := range n.decl {
		from, to := k, e.to
		if e.kind == edgeSubject {
			if !n.present() {
				continue
			}
			s, err := c.look(e.to)
			if err != nil {
				return err
			}
			if s == nil || !s.present() {
				continue
			}
			from, to = e.to, k
		}
		if slices.ContainsFunc(seen, func(p [2][]byte) bool { return bytes.Equal(p[0], from) && bytes.Equal(p[1], to) }) {
			continue
		}
		seen = append(seen, [2][]byte{from, to})
		if err := fn(from, to); err != nil {
			return err
		}
	}
	return nil
}

// missingEdges is step 1.
func (c *checker) missingEdges(tx *bolt.Tx) error {
	return forEachRecord(tx, decodeRecord, func(k []byte, _ events.NodeRef, n *node) error {
		if !n.alive() {
			return nil
		}
		return c.wanted(k, n, func(from, to []byte) error {
			tn := n
			if !bytes.Equal(to, k) {
				var err error
				if tn, err = c.look(to); err != nil {
					return err
				}
			}
			// Inline in to's record (looked for one by one: a damaged
			// list may be out of order), or an in/ sub-key whatever to's
			// count says: the scan counts the sub-keys it finds.
			if tn != nil && amongHolders(tn.in, from) {
				return nil
			}
			if c.nodes.Get(subKey(to, subIn, from)) == nil {
				c.missing[string(to)]++
			}
			return nil
		})
	})
}

// staleQueue is step 2.
func (c *checker) staleQueue() error {
	return c.queue.ForEach(func(k, _ []byte) error {
		if len(k) < 9 {
			return fmt.Errorf("%w: queue key", ErrCorrupt)
		}
		at, nk := int64(binary.BigEndian.Uint64(k)), k[8:]
		n, err := c.look(nk)
		if err != nil {
			return err
		}
		if n == nil || n.queuedAt != at {
			c.staleQueued[string(nk)] = true
		}
		return nil
	})
}

// scan is step 3.
func (c *checker) scan() error {
	var (
		cur          []byte // the node whose in/ entries the scan is in
		curNode      *node  // its record; nil if it has none
		stored, xtra uint64
		disordered   bool // its record's holders out of key order, or too many
		started      bool
	)
	flush := func() error {
		if !started {
			return nil
		}
		started = false
		return c.finish(cur, curNode, stored, xtra, disordered)
	}
	err := c.nodes.ForEach(func(k, v []byte) error {
		if !isSub(k) {
			if err := flush(); err != nil {
				return err
			}
			n, err := decodeRecord(v)
			if err != nil {
				return err
			}
			cur, curNode, stored, xtra, started = append(cur[:0], k...), n, 0, 0, true
			disordered = len(n.in) > inlineHolders
			for i, e := range n.in {
				stored++
				if amongHolders(n.in[:i], e.to) {
					xtra++ // a repeat is no second holder
					continue
				}
				if i > 0 && bytes.Compare(n.in[i-1].to, e.to) > 0 {
					disordered = true // a binary search may miss it
				}
				ok, err := c.wants(e.to, cur, curNode)
				if err != nil {
					return err
				}
				if !ok {
					xtra++
				}
			}
			return nil
		}
		to, typ, from, err := splitSub(k)
		if err != nil {
			return err
		}
		if !started || !bytes.Equal(to, cur) {
			// Sub-keys of a node without a record.
			if err := flush(); err != nil {
				return err
			}
			cur, curNode, stored, xtra, disordered, started = append(cur[:0], to...), nil, 0, 0, false, true
		}
		if typ != subIn {
			return nil
		}
		stored++
		if curNode != nil && amongHolders(curNode.in, from) { // the record holds it already
			xtra++
			return nil
		}
		ok, err := c.wants(from, cur, curNode)
		if err != nil {
			return err
		}
		if !ok {
			xtra++
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// wants reports whether the edge from → to is declared: from is alive and
// declares an edge to to, or to (alive and present) declares from as its
// subject and from is present.
func (c *checker) wants(from, to []byte, toNode *node) (bool, error) {
	if from[0] == kHolder {
		// A repository partition's statement: its truth is that
		// partition's, which the version sub-key orders.
		return true, nil
	}
	fn, err := c.look(from)
	if err != nil || fn == nil {
		return false, err
	}
	if fn.alive() {
		for _, e := range fn.decl {
			if e.kind != edgeSubject && bytes.Equal(e.to, to) {
				return true, nil
			}
		}
	}
	if toNode != nil && toNode.present() && fn.present() {
		for _, e := range toNode.decl {
			if e.kind == edgeSubject && bytes.Equal(e.to, from) {
				return true, nil
			}
		}
	}
	return false, nil
}

// finish compares one node (n nil: no record) with its recount: stored
// in-edges, of which extra are not declared; disordered, its record's
// holders are out of key order or too many.
func (c *checker) finish(k []byte, n *node, stored, extra uint64, disordered bool) error {
	ref, err := parseNodeKey(k)
	if err != nil {
		return err
	}
	if n == nil {
		n = &node{}
	}
	missing := c.missing[string(k)]
	delete(c.missing, string(k))
	w := stored - extra + missing
	if n.count != w {
		c.out = append(c.out, Mismatch{Node: ref, What: "count", Stored: n.count, Want: w})
	}
	if missing+extra > 0 || disordered {
		c.out = append(c.out, Mismatch{Node: ref, What: "edges", Stored: stored, Want: w})
	}
	isQueued := c.staleQueued[string(k)]
	delete(c.staleQueued, string(k))
	if !isQueued && n.queuedAt != 0 {
		isQueued = c.queue.Get(queueKey(n.queuedAt, k)) != nil
	}
	shouldQueue := n.present() && w == 0 && !(&txn{p: c.p}).isRoot(k, n)
	if isQueued != shouldQueue {
		c.out = append(c.out, Mismatch{Node: ref, What: "queued", Stored: b2u(isQueued), Want: b2u(shouldQueue)})
	}
	return nil
}
