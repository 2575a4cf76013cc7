package refcount

import (
	"encoding/binary"
	"fmt"
)

// Node record flags.
const (
	flagPresent  byte = 1 << iota // the object exists in storage
	flagActive                    // its declared edges are in place
	flagPinned                    // a root until stated in full (an unverified manifest)
	flagRetained                  // a tag removed from the registry, in the time machine: it holds its manifest
	flagPurged                    // a manifest its repository's purge found present: to go, never a root
)

// edge is one declared outgoing edge.
type edge struct {
	kind byte
	to   []byte
}

// node is the decoded record of nodes/.
type node struct {
	flags     byte
	count     uint64
	lease     int64 // unix ns; 0 = none
	zeroSince int64 // unix ns when it became unheld; 0 while held
	queuedAt  int64 // its queue key time; 0 when not queued
	lastSeq   uint64
	size      int64
	mediaType string
	// heard is the time of the newest event that stated the object present
	// in storage (a push, a mount, the reconciler's observation): the
	// collector's storage check refuses to unlink a link rewritten after it.
	heard int64
	// origin is the interned id of the event source that last stated the
	// node present (origins/), 0 when unknown: the collector routes the
	// node's deletion to that source's owner, if one is configured.
	origin uint64
	decl   []edge // declared outgoing edges (the subject edge is declared by the referrer and kept here with kind edgeSubject, pointing at the subject)
	// in is the incoming edges the record keeps itself (holders.go), in
	// key order, at most inlineHolders: edge.to is the holder's key. The
	// node's other in-edges are in/ sub-keys; count is their sum.
	in []edge
}

// clone returns a copy of n sharing its declared and inline edges (for
// the counts, which read its flags, queue time and size only; the inline
// edges are never changed in place).
func (n *node) clone() *node {
	c := *n
	return &c
}

func (n *node) present() bool { return n.flags&flagPresent != 0 }
func (n *node) active() bool  { return n.flags&flagActive != 0 }
func (n *node) alive() bool   { return n.present() || n.count > 0 || n.flags&flagRetained != 0 }

// racedSince reports whether a removal re-checked at cursor asOf raced
// with the node's use: an event named the node after the re-check, it is
// held again, or it is no longer present. The apply of a Collected event
// refuses such a removal, and the collector does not start one (Raced).
func (n *node) racedSince(asOf uint64) bool { return n.lastSeq > asOf || n.count > 0 || !n.present() }

func (n *node) setFlag(f byte, on bool) {
	if on {
		n.flags |= f
	} else {
		n.flags &^= f
	}
}

func (n *node) encode() []byte {
	b := make([]byte, 0, 48+len(n.mediaType)+(len(n.decl)+len(n.in))*80)
	b = append(b, n.flags)
	b = binary.AppendUvarint(b, n.count)
	b = binary.AppendVarint(b, n.lease)
	b = binary.AppendVarint(b, n.zeroSince)
	b = binary.AppendVarint(b, n.queuedAt)
	b = binary.AppendUvarint(b, n.lastSeq)
	b = binary.AppendVarint(b, n.size)
	b = binary.AppendUvarint(b, uint64(len(n.mediaType)))
	b = append(b, n.mediaType...)
	b = appendEdges(b, n.decl)
	// Trailing fields: records written before them have none, and a
	// record without them is the shorter for it.
	if n.heard != 0 || n.origin != 0 || len(n.in) > 0 {
		b = binary.AppendVarint(b, n.heard)
	}
	if n.origin != 0 || len(n.in) > 0 {
		b = binary.AppendUvarint(b, n.origin)
	}
	if len(n.in) > 0 {
		b = appendEdges(b, n.in)
	}
	return b
}

func appendEdges(b []byte, es []edge) []byte {
	return appendList(b, es, func(b []byte, e edge) []byte {
		b = append(b, e.kind)
		b = binary.AppendUvarint(b, uint64(len(e.to)))
		return append(b, e.to...)
	})
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) byte1() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	l := d.uvarint()
	if d.err != nil || uint64(len(d.b)) < l {
		d.fail()
		return nil
	}
	v := append([]byte(nil), d.b[:l]...)
	d.b = d.b[l:]
	return v
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: node record", ErrCorrupt)
	}
}

func (d *decoder) edges() []edge {
	return decodeList(d, func() edge {
		k := d.byte1()
		return edge{kind: k, to: d.bytes()}
	})
}

// decodeList reads a count and that many items (each at least a byte: a
// count beyond the bytes left is corrupt, never an allocation).
func decodeList[T any](d *decoder, item func() T) []T {
	cnt := d.uvarint()
	if d.err == nil && cnt > uint64(len(d.b)) {
		d.fail()
	}
	if cnt == 0 || d.err != nil {
		return nil
	}
	out := make([]T, 0, cnt)
	for i := uint64(0); i < cnt && d.err == nil; i++ {
		out = append(out, item())
	}
	return out
}

// appendList writes the count of items and each of them.
func appendList[T any](b []byte, items []T, item func(b []byte, v T) []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(items)))
	for _, v := range items {
		b = item(b, v)
	}
	return b
}

// decodeNode decodes a record for use. One that keeps more holders than
// its count, or than it has room for, is corrupt: nothing may act on a
// count its own record contradicts (a count too low would let the
// collector take what is held).
func decodeNode(b []byte) (*node, error) {
	n, err := decodeRecord(b)
	if err == nil && (uint64(len(n.in)) > n.count || len(n.in) > inlineHolders) {
		return nil, fmt.Errorf("%w: node record keeps %d holders for a count of %d", ErrCorrupt, len(n.in), n.count)
	}
	return n, err
}

// decodeRecord decodes a record as it stands, for Check, which recounts
// the holders and reports what the record says wrong.
func decodeRecord(b []byte) (*node, error) {
	d := &decoder{b: b}
	n := &node{}
	n.flags = d.byte1()
	n.count = d.uvarint()
	n.lease = d.varint()
	n.zeroSince = d.varint()
	n.queuedAt = d.varint()
	n.lastSeq = d.uvarint()
	n.size = d.varint()
	n.mediaType = string(d.bytes())
	n.decl = d.edges()
	if d.err == nil && len(d.b) > 0 {
		n.heard = d.varint()
	}
	if d.err == nil && len(d.b) > 0 {
		n.origin = d.uvarint()
	}
	if d.err == nil && len(d.b) > 0 {
		n.in = d.edges()
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail()
	}
	if d.err != nil {
		return nil, d.err
	}
	return n, nil
}
