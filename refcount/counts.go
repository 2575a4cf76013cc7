package refcount

import (
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/refgc/refgc/events"
)

// # Counts
//
// The figures Stats reports (node records, present nodes, queued nodes and
// their bytes, by kind; intents; trash entries) live in meta/counts and are
// kept in step by the transactions that change them: flush adds the
// difference between each dirty node's record as it was read and as it is
// written, and the few writers of intents/ and trash/ add theirs. A stats
// refresh therefore reads one key whatever the size of the projection.
// Check recounts them from a scan and reports any difference; a file
// without meta/counts (written before they existed) is counted once by the
// first writable Open.

// kindCount is one node kind's share of the counts.
type kindCount struct {
	nodes, present, queued, queuedSize int64
}

// counts are the projection-wide figures of meta/counts, by node key kind
// byte.
type counts struct {
	kinds          map[byte]*kindCount
	intents, trash int64
}

func newCounts() counts { return counts{kinds: map[byte]*kindCount{}} }

func (c *counts) kind(b byte) *kindCount {
	if c.kinds == nil {
		c.kinds = map[byte]*kindCount{}
	}
	kc := c.kinds[b]
	if kc == nil {
		kc = &kindCount{}
		c.kinds[b] = kc
	}
	return kc
}

// node adds (sign 1) or removes (sign -1) the contribution of a node
// record with key k; n nil means no record.
func (c *counts) node(k []byte, n *node, sign int64) {
	if n == nil {
		return
	}
	kc := c.kind(k[0])
	kc.nodes += sign
	if n.present() {
		kc.present += sign
	}
	if n.queuedAt != 0 {
		kc.queued += sign
		kc.queuedSize += sign * n.size
	}
}

func (c *counts) add(d counts) {
	for b, kd := range d.kinds {
		kc := c.kind(b)
		kc.nodes += kd.nodes
		kc.present += kd.present
		kc.queued += kd.queued
		kc.queuedSize += kd.queuedSize
	}
	c.intents += d.intents
	c.trash += d.trash
}

func (c *counts) zero() bool {
	for _, kc := range c.kinds {
		if *kc != (kindCount{}) {
			return false
		}
	}
	return c.intents == 0 && c.trash == 0
}

// encode writes intents, trash, then per kind in byte order: the kind byte
// and its four figures, all varints.
func (c *counts) encode() []byte {
	b := binary.AppendVarint(nil, c.intents)
	b = binary.AppendVarint(b, c.trash)
	ks := make([]byte, 0, len(c.kinds))
	for k := range c.kinds {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	for _, k := range ks {
		kc := c.kinds[k]
		b = append(b, k)
		for _, v := range []int64{kc.nodes, kc.present, kc.queued, kc.queuedSize} {
			b = binary.AppendVarint(b, v)
		}
	}
	return b
}

func decodeCounts(b []byte) (counts, error) {
	c := newCounts()
	d := &decoder{b: b}
	c.intents = d.varint()
	c.trash = d.varint()
	for d.err == nil && len(d.b) > 0 {
		kc := c.kind(d.byte1())
		kc.nodes, kc.present, kc.queued, kc.queuedSize = d.varint(), d.varint(), d.varint(), d.varint()
	}
	if d.err != nil {
		return counts{}, fmt.Errorf("%w: meta/counts", ErrCorrupt)
	}
	return c, nil
}

// addCounts adds d to meta/counts in tx.
func addCounts(tx *bolt.Tx, d counts) error {
	if d.zero() {
		return nil
	}
	meta := tx.Bucket(bucketMeta)
	c, err := decodeCounts(meta.Get(keyCounts))
	if err != nil {
		return err
	}
	c.add(d)
	return meta.Put(keyCounts, c.encode())
}

// readCounts returns meta/counts; ok is false for a file without them.
func readCounts(tx *bolt.Tx) (c counts, ok bool, err error) {
	raw := tx.Bucket(bucketMeta).Get(keyCounts)
	if raw == nil {
		return counts{}, false, nil
	}
	c, err = decodeCounts(raw)
	return c, err == nil, err
}

// scanCounts counts by reading the whole file: the backfill of a file
// without meta/counts, and Check's reference.
func scanCounts(tx *bolt.Tx) (counts, error) {
	c := newCounts()
	c.intents = int64(tx.Bucket(bucketIntents).Stats().KeyN)
	c.trash = int64(tx.Bucket(bucketTrash).Stats().KeyN)
	// The figures read flags, queue times and sizes only: a record whose
	// holders contradict its count still counts (Check reports it).
	err := forEachRecord(tx, decodeRecord, func(k []byte, _ events.NodeRef, n *node) error {
		c.node(k, n, 1)
		return nil
	})
	return c, err
}

// backfillCounts writes meta/counts from a scan if the file has none.
func backfillCounts(tx *bolt.Tx) error {
	if tx.Bucket(bucketMeta).Get(keyCounts) != nil {
		return nil
	}
	c, err := scanCounts(tx)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Put(keyCounts, c.encode())
}

// countMismatches compares the stored counts with a scan's, for Check.
func countMismatches(stored, want counts) []Mismatch {
	var out []Mismatch
	cmp := func(what string, kind events.NodeKind, s, w int64) {
		if s != w {
			out = append(out, Mismatch{Node: events.NodeRef{Kind: kind}, What: "stats " + what, Stored: uint64(s), Want: uint64(w)})
		}
	}
	cmp("intents", "", stored.intents, want.intents)
	cmp("trash", "", stored.trash, want.trash)
	ks := map[byte]bool{}
	for k := range stored.kinds {
		ks[k] = true
	}
	for k := range want.kinds {
		ks[k] = true
	}
	for k := range ks {
		kind := kindOfKey(k)
		s, w := stored.kind(k), want.kind(k)
		cmp("nodes", kind, s.nodes, w.nodes)
		cmp("present", kind, s.present, w.present)
		cmp("queued", kind, s.queued, w.queued)
		cmp("queued bytes", kind, s.queuedSize, w.queuedSize)
	}
	return out
}

// kindOfKey names the node kind of a key's kind byte.
func kindOfKey(b byte) events.NodeKind {
	switch b {
	case kTag:
		return events.NodeTag
	case kManifest:
		return events.NodeManifest
	case kLayer:
		return events.NodeLayer
	case kBlob:
		return events.NodeBlob
	case kLabel:
		return events.NodeLabel
	case kLegacy:
		return events.NodeLegacy
	}
	return events.NodeKind(fmt.Sprintf("kind-%x", b))
}
