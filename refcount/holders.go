package refcount

// A node's holders (its incoming edges) are kept in two places: up to
// inlineHolders of them in the node's own record, the rest as in/ sub-keys
// (<node key> 0x01 'i' <holder key>). The count is their sum.
//
// Why in the record: almost every node has one holder (a blob its layer
// link, a layer link its manifest, a manifest its tag), and the node's
// record is rewritten whenever a holder comes or goes anyway, since its
// count changes. A sub-key per edge made a push write twice the keys, each
// about a hundred bytes (two node keys), so the leaves filled and split
// twice as fast: replaying the same batches into bare bbolt, the in/
// sub-keys were half of the time and 40 % of the pages written
// (docs/bench/limits.md). Kept in the record, an edge costs its bytes in a
// page that is written anyway, and adding one to a held node needs no
// lookup.
//
// Rejected: every holder in the record. A base layer pulled into ten
// thousand repositories would have a record of a megabyte, rewritten (and
// decoded at every lookup) each time one of them pushes; the sub-keys stay
// for the long tail.
//
// Where a holder goes is decided when it comes: into the record while it
// has room, else a sub-key. Nothing moves afterwards, so the split depends
// on the order the edges came in; Apply is deterministic, so a replay of
// the log gives the same split. Listings merge the two in key order
// (forHolders), so what a reader sees does not depend on the split.

import (
	"bytes"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// inlineHolders is how many holders a node record keeps itself.
const inlineHolders = 8

// inlineAt returns where from is among n's inline holders: its index and
// whether it is there (else the index it would be inserted at).
func (n *node) inlineAt(from []byte) (int, bool) {
	return slices.BinarySearchFunc(n.in, from, func(e edge, k []byte) int { return bytes.Compare(e.to, k) })
}

// amongHolders reports whether from is among holders (inline ones of a
// record), looked for one by one: for Check, which must find it in a
// damaged list too.
func amongHolders(holders []edge, from []byte) bool {
	return slices.ContainsFunc(holders, func(e edge) bool { return bytes.Equal(e.to, from) })
}

// subHolders reports whether some of n's holders are in/ sub-keys.
func (n *node) subHolders() bool { return n.count > uint64(len(n.in)) }

// forHolders calls fn for every holder of the node k, whose record is n,
// in key order: the inline ones merged with the in/ sub-keys read through
// c. from is only valid during the call.
func forHolders(c *bolt.Cursor, k []byte, n *node, fn func(from []byte, kind byte) error) error {
	in := n.in
	emit := func(upTo []byte) error { // the inline holders before upTo (all, if nil)
		for len(in) > 0 && (upTo == nil || bytes.Compare(in[0].to, upTo) < 0) {
			if err := fn(in[0].to, in[0].kind); err != nil {
				return err
			}
			in = in[1:]
		}
		return nil
	}
	if n.subHolders() {
		err := forSub(c, k, subIn, func(from, v []byte) error {
			if err := emit(from); err != nil {
				return err
			}
			var kind byte
			if len(v) == 1 {
				kind = v[0]
			}
			return fn(from, kind)
		})
		if err != nil {
			return err
		}
	}
	return emit(nil)
}
